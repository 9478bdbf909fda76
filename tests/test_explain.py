"""Explanations of image classifiers: the pointing game, the sanity check of Adebayo et al. for every method offered,
the layer chosen (CNNs and vision transformers), and `deepfit explain` / `model.explain` with their bad inputs.

The pointing game's data: noise images where only a small solid patch at a random place decides the class (red or
blue); a network that learned the task must look at the patch, so the map's maximum must fall inside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from deepfit import ImageClassifier
from deepfit.cli import main
from deepfit.explain.cam import METHODS

SIZE, PATCH = 32, 8


def _patch_images(root: Path, counts: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for name, color in (("red", (230, 30, 30)), ("blue", (30, 30, 230))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                y, x = rng.integers(0, SIZE - PATCH + 1, 2)
                image[y : y + PATCH, x : x + PATCH] = color
                Image.fromarray(image).save(folder / f"{i}_{y}_{x}.png")  # the patch's corner in the name


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory: pytest.TempPathFactory) -> ImageClassifier:
    root = tmp_path_factory.mktemp("patches")
    _patch_images(root, {"train": 150, "val": 30, "test": 30}, seed=0)
    clf = ImageClassifier(output=str(root.parent / "runs"), name="patches", model="cnn", model_args={"depth": 3, "width": 16},
                          image_size=SIZE, epochs=6, batch_size=32, lr=0.01, workers=0).fit(root)
    clf.data_root = root  # type: ignore[attr-defined]
    return clf


def _in_patch(source: str, heat: np.ndarray) -> bool:
    _, y, x = Path(source).stem.split("_")
    row, column = np.unravel_index(int(heat.argmax()), heat.shape)
    return int(y) <= row < int(y) + PATCH and int(x) <= column < int(x) + PATCH


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_points_at_the_patch_and_fails_with_random_weights(patch_run: ImageClassifier, method: str) -> None:
    tests = sorted((patch_run.data_root / "test").rglob("*.png"))  # type: ignore[attr-defined]
    made = patch_run.explain(tests, method=method)
    assert len(made) == len(tests) and {e.method for e in made} == {method}
    assert all(e.heat.shape == (SIZE, SIZE) and e.picture.dtype == np.uint8 for e in made)
    hits = sum(_in_patch(e.source, e.heat) for e in made)
    assert hits >= 0.9 * len(made), f"{method}: the map's maximum is in the patch for only {hits}/{len(made)} images"

    # Adebayo et al. (2018): the same explanation of a network with random weights must be a different map
    model = patch_run.predictor.model
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        torch.manual_seed(1)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        shuffled = [patch_run.explain(e.source, method=method, layer=e.layer, target=e.target)[0] for e in made[:20]]
    finally:
        model.load_state_dict(trained)
    rho = np.mean([np.nan_to_num(spearmanr(a.heat.ravel(), b.heat.ravel())[0]) for a, b in zip(made, shuffled, strict=False)])
    assert rho < 0.5, f"{method} barely changes when the weights are randomised (rank correlation {rho:.2f})"


def test_explain_cli_writes_pictures_and_records_method_and_layer(patch_run: ImageClassifier, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = patch_run.data_root / "test" / "red"  # type: ignore[attr-defined]
    out = tmp_path / "why"
    assert main(["explain", str(patch_run.run_dir), str(folder), "--class", "blue", "--output", str(out)]) == 0
    records = json.loads((out / "explanations.json").read_text())
    assert len(records) == 30 and {r["target"] for r in records} == {"blue"} and {r["predicted"] for r in records} == {"red"}
    assert {r["method"] for r in records} == {"gradcam"} and {r["layer"] for r in records} == {"features"}
    assert all((out / r["picture"]).is_file() for r in records)
    assert "30 explanations (gradcam on layer features) written to" in capsys.readouterr().out
    # never overwritten: the same --output again is an error, the default folder gets a new name each time
    assert main(["explain", str(patch_run.run_dir), str(folder), "--output", str(out)]) == 2
    assert "does not overwrite" in capsys.readouterr().err
    one = next(folder.iterdir())
    for expected in ("explanations", "explanations-2"):
        assert main(["explain", str(patch_run.run_dir), str(one)]) == 0
        assert (patch_run.run_dir / expected / "explanations.json").is_file()


@pytest.mark.parametrize(("flags", "message"), [
    (["--layer", "nope"], "--layer nope: the model cnn has no such layer"),
    (["--method", "occlusion"], "--method occlusion: an image classifier is explained by gradcam"),
    (["--class", "green"], "--class green: the model's classes are"),
    (["--max-objects", "0"], "--max-objects must be at least 1"),
])
def test_explain_bad_options_are_one_line_errors(patch_run: ImageClassifier, tmp_path: Path, flags: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    one = next((patch_run.data_root / "test" / "red").iterdir())  # type: ignore[attr-defined]
    assert main(["explain", str(patch_run.run_dir), str(one), "--output", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if flags[0] == "--layer":
        assert "layers that can, last first: features" in err
    assert not (tmp_path / "o" / "explanations.json").exists()


def test_unreadable_input_is_skipped_with_a_warning(patch_run: ImageClassifier, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    one = next((patch_run.data_root / "test" / "red").iterdir())  # type: ignore[attr-defined]
    assert main(["explain", str(patch_run.run_dir), str(broken), str(one), "--output", str(tmp_path / "o")]) == 0
    assert "skipped" in capsys.readouterr().err and len(json.loads((tmp_path / "o" / "explanations.json").read_text())) == 1
    assert main(["explain", str(patch_run.run_dir), str(broken), "--output", str(tmp_path / "p")]) == 2
    assert "none of the 1 inputs could be explained" in capsys.readouterr().err


def test_vision_transformer_is_explained_from_its_last_attention_input() -> None:
    """A ViT pooled on its class token: the last blocks' outputs reach the class token only, so the default layer is
    the norm before the last attention, its tokens (after the class token) reshaped to the 14 x 14 patch grid."""
    import timm

    from deepfit.explain.cam import ClassScore, heat_maps
    from deepfit.explain.layers import choose_layer, find_layers

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    x = torch.randn(1, 3, 224, 224)
    layer = choose_layer(find_layers(model, x, lambda out: out[:, 0].sum()), None, "vit")
    assert (layer.name, layer.grid, layer.extra_tokens) == ("blocks.11.norm1", (14, 14), 1)
    heat = heat_maps(model, x, [ClassScore(0)], layer, "gradcam")
    assert heat.shape == (1, 224, 224) and heat.min() >= 0 and heat.max() <= 1
