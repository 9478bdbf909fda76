"""Semantic segmentation end to end: train (three workflows), resume, evaluate, predict, data check, bad input.

The data are drawn by conftest.draw_rectangles: a red and a blue rectangle on a noisy grey background, with
an indexed mask (0 background, 1 red, 2 blue), so a small U-Net learns them within a few epochs on the CPU.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SIZE, draw_rectangles, rectangle_pair
from deepfit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def rectangles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_rectangles(tmp_path_factory.mktemp("rect") / "data", {"train": 20, "val": 4, "test": 4})


FAST = ["--image-size", "48", "--batch-size", "4", "--workers", "0", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def trained(rectangles: Path, tmp_path_factory: pytest.TempPathFactory, weights_dir: Path) -> Path:
    """A U-Net on the shared ImageNet MobileNetV2, fine-tuned for 12 short epochs (60 steps) through the CLI."""
    from deepfit.cli import main

    out = tmp_path_factory.mktemp("runs")
    weights = weights_dir / "mobilenet_v2.safetensors"
    code = main(["train", str(rectangles), "--task", "segment", "--weights", str(weights), "--epochs", "12", *FAST,
                 "--output", str(out), "--name", "unet", "--no-evaluate"])
    assert code == 0
    return out / "unet"


def test_training_writes_a_run_that_learned(trained: Path) -> None:
    config = json.loads((trained / "config.json").read_text())
    assert config["task"] == "segment" and config["model"] == "unet:tv/mobilenet_v2"
    assert config["classes"] == ["background", "red", "blue"] and config["class_map"]["kind"] == "index"
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert len(rows) == 12 and {"val_miou", "val_pixel_acc", "val_loss"} <= set(rows[0])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert max(float(r["val_miou"]) for r in rows) > 0.8  # coloured rectangles: easy once the decoder has learned
    splits = [r["split"] for r in csv.DictReader((trained / "split.csv").open())]
    assert splits.count("train") == 20 and splits.count("val") == 4 and splits.count("test") == 4
    assert (trained / "best.safetensors").is_file() and (trained / "last.safetensors").is_file()


def test_evaluate_scores_the_test_split_and_writes_the_report(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deepfit.cli import main

    assert main(["evaluate", str(trained)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test: mIoU ")
    record = json.loads((trained / "evaluation.json").read_text())
    assert record["split"] == "test" and record["miou"] > 0.8
    assert [c["class"] for c in record["per_class"]] == ["background", "red", "blue"]
    html = (trained / "report.html").read_text()
    assert "red" in html and html.count("<img") >= 4 + 2  # gallery (4 test images) + plots
    confusion = list(csv.reader((trained / "confusion.csv").open()))
    assert len(confusion) == 4  # header + 3 classes
    assert (trained / "per_class.csv").is_file()


def test_predict_writes_masks_and_overlays_without_overwriting(trained: Path, tmp_path: Path) -> None:
    from deepfit.cli import main

    rng = np.random.default_rng(5)
    image, mask = rectangle_pair(rng, 70, 90)  # another size than the training crops
    Image.fromarray(image).save(tmp_path / "new.png")
    out = tmp_path / "pred"
    assert main(["predict", str(trained), str(tmp_path / "new.png"), "--output", str(out)]) == 0
    written = Image.open(out / "new.png")
    assert written.mode == "P" and written.size == (90, 70)
    predicted = np.array(written)
    assert set(np.unique(predicted)) <= {0, 1, 2} and (predicted == mask).mean() > 0.8
    assert Image.open(out / "new_overlay.jpg").size == (90, 70)
    before = (out / "new.png").read_bytes()
    assert main(["predict", str(trained), str(tmp_path / "new.png"), "--output", str(out)]) == 2  # never overwrites
    assert (out / "new.png").read_bytes() == before


def test_load_predicts_class_indexes_at_the_original_size(trained: Path) -> None:
    import deepfit

    seg = deepfit.load(trained)
    assert isinstance(seg, deepfit.SemanticSegmenter) and seg.classes == ["background", "red", "blue"]
    image, mask = rectangle_pair(np.random.default_rng(7), 53, 101)
    result = seg.predict(image)  # an (H, W, 3) array
    assert result.shape == (53, 101) and result.dtype == np.uint8
    assert (result == mask).mean() > 0.8
    both = seg.predict([Image.fromarray(image), image])
    assert len(both) == 2 and np.array_equal(both[0], result)


def test_export_agrees_pixel_for_pixel_and_the_onnx_backend_tiles_too(trained: Path, tmp_path: Path) -> None:
    import shutil

    import deepfit
    from deepfit.tasks.segment.predict import SegmentationPredictor, load_segmenter
    from deepfit.workflows.export import export

    run = Path(shutil.copytree(trained, tmp_path / "run"))
    made = export(run, samples=4, quantize="int8")
    assert made.figures["parity"]["pixel_agreement"] == 1.0 and made.figures["int8"]["pixel_agreement"] > 0.9
    image, _ = rectangle_pair(np.random.default_rng(7), 53, 101)  # another size than any the export saw
    ours, theirs = deepfit.load(run, backend="onnx").predict(image), deepfit.load(run).predict(image)
    assert ours.shape == (53, 101) and (ours == theirs).mean() > 0.99
    tiles = SegmentationPredictor(load_segmenter(run), "cpu", tile_size=48)  # 53x101 > 48: tiled through ONNX Runtime
    tiles.use_onnx(made.model)
    assert (tiles.predict(image) == ours).mean() > 0.95


def test_a_segmenter_streams_masks_of_video_frames(trained: Path, tmp_path: Path) -> None:
    import deepfit
    from deepfit.modalities.image.video import VideoWriter

    rng = np.random.default_rng(3)
    pairs = [rectangle_pair(rng, 48, 64) for _ in range(3)]
    with VideoWriter(tmp_path / "rects.mkv", 5) as writer:
        for image, _ in pairs:
            writer.write(image)
    frames = list(deepfit.load(trained).stream(tmp_path / "rects.mkv"))
    assert [f.index for f in frames] == [0, 1, 2] and frames[0].result.shape == (48, 64)
    assert np.mean([(f.result == mask).mean() for f, (_, mask) in zip(frames, pairs, strict=True)]) > 0.7  # after coding


def test_tiled_prediction_of_a_large_image_matches_the_whole_image(trained: Path) -> None:
    from deepfit.tasks.segment.predict import SegmentationPredictor, load_segmenter

    image, _ = rectangle_pair(np.random.default_rng(9), 150, 200)
    whole = SegmentationPredictor(load_segmenter(trained), "cpu", tile_size=256).predict(image)
    tiled = SegmentationPredictor(load_segmenter(trained), "cpu", tile_size=96).predict(image)  # 150x200 > 96: tiles
    assert tiled.shape == whole.shape == (150, 200)
    assert (tiled == whole).mean() > 0.97


def test_frozen_encoder_keeps_its_weights_and_scratch_trains_with_dice_and_weights(rectangles: Path, tmp_path: Path,
                                                                                     weights_dir: Path) -> None:
    from safetensors.torch import load_file

    from deepfit import SemanticSegmenter

    weights = weights_dir / "mobilenet_v2.safetensors"
    frozen = SemanticSegmenter(weights=str(weights), freeze_backbone=True, epochs=1, image_size=48, batch_size=4, workers=0,
                               output=str(tmp_path), name="frozen")
    frozen.fit(rectangles)
    state, given = load_file(frozen.run_dir / "last.safetensors"), load_file(weights)
    assert np.array_equal(state["encoder.features.3.conv.1.0.weight"].numpy(), given["features.3.conv.1.0.weight"].numpy())

    scratch = SemanticSegmenter("unet:tv/mobilenet_v2", loss="ce+dice", class_weights="balanced", sampler="balanced", epochs=1, image_size=48,
                                batch_size=4, workers=0, output=str(tmp_path), name="scratch")
    scratch.fit(rectangles)
    config = json.loads((scratch.run_dir / "config.json").read_text())
    assert config["loss"] == "ce+dice" and config["class_weights"] == "balanced" and config["weights"] is None
    assert config["sampler"] == "balanced"
    assert len(list(csv.DictReader((scratch.run_dir / "metrics.csv").open()))) == 1


def test_resume_extends_a_finished_run(rectangles: Path, tmp_path: Path) -> None:
    from deepfit import SemanticSegmenter, resume

    seg = SemanticSegmenter("unet:tv/mobilenet_v2", epochs=1, image_size=32, batch_size=4, workers=0, output=str(tmp_path), name="r")
    seg.fit(rectangles)
    with pytest.raises(ConfigError, match="already finished"):
        resume(seg.run_dir)
    again = resume(seg.run_dir, epochs=2)
    assert isinstance(again, SemanticSegmenter)
    assert [r["epoch"] for r in csv.DictReader((seg.run_dir / "metrics.csv").open())] == ["1", "2"]


def test_data_check_reports_classes_shares_and_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deepfit.cli import main

    root = draw_rectangles(tmp_path / "d", {"train": 6})
    Image.open(root / "masks" / "train" / "train0.png").resize((SIZE, SIZE + 4)).save(root / "masks" / "train" / "train0.png")
    (root / "masks" / "train" / "train1.png").unlink()
    assert main(["data", "check", str(root)]) == 0
    captured = capsys.readouterr()
    assert "3 classes" in captured.out and "background" in captured.out and "%" in captured.out
    assert "train0" in captured.out and "train1" in captured.out  # listed by file, with the problem
    assert "train0" in captured.err  # and warned about


def test_training_stops_when_too_many_pairs_are_bad(tmp_path: Path) -> None:
    from deepfit import SemanticSegmenter

    root = draw_rectangles(tmp_path / "d", {"train": 10})
    (root / "masks" / "train" / "train3.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="train3"):
        SemanticSegmenter(epochs=1, image_size=32, workers=0, output=str(tmp_path / "runs")).fit(root)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_wrong_task_options_are_errors(rectangles: Path, tmp_path: Path) -> None:
    from deepfit import ObjectDetector, SemanticSegmenter
    from deepfit.cli import main
    from deepfit.errors import DeepfitError

    with pytest.raises(ConfigError, match="loss"):
        SemanticSegmenter(loss="ce+hinge")
    with pytest.raises(DeepfitError, match="SemanticSegmenter"):
        ObjectDetector(task="segment")
    assert main(["train", str(rectangles), "--task", "segment", "--format", "yolo", "--output", str(tmp_path)]) == 2


def test_evaluate_on_other_data_reads_it_with_the_runs_class_map(trained: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from deepfit.cli import main

    other = draw_rectangles(tmp_path / "other", {"extra": 3}, seed=11)
    (other / "classes.txt").unlink()  # the run's class map names the values, not the new folder
    assert main(["evaluate", str(trained), "--data", str(other)]) == 0
    assert capsys.readouterr().out.startswith(f"{other}: mIoU ")
    record = json.loads((trained / "evaluation.json").read_text())
    assert record["split"] == str(other) and [c["class"] for c in record["per_class"]] == ["background", "red", "blue"]


def test_predict_skips_an_unreadable_file_and_refuses_clashing_names(trained: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from deepfit.cli import main

    image, _ = rectangle_pair(np.random.default_rng(2))
    Image.fromarray(image).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["predict", str(trained), str(tmp_path / "good.png"), str(tmp_path / "broken.png"), "--output", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "1 images segmented" in captured.out and "1 unreadable files skipped" in captured.out and "broken.png" in captured.err
    assert (tmp_path / "o" / "good.png").is_file() and not (tmp_path / "o" / "broken.png").exists()
    (tmp_path / "sub").mkdir()
    Image.fromarray(image).save(tmp_path / "sub" / "good.png")
    assert main(["predict", str(trained), str(tmp_path / "good.png"), str(tmp_path / "sub" / "good.png"),
                 "--output", str(tmp_path / "o2")]) == 2
    assert "several images are named 'good'" in capsys.readouterr().err
