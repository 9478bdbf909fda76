"""Mask layouts shared by semantic and instance masks (issue 13, items 21, 22, 24, 25): masks named after their
image with a suffix in a folder of another name (masks=, mask_name=), image and mask folders side by side per split
(train/ + trainannot/), the one class of instance masks named by --classes, and which task `deepfit data check`
reads image and mask folders for (and what it says when no layout matches)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfit.cli import main
from deepfit.data.formats.instance_masks import object_id_like
from deepfit.data.formats.mask_folders import holds_semantic_masks
from deepfit.errors import ConfigError, DataError
from deepfit.tasks.detect.data import read_detection
from deepfit.tasks.segment.data import read_segmentation


def _image(path: Path, width: int = 12, height: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (30, 60, 90)).save(path)
    return path


def _objects(n: int, width: int = 12, height: int = 8) -> np.ndarray:
    """A mask of `n` objects, values 1..n, each a 2-pixel-wide stripe."""
    values = np.zeros((height, width), dtype=np.uint8)
    for i in range(n):
        values[1:5, 2 * i:2 * i + 2] = i + 1
    return values


def _mask(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)
    return path


def _check(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 0) -> str:
    assert main(["data", "check", *argv]) == code
    captured = capsys.readouterr()
    return captured.out + captured.err


# --- item 21: masks named with a suffix, in a folder of another name --------------------------------------------


def _suffixed(root: Path) -> Path:
    """photos/A.png + annotations/A_mask.png (2 objects), B (3 objects)."""
    for name, n in (("A", 2), ("B", 3)):
        _image(root / "photos" / f"{name}.png")
        _mask(root / "annotations" / f"{name}_mask.png", _objects(n))
    return root


def test_instance_masks_named_with_a_suffix_in_a_folder_given_apart(tmp_path: Path) -> None:
    root = _suffixed(tmp_path / "d")
    ds = read_detection(root / "photos", masks=root / "annotations", mask_name="{name}_mask")
    assert ds.format == "masks" and ds.classes == ["object"] and ds.root == root.resolve()
    assert [(s.path.name, len(s)) for s in ds.samples] == [("A.png", 2), ("B.png", 3)]
    np.testing.assert_array_equal(ds.samples[0].boxes, [[0, 1, 2, 5], [2, 1, 4, 5]])
    np.testing.assert_array_equal(ds.samples[1].mask(2), _objects(3) == 3)
    assert "photos/ + annotations/" in ds.read_as and "masks named {name}_mask" in ds.read_as
    # the semantic reader pairs them with the same code
    seg = read_segmentation(root / "photos", masks=root / "annotations", mask_name="{name}_mask.png", workers=1)
    assert [s.mask.name for s in seg.samples] == ["A_mask.png", "B_mask.png"] and seg.classes == ["0", "1", "2", "3"]


def test_a_mask_name_pattern_lets_images_and_masks_share_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "d" / "all"
    _image(folder / "A.png")
    _mask(folder / "A_mask.png", _objects(2))
    ds = read_detection(folder, masks=folder, mask_name="{name}_mask")
    assert [(s.path.name, len(s)) for s in ds.samples] == [("A.png", 2)]  # A_mask.png is a mask, not an image


def test_without_the_pattern_the_error_suggests_it_and_a_bad_pattern_is_refused(tmp_path: Path) -> None:
    root = _suffixed(tmp_path / "d")
    with pytest.raises(DataError, match=r"mask_name='\{name\}_mask' \(--mask-name\)"):
        read_detection(root / "photos", masks=root / "annotations")
    with pytest.raises(DataError, match=r"mask_name='\{name\}_mask'"):
        read_segmentation(root / "photos", masks=root / "annotations")
    with pytest.raises(ConfigError, match=r"must hold \{name\} once"):
        read_segmentation(root / "photos", masks=root / "annotations", mask_name="_mask")


def test_cli_reads_suffixed_masks_for_either_task_and_says_how(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _suffixed(tmp_path / "d")
    given = [str(root / "photos"), "--masks", str(root / "annotations"), "--mask-name", "{name}_mask"]
    out = _check(given, capsys)
    assert "task: segment (semantic segmentation), found from the layout" in out
    assert "read as: images + masks: photos/ + annotations/; masks named {name}_mask; each mask value a class" in out
    assert "look like object ids" in out and "--task segment-instances" in out  # 2 and 3 objects: values 1..n
    out = _check([*given, "--task", "segment-instances", "--classes", "cell"], capsys)
    assert "masks labels in" in out and "2 images, 5 objects in 1 classes (with masks)" in out
    assert "masks named {name}_mask" in out and "one class for every object, 'cell', as given" in out


# --- item 22: image and mask folders side by side per split ----------------------------------------------------


def _camvid(root: Path, annot: str = "annot", mask_name: str = "{}") -> Path:
    """train/ + trainannot/ (2 pairs), val/ + valannot/, test/ + testannot/ (1 each), CamVid's SegNet layout."""
    for split, names in (("train", ["a", "b"]), ("val", ["c"]), ("test", ["d"])):
        for i, name in enumerate(names):
            _image(root / split / f"{name}.png")
            _mask(root / f"{split}{annot}" / f"{mask_name.format(name)}.png", _objects(2 + i))
    return root


def test_side_by_side_split_folders_are_semantic_masks_with_their_splits(tmp_path: Path) -> None:
    root = _camvid(tmp_path / "camvid")
    assert holds_semantic_masks(root)
    ds = read_segmentation(root, workers=1)
    assert ds.format == "folders" and ds.root == root.resolve()
    assert [(s.path.name, s.mask.parent.name, s.split) for s in ds.samples] == [  # in natural order of their paths
        ("d.png", "testannot", "test"), ("a.png", "trainannot", "train"), ("b.png", "trainannot", "train"),
        ("c.png", "valannot", "val")]
    assert ds.read_as == "images + masks: test/ + testannot/; train/ + trainannot/; val/ + valannot/"
    kaggle = _camvid(tmp_path / "kaggle", annot="_labels", mask_name="{}_L")  # CamVid as Kaggle has it: 0001TP_L.png
    ds = read_segmentation(kaggle, mask_name="{name}_L", workers=1)
    assert [(s.mask.name, s.split) for s in ds.samples] == [
        ("d_L.png", "test"), ("a_L.png", "train"), ("b_L.png", "train"), ("c_L.png", "val")]


def test_side_by_side_instance_masks_with_classes_json(tmp_path: Path) -> None:
    root = _camvid(tmp_path / "camvid")
    (root / "classes.json").write_text(json.dumps({n: {"1": "car", "2": "person", "3": "car"} for n in "abcd"}))
    assert not holds_semantic_masks(root)  # classes.json names objects: instance masks
    ds = read_detection(root)
    assert ds.format == "masks" and ds.classes == ["car", "person"]
    assert [(s.path.name, s.split, s.labels.tolist()) for s in ds.samples] == [
        ("d.png", "test", [0, 1]), ("a.png", "train", [0, 1]), ("b.png", "train", [0, 1, 0]), ("c.png", "val", [0, 1])]


def test_cli_reads_side_by_side_folders_and_names_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _camvid(tmp_path / "camvid")
    out = _check([str(root)], capsys)
    assert "task: segment (semantic segmentation)" in out and "folders segmentation masks (index)" in out
    assert "read as: images + masks: test/ + testannot/; train/ + trainannot/; val/ + valannot/" in out
    assert "splits: test 1, train 2, val 1" in out


def test_a_short_training_on_side_by_side_folders_keeps_the_layout_for_evaluate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _camvid(tmp_path / "kaggle", annot="_labels", mask_name="{}_L")
    out = tmp_path / "runs"
    assert main(["train", str(root), "--task", "segment", "--mask-name", "{name}_L", "--epochs", "1", "--image-size", "16",
                 "--batch-size", "2", "--workers", "0", "--output", str(out), "--name", "camvid", "--no-evaluate"]) == 0
    config = json.loads((out / "camvid" / "config.json").read_text())
    assert config["mask_name"] == "{name}_L" and config["classes"] == ["0", "1", "2", "3"]
    capsys.readouterr()
    assert main(["evaluate", str(out / "camvid")]) == 0  # reads the masks again with the saved pattern
    assert capsys.readouterr().out.startswith("test: mIoU ")


# --- item 24: the one class of instance masks -------------------------------------------------------------------


def _instances(root: Path, counts: tuple[int, ...] = (1, 3, 4)) -> Path:
    """images/ + masks/ of instance masks, values 1..n per mask (n = each of `counts`)."""
    for i, n in enumerate(counts):
        _image(root / "images" / f"img{i}.png")
        _mask(root / "masks" / f"img{i}.png", _objects(n))
    return root


def test_one_given_class_names_every_object_and_several_need_classes_json(tmp_path: Path) -> None:
    root = _instances(tmp_path / "d")
    ds = read_detection(root, format="masks", classes=["cell"])
    assert ds.classes == ["cell"] and ds.num_objects == 8 and "'cell', as given" in ds.read_as
    assert read_detection(root, format="masks").classes == ["object"]
    with pytest.raises(DataError, match=r"(?s)2 class names given.*classes\.json.*or give one class name"):
        read_detection(root, format="masks", classes=["cell", "nucleus"])
    (root / "classes.json").write_text(json.dumps({"img0": {"1": "b"}, "img1": {"1": "a", "2": "b", "3": "a"},
                                                   "img2": {"1": "a", "2": "a", "3": "b", "4": "b"}}))
    ds = read_detection(root, classes=["b", "a"])  # with classes.json, several names set the order
    assert ds.classes == ["b", "a"] and ds.samples[0].labels.tolist() == [0]


def test_cli_classes_names_the_one_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _instances(tmp_path / "d")
    out = _check([str(root), "--task", "detect", "--classes", "cell"], capsys)
    assert "3 images, 8 objects in 1 classes" in out and "not among the classes" not in out
    assert ["cell", "8"] in [[cell for cell in line.split() if cell.isalnum()] for line in out.splitlines()]
    out = _check([str(root), "--task", "detect", "--classes", "cell", "nucleus"], capsys, code=2)
    assert "nothing says which object is of which" in out and "classes.json" in out


# --- item 25: which task image and mask folders are for ---------------------------------------------------------


def test_object_id_rule() -> None:
    assert object_id_like([{0, 1}, {0, 1, 2, 3}, {1, 2}])
    assert not object_id_like([{0, 1}, {0, 1}])  # binary, or one object each: nothing tells
    assert not object_id_like([{0, 1, 2, 3}, {0, 1, 2, 3}])  # the same n everywhere: classes
    assert not object_id_like([{0, 1, 3}, {0, 1, 2, 3, 4}])  # a gap: classes


def test_cli_says_which_task_it_read_mask_folders_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _instances(tmp_path / "d")
    out = _check([str(root)], capsys)  # no classes.json: semantic masks, with the hint that they look like objects
    assert "task: segment (semantic segmentation), found from the layout; --task reads it as another's" in out
    assert "look like object ids" in out and "--task segment-instances" in out
    (root / "classes.json").write_text(json.dumps({f"img{i}": {str(v): "cell" for v in range(1, 5)} for i in range(3)}))
    out = _check([str(root)], capsys)
    assert "task: detect (object detection)" in out and "masks labels in" in out and "8 objects in 1 classes" in out
    assert "read as: images + masks: images/ + masks/; classes from" in out


def test_cli_with_no_layout_lists_every_tasks_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path / "e" / "photo.png")
    out = _check([str(tmp_path / "e")], capsys, code=2)
    assert "no labels found in" in out
    for layouts in ("classification data", "detection labels", "semantic-segmentation masks"):
        assert f"deepfit reads {layouts} laid out as one of" in out
    out = _check([str(tmp_path / "missing")], capsys, code=2)
    assert "not found" in out
