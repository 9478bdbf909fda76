"""Explanations of detectors, instance segmenters and semantic segmenters: `deepfit explain` and `model.explain` on tiny
runs (a map per object or class region, drawn where the object is), bad options as one-line errors, and the evaluation
reports that show an explanation beside each worst-predicted image.

The runs are the smallest that train: a detector of the `squares` fixture and a U-Net of conftest.draw_rectangles, one
to four short epochs each. The detector barely learns in that time, so its maps are checked for being drawn in the
right place (the box, the image's own pixels), not for what they show; the U-Net learns its rectangles, and a map of
a class from a layer of its decoder must be brighter inside the region painted as that class than outside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepfit
from conftest import draw_rectangles, rectangle_pair
from deepfit.cli import main
from deepfit.report.drawing import class_color

FAST = ["--batch-size", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def weights(shared_dir: Path) -> Path:
    path = shared_dir / "weights" / "mobilenet_v2.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explain-runs")


@pytest.fixture(scope="module")
def detector(squares: Path, weights: Path, runs: Path) -> Path:
    """A detector trained for one epoch and evaluated (its report explains its worst images)."""
    assert main(["train", str(squares), "--task", "detect", "--weights", str(weights), "--epochs", "1", "--image-size", "96",
                 "--lr", "5e-4", *FAST, "--output", str(runs), "--name", "det"]) == 0
    return runs / "det"


@pytest.fixture(scope="module")
def segmenter(weights: Path, runs: Path) -> Path:
    """A U-Net trained for four epochs and evaluated on the validation split."""
    data = draw_rectangles(runs / "rectangles", {"train": 12, "val": 4})
    assert main(["train", str(data), "--task", "segment", "--weights", str(weights), "--epochs", "4", "--image-size", "48",
                 "--lr", "3e-3", *FAST, "--output", str(runs), "--name", "unet"]) == 0
    return runs / "unet"


def _val(squares: Path) -> list[Path]:
    return sorted((squares / "images" / "val").glob("*.png"))


def test_detector_explains_each_object_where_its_box_is(detector: Path, squares: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "why"
    assert main(["explain", str(detector), str(squares / "images" / "val"), "--conf", "0", "--max-objects", "2",
                 "--output", str(out)]) == 0
    records = json.loads((out / "explanations.json").read_text())
    assert len(records) == 2 * len(_val(squares))  # an untrained detector finds many boxes at --conf 0
    assert {r["method"] for r in records} == {"gradcam"} and {r["layer"] for r in records} == {"backbone.body.18"}
    assert all(len(r["box"]) == 4 and r["peak"]["of"] == [96, 96] and (out / r["picture"]).is_file() for r in records)
    assert f"{len(records)} explanations (gradcam on layer backbone.body.18) written to" in capsys.readouterr().out

    det = deepfit.load(detector)
    image = _val(squares)[0]
    found = det.predict(image, conf=0.0)
    made = det.explain(image, conf=0.0, max_objects=1, method="layercam", layer="backbone.body.13")
    assert len(made) == 1 and (made[0].method, made[0].layer) == ("layercam", "backbone.body.13")
    e = made[0]
    assert e.target == found["names"][0] and e.probability == pytest.approx(float(found["scores"][0]))
    np.testing.assert_allclose(e.box, found["boxes"][0], atol=1e-3)  # the most confident object, in the image's pixels
    assert e.heat.shape == (96, 96) and e.heat.min() >= 0 and e.heat.max() <= 1
    # the 96 px image is drawn twice as large, its box with it: the box's left edge is in the class's colour
    assert e.picture.shape == (192, 192, 3)
    x1, y1, _, y2 = (2 * v for v in e.box)
    edge = e.picture[int((y1 + y2) / 2), max(0, int(x1) - 1):int(x1) + 3]
    assert (edge == class_color(det.classes.index(e.target))).all(1).any()

    blue = det.explain([str(p) for p in _val(squares)], conf=0.0, max_objects=3, target="blue")
    assert blue and {e.target for e in blue} == {"blue"} and len(blue) <= 3 * len(_val(squares))


def test_detector_maps_are_cut_from_the_letterbox_to_the_images_pixels(detector: Path, squares: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """grad-cam replaced by maps that are 1 exactly inside each target's box in the letterboxed frame the detector sees:
    the map explained must then be 1 inside the object's box in the image's own pixels and 0 away from it, on a wide
    image (its frame padded at the bottom) drawn at another scale than the frame."""
    import deepfit.tasks.detect.explain as detect_explain

    def box_maps(_model: object, x: torch.Tensor, targets: list, _layer: object, _method: str) -> np.ndarray:
        maps = np.zeros((len(targets), *x.shape[-2:]), np.float32)  # (N, S, S)
        for n, target in enumerate(targets):
            x1, y1, x2, y2 = (round(float(v)) for v in target.box)
            maps[n, y1:y2, x1:x2] = 1
        return maps

    monkeypatch.setattr(detect_explain, "heat_maps", box_maps)
    square = np.asarray(Image.open(_val(squares)[0]).convert("RGB"))
    wide = np.concatenate([square, np.full((96, 48, 3), 128, np.uint8)], axis=1)  # (96, 144, 3): 96 x 64 in the frame
    made = deepfit.load(detector).explain(wide, conf=0.0, max_objects=5)
    assert made and all(e.heat.shape == (96, 144) for e in made)
    checked = 0
    for e in made:
        x1, y1, x2, y2 = e.box
        rows, columns = np.mgrid[:96, :144]
        inside = (rows > y1 + 3) & (rows < y2 - 3) & (columns > x1 + 3) & (columns < x2 - 3)
        away = (rows < y1 - 3) | (rows > y2 + 3) | (columns < x1 - 3) | (columns > x2 + 3)
        assert (e.heat[away] < 0.05).all(), f"heat away from the box {e.box}"
        if inside.any():
            assert (e.heat[inside] > 0.95).all(), f"no heat inside the box {e.box}"
            checked += 1
    assert checked


@pytest.mark.parametrize(("flags", "message"), [
    (["--layer", "nope"], "--layer nope: the detector has no such layer that can be explained"),
    (["--method", "occlusion"], "--method occlusion: a detector is explained by gradcam, gradcam++"),
    (["--method", "scorecam"], "--method scorecam: a detector is explained by"),
    (["--class", "green"], "--class green: the model's classes are red, blue"),
    (["--max-objects", "0"], "--max-objects must be at least 1"),
])
def test_detector_bad_options_are_one_line_errors(detector: Path, squares: Path, tmp_path: Path, flags: list[str],
                                                  message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(detector), str(_val(squares)[0]), "--conf", "0", "--output", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if flags[0] == "--layer":
        assert "layers that can, last first: backbone.fpn." in err and "backbone.body.18" in err
    assert not (tmp_path / "o" / "explanations.json").exists()


def test_instance_segmenter_explains_its_objects(squares: Path, weights: Path, runs: Path) -> None:
    assert main(["train", str(squares), "--task", "segment-instances", "--weights", str(weights), "--epochs", "1",
                 "--image-size", "64", *FAST, "--output", str(runs), "--name", "inst", "--no-evaluate"]) == 0
    made = deepfit.load(runs / "inst").explain(_val(squares)[:2], conf=0.0, max_objects=1, method="eigencam")
    assert len(made) == 2 and {e.method for e in made} == {"eigencam"} and made[0].layer.startswith("backbone.body.")
    assert all(e.heat.shape == (96, 96) and e.picture.shape == (192, 192, 3) and e.box is not None for e in made)


def test_segmenter_explains_each_region_and_looks_inside_it(segmenter: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    images = sorted((segmenter.parent / "rectangles" / "images" / "val").glob("*.png"))
    out = tmp_path / "why"
    assert main(["explain", str(segmenter), *map(str, images), "--output", str(out)]) == 0
    records = json.loads((out / "explanations.json").read_text())
    assert {r["method"] for r in records} == {"gradcam"} and {r["layer"] for r in records} == {"decoder.blocks.2"}
    assert all(0 < r["region_fraction"] <= 1 and (out / r["picture"]).is_file() for r in records)
    for image in images:  # the largest region first
        fractions = [r["region_fraction"] for r in records if r["source"] == str(image)]
        assert fractions and fractions == sorted(fractions, reverse=True)
    # the default layer: the decoder's stage at a quarter of the input (the encoder's last is 2 x 2 on a 64 px image)
    assert "explanations (gradcam on layer decoder.blocks.2) written to" in capsys.readouterr().out
    assert main(["explain", str(segmenter), str(images[0]), "--class", "red", "--output", str(tmp_path / "red")]) == 0
    assert {r["target"] for r in json.loads((tmp_path / "red" / "explanations.json").read_text())} <= {"red"}

    unet = deepfit.load(segmenter)
    made = unet.explain(images, max_objects=2)
    assert made and all(len([e for e in made if e.source == str(p)]) <= 2 for p in images)
    for e in made:
        painted = unet.predict(e.source) == unet.classes.index(e.target)
        assert e.heat.shape == painted.shape and e.picture.shape == (192, 192, 3)  # the 64 px image drawn 3 times larger
        inside, outside = e.heat[painted].mean(), e.heat[~painted].mean()
        assert inside > outside, f"{e.source} {e.target}: mean heat {inside:.3f} inside the region, {outside:.3f} outside"


def test_segmenter_maps_are_cut_from_the_padded_input_to_the_image(segmenter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """grad-cam replaced by maps that are 1 exactly on each target's region in the padded input: the map explained must
    be the region the segmenter painted, on an image whose sides are no multiple of 32."""
    import deepfit.tasks.segment.explain as segment_explain

    def region_maps(_model: object, x: torch.Tensor, targets: list, _layer: object, _method: str) -> np.ndarray:
        maps = np.zeros((len(targets), *x.shape[-2:]), np.float32)  # (N, H', W')
        for n, target in enumerate(targets):
            h, w = target.region.shape
            maps[n, :h, :w] = target.region.cpu().numpy()
        return maps

    monkeypatch.setattr(segment_explain, "heat_maps", region_maps)
    image, _ = rectangle_pair(np.random.default_rng(3), 70, 90)
    unet = deepfit.load(segmenter)
    made = unet.explain(image, max_objects=3)
    painted = unet.predict(image)
    assert made and all(e.picture.shape == (140, 180, 3) for e in made)  # drawn twice as large
    for e in made:
        np.testing.assert_array_equal(e.heat, (painted == unet.classes.index(e.target)).astype(np.float32))


@pytest.mark.parametrize(("flags", "message"), [
    (["--layer", "nope"], "--layer nope: the segmenter has no such layer that can be explained"),
    (["--method", "occlusion"], "--method occlusion: a segmenter is explained by gradcam"),
])
def test_segmenter_bad_options_are_one_line_errors(segmenter: Path, tmp_path: Path, flags: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    image = next((segmenter.parent / "rectangles" / "images" / "val").glob("*.png"))
    assert main(["explain", str(segmenter), str(image), "--output", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if flags[0] == "--layer":
        assert "layers that can, last first: decoder" in err


def _cards(report: Path) -> tuple[int, int]:
    """(gallery cards, those with an explanation beside the image) of a report."""
    html = report.read_text()
    explained = html.count('<div class="shot"><div class="explained">')
    assert html.count('<img class="explanation"') == html.count('alt="explanation: where the model looked for') == explained
    return html.count('<div class="shot">'), explained


def test_reports_show_an_explanation_beside_each_worst_image(detector: Path, segmenter: Path) -> None:
    for run, legend in ((detector, "Beside each image: where the detector looked"), (segmenter, "Last: where the segmenter looked")):
        cards, explained = _cards(run / "report.html")
        assert explained == cards == 4, f"{run.name}: {explained} of {cards} images shown with an explanation"
        assert legend in (run / "report.html").read_text()


def test_a_report_never_fails_for_an_explanation(segmenter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import deepfit.tasks.segment.explain as segment_explain

    def broken(*_: object) -> list:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(segment_explain, "explain_regions", broken)
    run = Path(shutil.copytree(segmenter, tmp_path / "unet"))
    assert main(["evaluate", str(run)]) == 0
    assert _cards(run / "report.html") == (4, 0)
    assert "no explanation of val0.png in the report: RuntimeError: out of memory" in capsys.readouterr().err


def test_deepfit_serve_answers_for_a_detector_and_a_segmenter(detector: Path, segmenter: Path, squares: Path) -> None:
    """The API serves both: boxes as the task's per-frame record, a segmenter's masks as COCO RLE that decode to what
    `predict` paints, and the input drawn with its result."""
    from fastapi.testclient import TestClient
    from pycocotools import mask as coco_mask

    from deepfit.serve.app import create_app

    image = _val(squares)[0]
    picture = sorted((segmenter.parent / "rectangles" / "images" / "val").glob("*.png"))[0]
    with TestClient(create_app([detector, segmenter])) as c:
        found = c.post("/v1/models/det/predict", content=image.read_bytes()).json()
        assert found["task"] == "detect" and found["result"]["objects"] == len(found["result"]["detections"])
        assert found["picture"].startswith("data:image/png;base64,")
        painted = c.post("/v1/models/unet/predict", content=picture.read_bytes()).json()["result"]
        expected = deepfit.load(segmenter).predict(str(picture))
        classes = deepfit.load(segmenter).classes
        for name, rle in painted["masks"].items():
            decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert (decoded.astype(bool) == (expected == classes.index(name))).all()
