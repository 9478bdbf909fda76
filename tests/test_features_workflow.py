"""The feature-extraction workflow: `deepfit features`, `deepfit.extract_features`, `deepfit.fit_features`.

Most tests use `--model handmade` (colour + gradient histograms, no weights) on small synthetic images
at 32 px; the real ImageNet network (tf_efficientnet_lite0) runs on a slice of the ants/bees photos only
where a real network matters, each extraction once per module. Tests that count cache hits use their own
cache folder (DEEPFIT_CACHE) so that no other test's extraction can be reused by accident.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepfit
from conftest import shape_image, write_class_folders
from deepfit.cli import main
from deepfit.config import FeaturesConfig
from deepfit.errors import ConfigError, DataError
from deepfit.models.handmade import HandmadeFeatures
from deepfit.workflows.classical import ALPHA_GRID, C_GRID, RBF_C_GRID, FittedClassifier, fit_classifier
from deepfit.workflows.extraction import FeatureSet
from deepfit.workflows.features import FeaturesResult

# hand-made features on 32 px images: no weights, a few milliseconds per image; on the CPU (fp32) even where
# a GPU is present, so that cache keys and numbers do not depend on the machine
HANDMADE = dict(model="handmade", image_size=32, workers=0, device="cpu")
HANDMADE_CLI = ["--model", "handmade", "--image-size", "32", "--workers", "0", "--device", "cpu"]
LITE0 = "tf_efficientnet_lite0"
RUN_FILES = (
    "best.safetensors", "best.json", "config.json", "split.csv", "cv_results.csv", "report.html", "test_predictions.csv",
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _feature_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("features of ")]


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPFIT_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 12 shapes at 32 px, class folders (deepfit splits them 8 / 2 / 2 per class). Read-only."""
    root = tmp_path_factory.mktemp("feat-shapes") / "data"
    write_class_folders(root, ["a", "b", "c"], 12, size=32)
    return root


@pytest.fixture(scope="module")
def handmade_run(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> FeaturesResult:
    """One logreg fitted on hand-made features; tests that write into the run folder take a copy."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPFIT_CACHE", str(tmp_path_factory.mktemp("feat-run-cache")))
        return deepfit.fit_features(
            small_data, classifier="logreg", output=str(tmp_path_factory.mktemp("feat-runs")), name="run", **HANDMADE
        )


@pytest.fixture(scope="module")
def exported(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureSet, Path, Path]:
    """extract_features of small_data, and the same set exported to .npz and to .parquet."""
    out = tmp_path_factory.mktemp("feat-export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPFIT_CACHE", str(tmp_path_factory.mktemp("feat-export-cache")))
        fs = deepfit.extract_features(small_data, export=str(out / "feats.npz"), **HANDMADE)
        again = deepfit.extract_features(small_data, export=str(out / "feats.parquet"), **HANDMADE)
    assert again.reused == len(fs)
    return fs, out / "feats.npz", out / "feats.parquet"


@dataclass
class RealFeatures:
    fit: FeaturesResult  # pre-logits + svm, a run folder
    layer: FeatureSet  # blocks.3, pooled
    weights: Path


@pytest.fixture(scope="module")
def real(hymenoptera_slice: Path, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RealFeatures:
    """tf_efficientnet_lite0 with ImageNet weights on 12 + 8 ants/bees photos per class: each extraction once."""
    weights = weights_dir / "tf_efficientnet_lite0.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPFIT_CACHE", str(tmp_path_factory.mktemp("feat-real-cache")))
        fit = deepfit.fit_features(
            hymenoptera_slice, LITE0, weights=str(weights), classifier="svm", device="cpu",
            output=str(tmp_path_factory.mktemp("feat-real-runs")), name="lite0-svm",
        )
        layer = deepfit.extract_features(hymenoptera_slice, LITE0, weights=str(weights), layer="blocks.3", device="cpu")
    return RealFeatures(fit, layer, weights)


# --- the classical models as torch heads ---------------------------------------------------------


def _blobs(num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes, columns on very different scales and offsets, one constant column:
    a head that folded the standardisation in wrongly decides differently on some held-out rows."""
    rng = np.random.default_rng(seed)
    dim = 12
    centres = rng.normal(0.0, 1.0, (num_classes, dim))
    y = np.repeat(np.arange(num_classes), 40)
    x = centres[y] + rng.normal(0.0, 1.2, (len(y), dim))
    x = x * np.logspace(-2, 1, dim) + np.linspace(-3.0, 3.0, dim)
    x[:, 0] = 0.5
    order = rng.permutation(len(y))
    x, y = x[order].astype(np.float32), y[order]
    cut = len(y) * 2 // 3
    return x[:cut], y[:cut], x[cut:], y[cut:]


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("kind", ["svm", "rbf", "logreg", "knn", "ridge"])
def test_torch_head_decides_exactly_as_the_sklearn_estimator(kind: str, num_classes: int) -> None:
    x_train, y_train, x_test, _ = _blobs(num_classes, seed=num_classes)
    classes = [f"c{i}" for i in range(num_classes)]
    fitted = fit_classifier(kind, x_train, y_train, classes, folds=3, seed=0)
    assert isinstance(fitted, FittedClassifier) and fitted.kind == kind and fitted.folds == 3

    # the hyper-parameter was chosen by cross-validation over the whole grid
    grid = {"svm": len(C_GRID), "rbf": len(RBF_C_GRID), "logreg": len(C_GRID), "ridge": len(ALPHA_GRID)}.get(kind)
    if grid is not None:
        assert len(fitted.candidates) == grid
    assert fitted.cv_accuracy == max(c["mean_accuracy"] for c in fitted.candidates)
    assert {**fitted.params} in [{k: c[k] for k in fitted.params} for c in fitted.candidates]

    with torch.inference_mode():
        logits = fitted.head(torch.from_numpy(x_test)).double()
    expected = fitted.estimator.predict(x_test)
    assert len(set(expected.tolist())) == num_classes  # not a degenerate test
    np.testing.assert_array_equal(logits.argmax(1).numpy(), expected)

    if kind == "knn":
        np.testing.assert_allclose(logits.softmax(1).numpy(), fitted.estimator.predict_proba(x_test), atol=1e-3)
        return
    # the standardisation is folded in: raw features through the head give the pipeline's decision values
    decision = fitted.estimator.decision_function(x_test)
    if num_classes == 2:  # one decision d for the second class, as logits (-d/2, d/2)
        np.testing.assert_allclose((logits[:, 1] - logits[:, 0]).numpy(), decision, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(logits.sum(1).numpy(), 0.0, atol=1e-4)
    else:
        np.testing.assert_allclose(logits.numpy(), decision, rtol=1e-4, atol=1e-4)
    if kind == "logreg":
        np.testing.assert_allclose(logits.softmax(1).numpy(), fitted.estimator.predict_proba(x_test), atol=1e-4)


def test_scaler_is_folded_into_the_linear_head() -> None:
    x_train, y_train, _, _ = _blobs(3, seed=7)
    fitted = fit_classifier("ridge", x_train, y_train, ["a", "b", "c"], folds=3)
    scaler, clf = fitted.estimator["scale"], fitted.estimator["clf"]
    assert scaler.n_samples_seen_ == len(y_train)
    w = clf.coef_ / scaler.scale_
    np.testing.assert_allclose(fitted.head.weight.detach().double().numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fitted.head.bias.detach().double().numpy(), clf.intercept_ - w @ scaler.mean_, rtol=1e-5, atol=1e-5)


# --- a run folder from features ------------------------------------------------------------------


def test_run_folder_holds_a_complete_run(handmade_run: FeaturesResult) -> None:
    run = handmade_run.run_dir
    assert run is not None and run.name == "run"
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    meta = json.loads((run / "best.json").read_text())
    assert meta["features"]["classifier"] == "logreg" and meta["features"]["layer"] == "pre_logits"
    assert "cross-validation on the training split" in meta["features"]["selection"]
    config = json.loads((run / "config.json").read_text())
    assert config["classifier"] == "logreg" and config["model"] == "handmade"

    # one row per candidate strength, and the chosen one is the best of them
    rows = _read_csv(run / "cv_results.csv")
    assert [float(r["C"]) for r in rows] == list(C_GRID)
    assert handmade_run.classifier is not None
    assert max(float(r["mean_accuracy"]) for r in rows) == pytest.approx(handmade_run.classifier.cv_accuracy)

    # the split: as deepfit splits it, and the classifier saw the training split only
    split = _read_csv(run / "split.csv")
    counts = {s: sum(r["split"] == s for r in split) for s in ("train", "val", "test")}
    assert counts == {"train": 24, "val": 6, "test": 6}
    assert handmade_run.classifier.estimator["scale"].n_samples_seen_ == counts["train"]
    fs = handmade_run.features
    assert sorted(fs.splits) == sorted(r["split"] for r in split)

    evaluation = handmade_run.evaluation
    assert evaluation is not None and evaluation.split == "test"
    assert evaluation.metrics["accuracy"] >= 0.8
    assert {"accuracy", "per_class", "confusion"} <= set(evaluation.metrics)
    predictions = _read_csv(run / "test_predictions.csv")
    assert len(predictions) == counts["test"]
    html = (run / "report.html").read_text()
    assert "Classifier" in html and "logreg" in html and "layer pre_logits" in html


def test_loaded_run_predicts_the_labels_of_test_predictions_csv(handmade_run: FeaturesResult) -> None:
    assert handmade_run.run_dir is not None
    rows = _read_csv(handmade_run.run_dir / "test_predictions.csv")
    model = deepfit.load(handmade_run.run_dir, device="cpu")
    predictions = model.predict([r["path"] for r in rows])
    assert [p.label for p in predictions] == [r["predicted"] for r in rows]
    probs = model.predict_proba([r["path"] for r in rows])
    expected = np.array([[float(r[f"p_{c}"]) for c in model.classes] for r in rows])
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_evaluate_reextracts_through_the_saved_model_and_agrees(handmade_run: FeaturesResult, tmp_path: Path) -> None:
    from deepfit.workflows.evaluate import evaluate

    assert handmade_run.run_dir is not None and handmade_run.evaluation is not None
    run = Path(shutil.copytree(handmade_run.run_dir, tmp_path / "run"))
    before = _read_csv(run / "test_predictions.csv")
    evaluation = evaluate(run, device="cpu")
    assert evaluation.split == "test"
    assert evaluation.metrics["accuracy"] == handmade_run.evaluation.metrics["accuracy"]
    after = _read_csv(run / "test_predictions.csv")
    assert [r["path"] for r in after] == [r["path"] for r in before]
    columns = [k for k in before[0] if k.startswith("p_")]
    np.testing.assert_allclose(
        [[float(r[c]) for c in columns] for r in after], [[float(r[c]) for c in columns] for r in before], atol=1e-5
    )


def test_cli_features_then_predict(small_data: Path, tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    code = main(["features", str(small_data), *HANDMADE_CLI, "--classifier", "knn", "--output", str(out), "--name", "cli"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    run = out / "cli"
    assert f"run folder: {run}" in printed and "classifier: knn" in printed and "test accuracy" in printed
    assert json.loads((run / "best.json").read_text())["features"]["classifier"] == "knn"

    code = main(["predict", str(run), str(small_data / "b"), "--device", "cpu"])
    assert code == 0, capsys.readouterr()
    rows = _read_csv(run / "predictions.csv")
    assert len(rows) == 12 and {Path(r["source"]).parent.name for r in rows} == {"b"}
    # the images of b, most of them seen in training: (nearly) all come out as b
    assert sum(r["label"] == "b" for r in rows) >= 11


@pytest.mark.parametrize("kind", ["svm", "ridge"])
def test_each_classifier_gives_a_run_that_predicts(kind: str, small_data: Path, tmp_path: Path, own_cache: Path) -> None:
    result = deepfit.fit_features(small_data, classifier=kind, output=str(tmp_path), name=kind, **HANDMADE)
    assert result.run_dir is not None and result.classifier is not None and result.classifier.kind == kind
    rows = _read_csv(result.run_dir / "test_predictions.csv")
    labels = [p.label for p in deepfit.load(result.run_dir, device="cpu").predict([r["path"] for r in rows])]
    assert labels == [r["predicted"] for r in rows]
    x_test, _ = result.features.split("test")
    np.testing.assert_array_equal(
        [result.features.classes.index(r["predicted"]) for r in rows], result.classifier.estimator.predict(x_test)
    )


def test_no_split_to_score_on_still_saves_a_usable_run(
    small_data: Path, tmp_path: Path, own_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = deepfit.fit_features(
        small_data, classifier="logreg", val_fraction=0.0, test_fraction=0.0, output=str(tmp_path), name="all", **HANDMADE
    )
    assert result.evaluation is None and result.val_accuracy is None and result.run_dir is not None
    assert result.features.splits == ["train"] * 36
    assert any("no test or validation images" in r.getMessage() for r in caplog.records)
    assert not (result.run_dir / "report.html").exists()
    predictions = deepfit.load(result.run_dir, device="cpu").predict([small_data / "c" / "img0.png"])
    assert predictions[0].label == "c"


# --- a real network: pre-logits and a named layer ------------------------------------------------


def test_real_pre_logits_svm_scores_well_on_val_and_says_val_was_not_tuned_on(real: RealFeatures) -> None:
    fit = real.fit
    assert fit.run_dir is not None and fit.evaluation is not None and fit.classifier is not None
    assert fit.features.features.shape == (40, 1280) and fit.features.layer == "pre_logits"
    assert fit.classifier.folds == 5 and len(fit.classifier.candidates) == len(C_GRID)
    assert fit.classifier.estimator["scale"].n_samples_seen_ == 24  # fitted and tuned on the 24 training photos only
    # no test split: evaluation falls back to val, which took no part in fitting or tuning
    assert fit.evaluation.split == "val"
    assert fit.evaluation.metrics["accuracy"] >= 0.8
    assert fit.val_accuracy == pytest.approx(fit.evaluation.metrics["accuracy"])
    html = (fit.run_dir / "report.html").read_text()
    assert "It was not used to fit or tune this model" in html
    assert "optimistic" not in html
    assert (fit.run_dir / "val_predictions.csv").is_file()
    x_val, _ = fit.features.split("val")
    with torch.inference_mode():
        head = fit.classifier.head(torch.from_numpy(x_val)).argmax(1).numpy()
    np.testing.assert_array_equal(head, fit.classifier.estimator.predict(x_val))


def test_real_named_layer_gives_other_features(real: RealFeatures) -> None:
    layer, pre = real.layer, real.fit.features
    assert layer.layer == "blocks.3"
    assert layer.features.shape[0] == 40 and layer.features.shape[1] not in (0, pre.features.shape[1])
    assert layer.reused == 0  # same images and weights, another layer: nothing served from the cache
    assert layer.paths == pre.paths and np.array_equal(layer.labels, pre.labels) and layer.splits == pre.splits
    assert np.isfinite(layer.features).all() and np.ptp(layer.features, axis=0).max() > 0


def test_real_run_reevaluates_from_images(real: RealFeatures, tmp_path: Path) -> None:
    from deepfit.workflows.evaluate import evaluate

    assert real.fit.run_dir is not None and real.fit.evaluation is not None
    run = Path(shutil.copytree(real.fit.run_dir, tmp_path / "run"))
    before = _read_csv(run / "val_predictions.csv")
    evaluation = evaluate(run, device="cpu")
    assert evaluation.split == "val"
    assert evaluation.metrics["accuracy"] == real.fit.evaluation.metrics["accuracy"]
    after = _read_csv(run / "val_predictions.csv")
    assert [r["path"] for r in after] == [r["path"] for r in before]
    np.testing.assert_allclose(
        [float(r["p_bees"]) for r in after], [float(r["p_bees"]) for r in before], atol=1e-3
    )
    labels = [p.label for p in deepfit.load(run, device="cpu").predict([r["path"] for r in before])]
    assert labels == [r["predicted"] for r in before]


def test_real_unknown_layer_lists_the_layer_names(real: RealFeatures, small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as info:
        deepfit.extract_features(small_data, LITE0, weights=str(real.weights), layer="block.3", workers=0, device="cpu")
    message = str(info.value)
    assert "'block.3'" in message and "did you mean" in message and "blocks.3" in message
    assert "available layers" in message and "conv_stem" in message and "blocks.0" in message

    code = main(["features", str(small_data), "--model", LITE0, "--weights", str(real.weights), "--layer", "nope",
                 "--output", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and "'nope'" in err and "available layers" in err and "conv_stem" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_real_gpu_extraction_in_its_precision_agrees_with_the_cpu(
    real: RealFeatures, hymenoptera_slice: Path, own_cache: Path
) -> None:
    gpu = deepfit.extract_features(hymenoptera_slice, LITE0, weights=str(real.weights), device="cuda")
    cpu = real.fit.features
    assert gpu.reused == 0 and gpu.paths == cpu.paths and gpu.features.dtype == np.float32
    a, b = gpu.features.astype(np.float64), cpu.features.astype(np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.97


# --- export --------------------------------------------------------------------------------------


def test_feature_set_is_an_array_with_splits(exported: tuple[FeatureSet, Path, Path], small_data: Path) -> None:
    fs = exported[0]
    assert len(fs) == 36 and fs.classes == ["a", "b", "c"]
    array = np.asarray(fs)
    assert array.shape == fs.features.shape and array.dtype == np.float32 and array.shape[0] == 36
    assert np.asarray(fs, dtype=np.float64).dtype == np.float64
    mine = dataclasses.replace(fs, features=fs.features.copy())
    copied = np.array(mine)  # a copy: the caller may change it
    copied += 1.0
    np.testing.assert_array_equal(mine.features, fs.features)
    x_train, y_train = fs.split("train")
    assert x_train.shape == (24, array.shape[1]) and y_train.shape == (24,)
    assert np.bincount(y_train).tolist() == [8, 8, 8]
    assert len(fs.paths_of("val")) == 6 and len(fs.paths_of("test")) == 6
    assert not set(fs.paths_of("train")) & set(fs.paths_of("test"))
    # rows are the files' own: row i is the features of paths[i], labelled by its folder
    assert all(fs.classes[label] == path.parent.name for path, label in zip(fs.paths, fs.labels, strict=True))
    pixels = np.array(Image.open(fs.paths[5]).convert("RGB"))  # 32 px already: preprocessing leaves it as is
    one = HandmadeFeatures()(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255)
    np.testing.assert_allclose(array[5], one[0].numpy(), atol=1e-5)


def test_export_npz_agrees_with_the_feature_set(exported: tuple[FeatureSet, Path, Path]) -> None:
    fs, npz, _ = exported
    with np.load(npz) as data:
        np.testing.assert_array_equal(data["features"], fs.features)
        assert data["paths"].tolist() == [str(p) for p in fs.paths]
        assert data["labels"].tolist() == [fs.classes[i] for i in fs.labels]
        np.testing.assert_array_equal(data["label_index"], fs.labels)
        assert data["splits"].tolist() == fs.splits
        assert data["classes"].tolist() == fs.classes
        meta = json.loads(str(data["meta"]))
    assert meta["model"] == "handmade" and meta["layer"] == "pre_logits" and meta["preprocessing"]["image_size"] == 32


def test_export_parquet_agrees_with_the_feature_set(exported: tuple[FeatureSet, Path, Path]) -> None:
    import pyarrow.parquet as pq

    fs, _, parquet = exported
    table = pq.read_table(parquet)
    assert table.num_rows == len(fs)
    assert table.column("path").to_pylist() == [str(p) for p in fs.paths]
    assert table.column("label").to_pylist() == [fs.classes[i] for i in fs.labels]
    assert table.column("split").to_pylist() == fs.splits
    feature_columns = [name for name in table.column_names if name not in ("path", "label", "split")]
    assert len(feature_columns) == fs.features.shape[1]
    matrix = np.stack([table.column(name).to_numpy() for name in feature_columns], axis=1)
    np.testing.assert_array_equal(matrix, fs.features)
    assert json.loads(table.schema.metadata[b"deepfit"])["classes"] == fs.classes


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_export_never_overwrites(suffix: str, small_data: Path, tmp_path: Path, own_cache: Path) -> None:
    target = tmp_path / f"mine{suffix}"
    target.write_bytes(b"the user's own file")
    with pytest.raises(ConfigError, match="already exists"):
        deepfit.extract_features(small_data, export=str(target), **HANDMADE)
    with pytest.raises(ConfigError, match="already exists"):
        deepfit.fit_features(small_data, export=str(target), classifier="svm", output=str(tmp_path / "runs"), **HANDMADE)
    assert target.read_bytes() == b"the user's own file"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_export_only_makes_no_run_folder(small_data: Path, tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    result = deepfit.fit_features(small_data, export=str(tmp_path / "a.npz"), output=str(out), **HANDMADE)
    assert result.run_dir is None and result.classifier is None and result.evaluation is None
    assert (tmp_path / "a.npz").is_file()

    code = main(["features", str(small_data), *HANDMADE_CLI, "--export", str(tmp_path / "b.parquet"), "--output", str(out)])
    assert code == 0
    assert "features written to" in capsys.readouterr().out
    assert (tmp_path / "b.parquet").is_file()
    assert not out.exists() or not any(out.iterdir())


def test_export_to_another_format_is_refused(small_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.npz or \.parquet"):
        deepfit.extract_features(small_data, export=str(tmp_path / "feats.csv"), **HANDMADE)
    assert not (tmp_path / "feats.csv").exists()


# --- the cache -----------------------------------------------------------------------------------


def test_cache_reuses_and_never_serves_a_changed_file(tmp_path: Path, own_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 6, size=32)
    caplog.set_level(logging.INFO, logger="deepfit")

    first = deepfit.extract_features(data, **HANDMADE)
    assert first.reused == 0 and len(first) == 12
    assert list(own_cache.glob("features/*/shard-*.npz"))

    caplog.clear()
    second = deepfit.extract_features(data, **HANDMADE)
    assert second.reused == 12
    np.testing.assert_array_equal(second.features, first.features)
    assert any("12 images" in m and "all reused" in m for m in _feature_messages(caplog))

    # a second classifier on the same data extracts nothing
    caplog.clear()
    fitted = deepfit.fit_features(data, classifier="ridge", output=str(tmp_path / "runs"), **HANDMADE)
    assert fitted.features.reused == 12 and fitted.run_dir is not None
    assert any("all reused" in m for m in _feature_messages(caplog))

    # overwrite one image with other content, keeping its size class and its modification time
    changed = data / "a" / "img2.png"
    row = first.paths.index(changed)
    stat = changed.stat()
    shape_image(1, 99, 32).save(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caplog.clear()
    third = deepfit.extract_features(data, **HANDMADE)
    assert third.reused == 11
    assert any("11 reused from the cache, 1 extracted" in m for m in _feature_messages(caplog))
    assert not np.allclose(third.features[row], first.features[row])
    others = [i for i in range(12) if i != row]
    np.testing.assert_array_equal(third.features[others], first.features[others])

    # no cache: everything extracted, the same numbers
    uncached = deepfit.extract_features(data, cache=False, **HANDMADE)
    assert uncached.reused == 0
    np.testing.assert_allclose(uncached.features, third.features, atol=1e-6)

    # other preprocessing (image size) is another key: nothing reused
    bigger = deepfit.extract_features(data, **{**HANDMADE, "image_size": 40})
    assert bigger.reused == 0 and bigger.features.shape[1] != third.features.shape[1]


def test_damaged_cache_file_is_ignored(tmp_path: Path, own_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 4, size=32)
    first = deepfit.extract_features(data, **HANDMADE)
    (shard,) = own_cache.glob("features/*/shard-*.npz")
    shard.write_bytes(b"not a zip file")
    again = deepfit.extract_features(data, **HANDMADE)
    assert again.reused == 0
    np.testing.assert_allclose(again.features, first.features, atol=1e-6)
    assert any("ignoring unreadable feature cache file" in r.getMessage() for r in caplog.records)


# --- extraction: batched, streamed, inference mode, precision -----------------------------------


@dataclass
class _Call:
    batch: int
    decoded: int  # images decoded so far, when the network was called
    inference: bool
    autocast: bool
    dtype: torch.dtype


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[_Call]]:
    """Every call of the hand-made network, with how many images had been decoded by then."""
    from deepfit.modalities.image import store as images

    calls: list[_Call] = []
    decoded = [0]
    original_forward, original_getitem = HandmadeFeatures.forward, images._DecodeDataset.__getitem__

    def forward(self: HandmadeFeatures, x: torch.Tensor) -> torch.Tensor:
        calls.append(_Call(x.shape[0], decoded[0], torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"),
                           torch.get_autocast_dtype("cpu")))
        return original_forward(self, x)

    def getitem(self: images._DecodeDataset, i: int) -> tuple:
        decoded[0] += 1
        return original_getitem(self, i)

    monkeypatch.setattr(HandmadeFeatures, "forward", forward)
    monkeypatch.setattr(images._DecodeDataset, "__getitem__", getitem)
    yield calls


def test_extraction_streams_batches_under_inference_mode(small_data: Path, own_cache: Path, recorded: list[_Call]) -> None:
    fs = deepfit.extract_features(small_data, batch_size=8, cache=False, **HANDMADE)
    assert [c.batch for c in recorded] == [8, 8, 8, 8, 4]
    # each batch is decoded just before its forward pass: never the whole set at once
    assert [c.decoded for c in recorded] == [8, 16, 24, 32, 36]
    assert all(c.inference for c in recorded)
    assert all(not c.autocast for c in recorded)  # fp32 on CPU
    assert len(fs) == 36 and fs.features.dtype == np.float32


def test_extraction_uses_the_preferred_precision_and_keys_the_cache_by_it(
    small_data: Path, own_cache: Path, recorded: list[_Call], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepfit.workflows import extraction as features

    fp32 = deepfit.extract_features(small_data, batch_size=64, **HANDMADE)
    assert fp32.reused == 0 and not recorded[-1].autocast
    # as on a GPU whose preferred precision is bf16
    monkeypatch.setattr(features, "resolve_precision", lambda _p, _d: "bf16")
    recorded.clear()
    bf16 = deepfit.extract_features(small_data, batch_size=64, **HANDMADE)
    assert bf16.reused == 0  # features of another precision are never served
    assert recorded and all(c.autocast and c.dtype == torch.bfloat16 for c in recorded)
    assert bf16.features.dtype == np.float32


# --- bad input -----------------------------------------------------------------------------------


def test_network_without_weights_is_refused(small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--weights") as info:
        deepfit.fit_features(small_data, "resnet18", classifier="svm", output=str(tmp_path / "runs"), workers=0)
    assert "--pretrained" in str(info.value)
    assert main(["features", str(small_data), "--model", "resnet18", "--output", str(tmp_path / "runs")]) == 2
    assert "--weights" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_handmade_features_have_no_layers(small_data: Path) -> None:
    with pytest.raises(ConfigError, match="no layers"):
        deepfit.extract_features(small_data, layer="blocks.3", **HANDMADE)
    with pytest.raises(ConfigError, match="leave out --weights, --model-args"):
        deepfit.extract_features(small_data, weights="w.safetensors", model_args={"depth": 2}, **HANDMADE)


def test_export_clash_is_found_before_any_extraction(
    small_data: Path, tmp_path: Path, own_cache: Path, recorded: list[_Call]
) -> None:
    target = tmp_path / "mine.npz"
    target.write_bytes(b"keep")
    with pytest.raises(ConfigError, match="already exists"):
        deepfit.extract_features(small_data, export=str(target), **HANDMADE)
    assert recorded == []  # the network never ran


def test_misspelt_split_name_is_an_error(exported: tuple[FeatureSet, Path, Path]) -> None:
    with pytest.raises(ConfigError, match="no split 'tset'"):
        exported[0].split("tset")


@pytest.mark.parametrize(("typo", "meant"), [("svn", "svm"), ("logreg2", "logreg"), ("rigde", "ridge"), ("knm", "knn")])
def test_unknown_classifier_suggests_the_nearest(typo: str, meant: str, small_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
        FeaturesConfig(classifier=typo)
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
        deepfit.fit_features(small_data, classifier=typo, **HANDMADE)
    assert main(["features", str(small_data), *HANDMADE_CLI, "--classifier", typo]) == 2
    assert f"did you mean '{meant}'" in capsys.readouterr().err


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    return path


def test_one_class_in_the_training_split_names_the_cause(tmp_path: Path, own_cache: Path) -> None:
    # the only training image of b cannot be read: the training split holds class a alone
    data = tmp_path / "data"
    write_class_folders(data / "train", ["a"], 20, size=32)
    _corrupt(data / "train" / "b" / "only.png")
    write_class_folders(data / "val", ["a", "b"], 1, size=32, first=50)
    with pytest.raises(DataError, match="single class") as info:
        deepfit.fit_features(data, classifier="svm", output=str(tmp_path / "runs"), **HANDMADE)
    assert "(a)" in str(info.value) and "at least two classes" in str(info.value)
    assert not (tmp_path / "runs").exists()

    with pytest.raises(DataError, match="single class"):
        fit_classifier("logreg", np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32), np.zeros(10, int), ["a", "b"])


def test_identical_features_name_the_cause(tmp_path: Path, own_cache: Path) -> None:
    # every image of every class the same flat grey (at different sizes, so the files differ)
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (32 + 8 * i, 32 + 8 * i), (128, 128, 128)).save(data / label / f"{i}.png")
    with pytest.raises(DataError, match="identical") as info:
        deepfit.fit_features(data, classifier="logreg", output=str(tmp_path / "runs"), **HANDMADE)
    assert "no classifier can tell the images apart" in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_corrupt_image_is_skipped_with_a_warning(tmp_path: Path, own_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    write_class_folders(data / "train", ["a", "b"], 10, size=32)
    write_class_folders(data / "test", ["a", "b"], 4, size=32, first=50)
    bad = _corrupt(data / "test" / "b" / "broken.png")
    result = deepfit.fit_features(data, classifier="svm", output=str(tmp_path / "runs"), name="run", **HANDMADE)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in m for m in warnings)

    assert len(result.features) == 28 and bad.resolve() not in result.features.paths
    assert [b.path.name for b in result.features.skipped] == ["broken.png"]
    run = result.run_dir
    assert run is not None
    assert "broken.png" not in (run / "split.csv").read_text()
    assert "broken.png" in (run / "skipped_files.csv").read_text()
    assert result.evaluation is not None and result.evaluation.split == "test"
    assert len(_read_csv(run / "test_predictions.csv")) == 8
    # the report says which test image it could not score
    html = (run / "report.html").read_text()
    assert "unreadable images were left out" in html and "broken.png" in html
