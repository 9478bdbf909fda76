"""Inputs as the user gives them (EXIF orientation, array layouts and ranges) and the files deepfit writes."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deepfit.engine.checkpoint import save_checkpoint
from deepfit.modalities.image import store

H, W = 16, 24  # stored (unrotated) size; bigger than JPEG's 8x8 blocks so colours survive


def _pattern() -> np.ndarray:
    """(H, W, 3): red top-left quarter, blue everywhere else: any turn or flip moves the red block."""
    a = np.zeros((H, W, 3), np.uint8)
    a[...] = (0, 0, 255)
    a[: H // 2, : W // 2] = (255, 0, 0)
    return a


def _rotated_jpeg(path: Path) -> np.ndarray:
    """A JPEG stored sideways with EXIF Orientation=6; returns the upright (viewer's) pixels."""
    img = Image.fromarray(_pattern())
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, quality=100, exif=exif.tobytes())
    return np.rot90(_pattern(), k=-1)  # orientation 6: turn 90 degrees clockwise to view


def _red_mask(chw: torch.Tensor) -> np.ndarray:
    a = chw.numpy().astype(int)
    return (a[0] > 128) & (a[2] < 128)


def test_exif_orientation_is_applied_in_every_decode_path(tmp_path):
    path = tmp_path / "phone.jpg"
    upright = _rotated_jpeg(path)
    want = (upright[..., 0] > 128) & (upright[..., 2] < 128)  # (W, H): red in the top-right after turning
    assert want.shape == (W, H)

    whole = store.decode_rgb(str(path))
    assert tuple(whole.shape) == (3, W, H)
    assert (_red_mask(whole) == want).mean() > 0.95
    assert torch.equal(store.image_tensor(path), whole)
    assert torch.equal(store.image_tensor(Image.open(path)), whole)

    # the square store (training, evaluation, prediction): short side H -> resize; compare with the same resize
    size = 16
    ref = store.pil_to_storage(Image.fromarray(np.ascontiguousarray(upright)), size)
    for decoded in (
        store.decode_file(path, size),
        store.to_storage(path, size),
        store.to_storage(Image.open(path), size),
        store.ImageStore.load([path], [0], size, cache="memory", workers=0)[0].images[0],
    ):
        assert tuple(decoded.shape) == (3, size, size)
        assert (_red_mask(decoded) == _red_mask(ref)).mean() > 0.95
        assert not (_red_mask(decoded) == _red_mask(store.pil_to_storage(Image.fromarray(_pattern()), size))).all()


def test_channels_first_arrays_are_accepted():
    hwc = _pattern()
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    assert torch.equal(store.image_tensor(chw), store.image_tensor(hwc))
    assert torch.equal(store.to_storage(chw, 16), store.to_storage(hwc, 16))
    grey = store.image_tensor(hwc[None, :, :, 0])  # (1, H, W)
    assert tuple(grey.shape) == (3, H, W)


def test_float_arrays_in_0_255_are_scaled_not_clipped(monkeypatch, caplog):
    monkeypatch.setattr(store, "_warned_255", False)
    hwc = _pattern()
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        as_255 = store.image_tensor(hwc.astype(np.float32))
        store.image_tensor(hwc.astype(np.float32))
    assert torch.equal(as_255, store.image_tensor(hwc))  # not clipped to white
    assert sum("0-255" in r.getMessage() for r in caplog.records) == 1  # said once
    assert torch.equal(store.image_tensor(hwc.astype(np.float32) / 255), as_255)  # [0, 1] floats as before
    assert torch.equal(store.to_storage(hwc.astype(np.float64), 16), store.to_storage(hwc, 16))


def test_checkpoint_and_state_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "best.safetensors", nn.Linear(2, 2), {"epoch": 1})
        from deepfit.fileio import atomic_write

        atomic_write(tmp_path / "resume.pt", lambda tmp: torch.save({"a": 1}, tmp))
    finally:
        os.umask(old)
    for name in ("best.safetensors", "best.json", "resume.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_writer_that_recreates_its_file_still_gets_umask_mode(tmp_path):
    from deepfit.fileio import atomic_write

    def recreate(tmp: Path) -> None:  # like safetensors: remove the temp file and write a new owner-only one
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.bin", recreate)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644


def test_predict_proba_expands_folders_and_globs_as_predict_does(trained_run):
    import deepfit

    model = deepfit.load(trained_run.run_dir)
    folder = trained_run.data / "ring"
    files = sorted(folder.iterdir())
    by_folder = model.predict_proba(str(folder))
    by_glob = model.predict_proba(str(folder / "*"))
    assert by_folder.shape == (len(files), len(model.classes)) == by_glob.shape
    assert np.allclose(by_folder.sum(axis=1), 1, atol=1e-4)
    assert len(model.predict(str(folder))) == len(files)


def test_channels_first_array_through_a_trained_model(trained_run):
    import deepfit

    model = deepfit.load(trained_run.run_dir)
    hwc = np.asarray(Image.open(sorted((trained_run.data / "ring").iterdir())[0]).convert("RGB"))
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    assert model.predict(chw).label == model.predict(hwc).label
    assert np.allclose(model.predict_proba([chw]), model.predict_proba([hwc]))


def test_pretrained_offline_fails_at_once_with_the_one_line_advice(monkeypatch, tmp_path):
    import time

    from torchvision.models._api import WeightsEnum

    from deepfit.errors import WeightsError
    from deepfit.models import weights
    from deepfit.models.factory import create_model

    def never(*args: object, **kwargs: object) -> dict:
        raise AssertionError("offline: no download may be tried")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", never)
    monkeypatch.setattr(weights, "network_reachable", lambda *a, **k: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="--weights FILE") as info:
        create_model("tv/resnet18", 2, pretrained=True)
    assert time.perf_counter() - start < 5  # no minute of retries (generous: the machine is shared)
    assert "\n" not in str(info.value)


def test_offline_variables_need_no_network_probe(monkeypatch):
    import socket

    from deepfit.models import weights

    def no_socket(*args: object, **kwargs: object):
        raise AssertionError("no connection attempt when offline is declared")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.network_reachable() is False


def test_csv_columns_found_by_guessing_are_named(tmp_path, caplog):
    from deepfit.data.sources import discover

    for i in range(4):
        Image.fromarray(_pattern()).save(tmp_path / f"img{i}.png")
    rows = [f"img{i}.png,{'cat' if i % 2 else 'dog'},note {i}" for i in range(4)]
    (tmp_path / "data.csv").write_text("path,species,notes\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.INFO, logger="deepfit"):
        discover(tmp_path / "data.csv")
    said = [r.getMessage() for r in caplog.records if "taking column" in r.getMessage()]
    assert len(said) == 1 and "'species'" in said[0] and "labels" in said[0]  # 'path' is not a guess


def test_the_same_image_under_two_labels_is_named_even_within_one_split(tmp_path, caplog):
    from deepfit.data.sources import LabeledFile
    from deepfit.tasks.classify.data import report_duplicates

    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.fromarray(_pattern()).save(tmp_path / "cat" / "a.png")
    Image.fromarray(_pattern()).save(tmp_path / "dog" / "b.png")  # the same bytes
    Image.fromarray(_pattern()[::-1].copy()).save(tmp_path / "dog" / "c.png")
    files = [LabeledFile(tmp_path / "cat" / "a.png", "cat"), LabeledFile(tmp_path / "dog" / "b.png", "dog"),
             LabeledFile(tmp_path / "dog" / "c.png", "dog")]
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        assert report_duplicates({"train": files}, tmp_path) == 0  # no cross-split leak: one split
    said = [r.getMessage() for r in caplog.records if "labelled" in r.getMessage()]
    assert len(said) == 1
    assert all(s in said[0] for s in ("'cat'", "'dog'", "a.png", "b.png"))


def test_tiny_images_are_named(tmp_path, caplog):
    from deepfit.tasks.classify.data import warn_tiny_images

    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.fromarray(_pattern()).save(tmp_path / "fine.png")
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        tiny = warn_tiny_images([tmp_path / "dot.png", tmp_path / "fine.png"])
    assert tiny == [tmp_path / "dot.png"]
    said = [r.getMessage() for r in caplog.records if "pixels" in r.getMessage()]
    assert len(said) == 1 and "dot.png" in said[0] and "fine.png" not in said[0]
