"""Training, evaluating and using detectors and instance segmenters end to end, on small images the tests
draw (the `squares` fixture of conftest.py: coloured squares as YOLO-seg polygons in train/ and val/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfit.cli import main
from deepfit.config import TrainConfig
from deepfit.errors import ConfigError, DataError

WEIGHTS_NAME = "mobilenet_v2.safetensors"
@pytest.fixture(scope="module")
def weights(shared_dir: Path) -> Path:
    path = shared_dir / "weights" / WEIGHTS_NAME
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="module")
def detect_run(squares: Path, weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    code = main(["train", str(squares), "--task", "detect", "--weights", str(weights), "--epochs", "2", "--image-size", "128",
                 "--batch-size", "4", "--lr", "5e-4", "--output", str(out), "--name", "det", "--workers", "0"])
    assert code == 0
    return out / "det"


def test_cli_trains_evaluates_and_writes_the_run(detect_run: Path) -> None:
    for name in ("best.safetensors", "last.safetensors", "resume.pt", "metrics.csv", "split.csv", "config.json",
                 "report.html", "evaluation.json", "detections.json", "pr_curves_box.png", "per_class_ap.csv"):
        assert (detect_run / name).is_file(), name
    rows = (detect_run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,phase,train_loss,val_map,val_map50") and len(rows) == 3
    config = json.loads((detect_run / "config.json").read_text())
    assert config["task"] == "detect" and config["model"] == "fasterrcnn:tv/mobilenet_v2" and config["classes"] == ["red", "blue"]
    evaluation = json.loads((detect_run / "evaluation.json").read_text())
    assert evaluation["split"] == "val" and 0.0 <= evaluation["box"]["map"] <= 1.0 and evaluation["mask"] is None
    html = (detect_run / "report.html").read_text()
    assert "mAP" in html and "data:image/jpeg;base64" in html  # the gallery is embedded


def test_python_api_predicts_boxes_in_the_images_own_pixels(detect_run: Path, squares: Path) -> None:
    import deepfit

    det = deepfit.load(detect_run)
    assert isinstance(det, deepfit.ObjectDetector) and det.classes == ["red", "blue"]
    image = Image.open(squares / "images" / "val" / "val0.png")
    p = det.predict(image, conf=0.0)
    assert set(p) >= {"boxes", "labels", "scores", "names"} and "masks" not in p
    assert p["boxes"].shape[1] == 4 and len(p["boxes"]) == len(p["scores"]) == len(p["labels"])
    assert (p["boxes"][:, 2] <= 96 + 1e-3).all() and (p["boxes"][:, 3] <= 96 + 1e-3).all()  # the 96 px image, not the 128 frame
    several = det.predict([np.asarray(image), torch.from_numpy(np.asarray(image)).permute(2, 0, 1)], conf=0.0)
    np.testing.assert_allclose(several[0]["boxes"], several[1]["boxes"], atol=1e-3)
    assert len(det.predict(str(squares / "images" / "val"), conf=0.0)) == 4  # a folder
    assert det.predict(image, conf=1.0)["boxes"].shape == (0, 4)  # --conf filters


def _check_detector_export(run: Path, squares: Path, *, masks: bool) -> None:
    """Export with every box kept (an untrained detector scores all low), the boxes of ONNX Runtime against PyTorch's,
    and the onnx backend's predictions against the torch backend's."""
    import deepfit
    import deepfit.tasks.detect.predict as detect_predict
    from deepfit.workflows.export import export

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(detect_predict, "EXPORT_CONF", 0.0)
        made = export(run, samples=3)
    parity = made.figures["parity"]
    assert parity["reference_boxes"] > 0 and parity["box_map"] >= 0.95, parity
    assert made.figures["outputs"] == ["boxes", "labels", "scores", *(["masks"] if masks else [])]
    image = squares / "images" / "val" / "val1.png"
    ours, theirs = deepfit.load(run, backend="onnx").predict(image, conf=0.0), deepfit.load(run).predict(image, conf=0.0)
    assert ours["names"][:3] == theirs["names"][:3] and ("masks" in ours) == masks
    np.testing.assert_allclose(ours["boxes"][:3], theirs["boxes"][:3], atol=1.0)  # torch may compute in bf16 here
    with pytest.raises(ConfigError, match="--conf >= 0.0 and --iou 0.5"):
        deepfit.load(run, backend="onnx").predict(image, iou=0.7)


def test_detector_exports_to_onnx_with_its_boxes_checked(detect_run: Path, squares: Path, tmp_path: Path) -> None:
    import shutil

    _check_detector_export(Path(shutil.copytree(detect_run, tmp_path / "det")), squares, masks=False)


def test_a_detector_draws_its_boxes_on_every_video_frame(detect_run: Path, squares: Path, tmp_path: Path) -> None:
    from deepfit.modalities.image.video import VideoWriter, open_frames

    with VideoWriter(tmp_path / "squares.mp4", 5) as writer:  # the data's own images as frames
        for i in range(4):
            writer.write(np.asarray(Image.open(squares / "images" / "val" / f"val{i}.png").convert("RGB")))
    assert main(["predict", str(detect_run), str(tmp_path / "squares.mp4"), "--conf", "0.0", "--output", str(tmp_path / "out")]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "squares.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["objects"] == len(r["detections"]) > 0 for r in records)
    assert set(records[0]["detections"][0]) == {"class", "score", "box"}
    with open_frames(tmp_path / "out" / "squares.mp4") as frames:
        drawn = [f.image for f in frames]
    assert len(drawn) == 4 and drawn[0].shape == (96, 96, 3)


def test_cli_predict_writes_drawings_coco_json_and_csv_and_never_overwrites(detect_run: Path, squares: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    assert main(["predict", str(detect_run), str(squares / "images" / "val"), "--output", str(out), "--conf", "0.01"]) == 0
    assert sorted(p.name for p in out.glob("*.jpg")) == [f"val{i}.jpg" for i in range(4)]
    results = json.loads((out / "detections.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score", "file_name"} <= set(r) for r in results)
    assert min((r["score"] for r in results), default=1.0) >= 0.01
    rows = (out / "detections.csv").read_text().splitlines()
    assert rows[0].startswith("path,class,score,x1,y1,x2,y2") and len({r.split(",")[0] for r in rows[1:]}) == 4
    before = (out / "detections.json").read_bytes()
    assert main(["predict", str(detect_run), str(squares / "images" / "val"), "--output", str(out)]) == 2
    assert (out / "detections.json").read_bytes() == before


def test_resume_extends_a_finished_detection_run(detect_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(detect_run, copy)
    assert main(["train", "--resume", str(copy), "--epochs", "3", "--no-evaluate"]) == 0
    rows = (copy / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_frozen_backbone_keeps_the_pretrained_weights(squares: Path, weights: Path, tmp_path: Path) -> None:
    """The feature-extraction workflow: the ImageNet backbone is loaded and stays exactly as loaded."""
    from deepfit.models.weights import read_weights_file
    from deepfit.tasks.detect.predict import load_detector
    from deepfit.workflows.train import train as train_detector

    config = TrainConfig(task="detect", weights=str(weights), freeze_backbone=True, epochs=1, image_size=96, output=str(tmp_path),
                         name="frozen", workers=0, class_weights="balanced", sampler="balanced")
    run = train_detector(squares, config)
    model = load_detector(run.run_dir, "last").model
    state, _ = read_weights_file(weights)
    body = model.backbone.body.state_dict()
    first = next(k for k in body if k.endswith("weight") and body[k].ndim == 4)
    torch.testing.assert_close(body[first], state[f"features.{first}"], rtol=0, atol=0)  # the extractor drops `features.`


def test_instance_segmentation_learns_masks_and_reports_mask_map(squares: Path, tmp_path: Path) -> None:
    from deepfit.tasks.detect.predict import load_detector
    from deepfit.workflows.evaluate import evaluate as evaluate_detector
    from deepfit.workflows.train import train as train_detector

    config = TrainConfig(task="segment-instances", epochs=1, image_size=96, output=str(tmp_path), name="seg", workers=0)
    run = train_detector(squares, config)  # from scratch: no weights at all
    evaluation = evaluate_detector(run.run_dir)
    assert evaluation.mask is not None and 0.0 <= evaluation.mask["map"] <= 1.0
    assert (run.run_dir / "pr_curves_mask.png").is_file()
    trained = load_detector(run.run_dir)
    assert trained.masks and trained.meta["task"] == "segment-instances"
    _check_detector_export(run.run_dir, squares, masks=True)


def test_detection_config_errors(squares: Path, tmp_path: Path) -> None:
    from deepfit.workflows.train import train as train_detector

    with pytest.raises(ConfigError, match="mask head"):
        train_detector(squares, TrainConfig(task="segment-instances", model="fasterrcnn:tv/mobilenet_v2", output=str(tmp_path)))
    with pytest.raises(ConfigError, match="needs pretrained backbone"):
        train_detector(squares, TrainConfig(task="detect", freeze_backbone=True, output=str(tmp_path)))
    with pytest.raises(ConfigError, match="task"):
        TrainConfig(task="detection")
    assert TrainConfig(task="detect").batch_size == 4 and TrainConfig().batch_size == 64
    with pytest.raises(ConfigError, match="focal loss.*--sampler balanced"):
        TrainConfig(task="detect", model="retinanet:tv/mobilenet_v2", class_weights="balanced")


def test_class_weights_weigh_the_box_classifier_only_while_training() -> None:
    from torchvision.models.detection import roi_heads

    from deepfit.tasks.detect.objective import weighted_box_classifier

    torch.manual_seed(0)
    logits, boxes = torch.randn(6, 3), torch.randn(6, 12)  # 6 proposals, background + 2 classes
    labels, targets = [torch.tensor([0, 1, 2]), torch.tensor([2, 2, 0])], [torch.randn(3, 4), torch.randn(3, 4)]
    plain_cls, plain_box = roi_heads.fastrcnn_loss(logits, boxes, labels, targets)
    with weighted_box_classifier(torch.tensor([1.0, 4.0])):
        cls, box = roi_heads.fastrcnn_loss(logits, boxes, labels, targets)
    expected = torch.nn.functional.cross_entropy(logits, torch.cat(labels), weight=torch.tensor([1.0, 1.0, 4.0]))
    torch.testing.assert_close(cls, expected)
    torch.testing.assert_close(box, plain_box)  # the box loss is torchvision's own
    assert roi_heads.fastrcnn_loss(logits, boxes, labels, targets)[0] == plain_cls  # and the original is back


def test_boxes_only_data_cannot_train_instance_segmentation(tmp_path: Path) -> None:
    from deepfit.workflows.train import train as train_detector

    root = tmp_path / "boxes"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names: [thing]\n")
    Image.new("RGB", (32, 32)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    with pytest.raises(DataError, match="no masks"):
        train_detector(root, TrainConfig(task="segment-instances", output=str(tmp_path / "runs")))


def test_a_corrupt_image_is_named(tmp_path: Path) -> None:
    from deepfit.tasks.detect.store import decode_rgb

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        decode_rgb(str(bad))


def test_random_split_is_seeded_leak_free_and_folder_splits_are_kept(squares: Path) -> None:
    from dataclasses import replace

    from deepfit.tasks.detect.data import read_detection
    from deepfit.tasks.detect.task import split_samples

    dataset = read_detection(squares)
    given = split_samples(dataset, 0.2, 0.2, 0)
    assert [len(given[k]) for k in ("train", "val", "test")] == [8, 4, 0]  # the folders, as they are
    unsplit = replace(dataset, samples=[replace(s, split=None) for s in dataset.samples])
    a, b = split_samples(unsplit, 0.25, 0.25, 0), split_samples(unsplit, 0.25, 0.25, 0)
    assert {k: [s.path for s in v] for k, v in a.items()} == {k: [s.path for s in v] for k, v in b.items()}
    assert [len(a[k]) for k in ("train", "val", "test")] == [6, 3, 3]
    paths = [s.path for v in a.values() for s in v]
    assert len(paths) == len(set(paths)) == 12  # every image in exactly one split


def test_a_trained_detector_is_fine_tuned_from_its_weights_file(detect_run: Path, squares: Path, tmp_path: Path) -> None:
    """--weights with a whole detector's weights (not a backbone's) loads all of it."""
    from deepfit.tasks.detect.predict import load_detector
    from deepfit.tasks.detect.task import create_detector

    config = TrainConfig(task="detect", weights=str(detect_run / "best.safetensors"), image_size=128)
    model, _, origin = create_detector(config, ["red", "blue"])
    trained = load_detector(detect_run).model.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    assert origin == str(detect_run / "best.safetensors")
