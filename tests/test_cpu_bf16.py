"""bf16 autocast on the CPU, which `--precision auto` picks on CPUs with native bf16 (engine/device.py): every task
trains, evaluates and predicts in it. torchvision's CPU detection kernels have no bf16 version (tasks/detect/roi.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import draw_rectangles
from deepfit import ObjectDetector, SemanticSegmenter
from deepfit.engine import device


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DEEPFIT_CPU_BF16", "1")  # as on a CPU with avx512_bf16
    device.cpu_has_native_bf16.cache_clear()
    yield
    device.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("task", ["detect", "segment-instances", "segment"])
def test_every_task_trains_evaluates_and_predicts_in_bf16_on_a_cpu_that_has_it(
    task: str, native_bf16: None, squares: Path, weights_dir: Path, tmp_path: Path
) -> None:
    weights = str(weights_dir / "mobilenet_v2.safetensors")
    common = dict(weights=weights, epochs=1, batch_size=4, workers=0, output=str(tmp_path), name=task)
    if task == "segment":
        data = draw_rectangles(tmp_path / "rect", {"train": 8, "val": 2})
        learner = SemanticSegmenter(image_size=48, **common).fit(data)
    else:
        data = squares
        learner = ObjectDetector(task=task, image_size=96, **common).fit(data)
    assert learner.run_dir is not None
    assert json.loads((learner.run_dir / "config.json").read_text())["precision"] == "bf16"
    metrics = learner.evaluate()
    assert metrics  # scored: no dtype error in validation, post-processing or the report
    image = next(p for p in sorted(Path(data).rglob("*.png")) if "mask" not in str(p))
    assert learner.predict(image) is not None
