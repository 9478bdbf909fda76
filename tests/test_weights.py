"""Weights files: state dicts saved by common training scripts load, pickled code is refused without being
run, weights for another architecture are an error, and a classifier for other classes is replaced."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepfit.errors import WeightsError
from deepfit.models import create_model
from deepfit.models.weights import read_weights_file, strip_prefixes

ARGS = {"depth": 2, "width": 8}
EXECUTED: list[str] = []


def _record_execution() -> dict:
    EXECUTED.append("unpickled")
    return {}


class Payload:
    """Stands for any custom object in a checkpoint: unpickling it runs code (here, a harmless marker)."""

    def __reduce__(self):  # noqa: ANN204
        return (_record_execution, ())


def reference_state(num_classes: int = 3, **model_args: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    model = create_model("cnn", num_classes, model_args={**ARGS, **model_args}).model
    with torch.no_grad():  # non-trivial batch-norm statistics too, so every tensor is checked
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: torch.nn.Module, expected: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, tensor in expected.items():
        if key not in skip:
            assert torch.equal(state[key], tensor), key


@pytest.mark.parametrize("wrap", ["module-prefix", "nested-state-dict", "compiled", "compiled-ddp"])
def test_pth_state_dict_with_prefixes_loads(tmp_path: Path, wrap: str) -> None:
    state = reference_state()
    if wrap == "module-prefix":  # DataParallel / DDP
        saved: dict = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "nested-state-dict":  # a training script's checkpoint dict
        saved = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}
    elif wrap == "compiled":  # torch.compile
        saved = {f"_orig_mod.{k}": v for k, v in state.items()}
    else:  # torch.compile(DistributedDataParallel(model))
        saved = {f"_orig_mod.module.{k}": v for k, v in state.items()}
    path = tmp_path / "weights.pth"
    torch.save(saved, path)
    created = create_model("cnn", 3, weights=path, model_args=ARGS)
    assert_state_equal(created.model, state)
    assert created.pretrained_source == str(path.resolve())


def test_pickled_custom_object_is_refused_and_never_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": reference_state(), "extra": Payload()}, path)
    with pytest.raises(WeightsError) as info:
        create_model("cnn", 3, weights=path, model_args=ARGS)
    message = str(info.value)
    assert "pickled" in message and "arbitrary code" in message and str(path) in message
    assert EXECUTED == []  # the object's code did not run


def test_pth_without_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        read_weights_file(path)


def test_weights_of_another_architecture_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "fastnet.safetensors"
    save_file(create_model("fastnet", 3).model.state_dict(), str(path))
    with pytest.raises(WeightsError, match=r"does not match this architecture: \d+ missing keys .*another model"):
        create_model("cnn", 3, weights=path, model_args=ARGS)


def test_weights_of_another_width_are_an_error(tmp_path: Path) -> None:
    """Same keys, other shapes outside the classifier: not silently skipped."""
    path = tmp_path / "wide.pth"
    torch.save(reference_state(width=16), path)
    with pytest.raises(WeightsError, match=r"does not fit this architecture: features\.0\.weight \(16, 3, 3, 3\) vs \(8, 3, 3, 3\)"):
        create_model("cnn", 3, weights=path, model_args=ARGS)


def test_classifier_for_other_classes_is_replaced_and_zeroed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = reference_state(num_classes=5)
    path = tmp_path / "five.safetensors"
    save_file(state, str(path))
    caplog.set_level(logging.INFO, logger="deepfit")
    created = create_model("cnn", 3, weights=path, model_args=ARGS)
    assert_state_equal(created.model, {k: v for k, v in state.items() if not k.startswith("fc.")}
                       | {k: v for k, v in created.model.state_dict().items() if k.startswith("fc.")})
    fc = created.model.fc
    assert tuple(fc.weight.shape) == (3, 16)
    assert not fc.weight.any() and not fc.bias.any()
    messages = [r.getMessage() for r in caplog.records]
    assert any("classifier replaced" in m and "fc.weight (3, 16)" in m for m in messages)


def test_safetensors_metadata_sets_the_preprocessing(tmp_path: Path) -> None:
    path = tmp_path / "with-meta.safetensors"
    metadata = {"mean": json.dumps([0.1, 0.2, 0.3]), "std": json.dumps([0.4, 0.5, 0.6]), "image_size": "24"}
    save_file(reference_state(), str(path), metadata=metadata)
    prep = create_model("cnn", 3, weights=path, model_args=ARGS).preprocessing
    assert prep.mean == (0.1, 0.2, 0.3) and prep.std == (0.4, 0.5, 0.6) and prep.image_size == 24
    # an explicit image size still wins
    assert create_model("cnn", 3, weights=path, model_args=ARGS, image_size=20).preprocessing.image_size == 20


def test_unreadable_weights_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="weights file not found"):
        read_weights_file(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_weights_file(broken)
    whole = tmp_path / "whole.pth"
    torch.save(reference_state(), whole)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[:300])  # an interrupted download
    with pytest.raises(WeightsError, match=r"truncated\.pth is not a readable PyTorch weights file"):
        read_weights_file(truncated)


def test_strip_prefixes() -> None:
    t = torch.zeros(1)
    assert list(strip_prefixes({"module.module.a": t, "_orig_mod.module.b": t, "c.module.d": t})) == ["a", "b", "c.module.d"]
