"""`--lr find`: the range test's rate is close to the best fixed rate, saved in the run with its picture, and used."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import write_class_folders
from deepfit import ImageClassifier
from deepfit.cli import main
from deepfit.config import TrainConfig
from deepfit.errors import ConfigError

SMALL = dict(model="cnn", model_args={"depth": 2, "width": 8}, image_size=16, batch_size=16, workers=0, epochs=6)


@pytest.fixture(scope="module")
def four_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("four") / "data"
    write_class_folders(root, ["a", "b", "c", "d"], 30)
    return root


def _final_val_loss(run_dir: Path) -> float:
    return float(list(csv.DictReader((run_dir / "metrics.csv").open()))[-1]["val_loss"])


def test_the_rate_found_is_within_3x_of_the_best_fixed_rate(four_shapes: Path, tmp_path: Path) -> None:
    found = ImageClassifier(**SMALL, lr="find", output=str(tmp_path), name="find").fit(four_shapes)
    config = json.loads((found.run_dir / "config.json").read_text())
    rate = config["lr"]
    assert isinstance(rate, float) and config["lr_find"]["chosen"] == rate  # the run trained at the rate chosen
    assert config["lr_find"]["lowest_loss_at"] == pytest.approx(10 * rate)
    assert (found.run_dir / "lr_find.png").stat().st_size > 10_000
    rows = list(csv.DictReader((found.run_dir / "lr_find.csv").open()))
    assert len(rows) >= 50 and float(rows[0]["lr"]) == pytest.approx(1e-7)
    sidecar = json.loads((found.run_dir / "best.json").read_text())
    assert sidecar["config"]["lr"] == rate

    # fixed rates a factor of ~3 apart, each trained the same way; best = the lowest final validation loss
    grid = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    losses = {lr: _final_val_loss(ImageClassifier(**SMALL, lr=lr, output=str(tmp_path), name=f"lr{lr}").fit(four_shapes).run_dir)
              for lr in grid}
    best = min(losses, key=losses.get)
    assert best / 3 <= rate <= best * 3, (rate, losses)


def test_lr_find_from_the_cli_and_its_errors(shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(shapes_data), "--model", "cnn", "--model-args", "depth=2,width=8", "--image-size", "16",
                 "--epochs", "1", "--workers", "0", "--lr", "find", "--output", str(tmp_path), "--name", "f", "--no-evaluate"]) == 0
    assert (tmp_path / "f" / "lr_find.png").is_file()
    assert main(["evaluate", str(tmp_path / "f")]) == 0
    assert "Learning-rate range test" in (tmp_path / "f" / "report.html").read_text()  # the report shows the curve
    with pytest.raises(SystemExit):
        main(["train", str(shapes_data), "--lr", "fast", "--output", str(tmp_path)])
    assert "expects a number or find, got 'fast'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="lr must be a number or 'find'"):
        TrainConfig(lr="fnd")
