"""Options: a misspelt or impossible one is an error that names the right one, in the API and the CLI alike,
and never silently falls back to a default."""

from __future__ import annotations

from pathlib import Path

import pytest

import deepfit
from deepfit.cli import main
from deepfit.config import TrainConfig, parse_model_args
from deepfit.errors import ConfigError
from deepfit.models.factory import create_model
from deepfit.presets import apply_preset


def test_unknown_api_option_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown option 'lerning_rate'"):
        deepfit.ImageClassifier("cnn", lerning_rate=1)


def test_misspelt_api_option_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'epoch' \(did you mean 'epochs'\?\)"):
        deepfit.ImageClassifier("cnn", epoch=3)


def test_fit_options_are_checked_too(shapes_data: Path) -> None:
    clf = deepfit.ImageClassifier("cnn")
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        clf.fit(shapes_data, batchsize=8)
    assert clf.run_dir is None


@pytest.mark.parametrize(
    ("flag", "suggestion"),
    [("--epoch", "--epochs"), ("--learning-rate", "--lr"), ("--imagesize", "--image-size")],
)
def test_misspelt_cli_flag_exits_2_with_a_suggestion(
    shapes_data: Path, capsys: pytest.CaptureFixture[str], flag: str, suggestion: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", str(shapes_data), flag, "3"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag}: did you mean {suggestion}?" in err
    assert err.count("\n") <= 2  # a short message, not the whole usage


def test_cli_flags_are_not_abbreviated(shapes_data: Path) -> None:
    """argparse would take --epo for --epochs; deepfit refuses, so a typo never means something else."""
    with pytest.raises(SystemExit) as info:
        main(["train", str(shapes_data), "--epo", "3"])
    assert info.value.code == 2


def test_bad_choice_suggests_the_nearest_value(shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(shapes_data), "--augment", "strnog", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --augment must be one of none, light, strong")
    assert "did you mean 'strong'" in err[0]
    assert list(tmp_path.iterdir()) == []  # refused before any run folder was made
    with pytest.raises(ConfigError, match="'strong'"):
        deepfit.ImageClassifier("cnn", augment="strnog")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "sum to less than 1"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in"),
        ({"lr": -1.0}, "lr must be greater than 0"),
        ({"pretrained": True, "weights": "w.safetensors"}, "not both"),
        ({"optimizer": "adam"}, "did you mean 'adamw'"),
    ],
)
def test_impossible_values_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_unknown_model_suggests_close_names_once() -> None:
    with pytest.raises(ConfigError) as info:
        create_model("resnt18", 2)
    message = str(info.value)
    assert "unknown model 'resnt18'" in message and "did you mean resnet18" in message
    suggested = message.split("did you mean ")[1].rstrip("?)").split(", ")
    assert len(suggested) == len(set(suggested))  # resnet18 is in timm and torchvision: named once
    with pytest.raises(ConfigError, match=r"did you mean cnn\?"):
        create_model("cnnn", 2)
    with pytest.raises(ConfigError, match="torchvision has no model 'resnt18'.*resnet18"):
        create_model("tv/resnt18", 2)


def test_unknown_model_through_the_cli(shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(shapes_data), "--model", "fastnt", "--output", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown model 'fastnt'" in errors[0] and "fastnet" in errors[0]


def test_misspelt_model_arg_suggests_the_right_one(shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"model 'cnn' has no option 'dpth' \(did you mean 'depth'\?\)"):
        create_model("cnn", 2, model_args={"dpth": 2})
    assert main(["train", str(shapes_data), "--model", "cnn", "--model-args", "dpth=2", "--output", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did you mean 'depth'" in errors[0]


def test_model_args_parsing() -> None:
    assert parse_model_args("depth=4,width=32,activation=gelu,batch_norm=false,widths=[8,16]") == {
        "depth": 4, "width": 32, "activation": "gelu", "batch_norm": False, "widths": [8, 16],
    }
    assert parse_model_args("") == {}
    with pytest.raises(ConfigError, match="key=value"):
        parse_model_args("depth")


def test_preset_values_yield_to_explicit_options() -> None:
    config = apply_preset("quickstart", {"epochs": 2})
    assert config.epochs == 2 and config.model == "cnn" and config.image_size == 16
    with pytest.raises(ConfigError, match="did you mean 'cifar'"):
        apply_preset("cifra", {})


def test_config_round_trips_through_a_dict() -> None:
    config = TrainConfig(model="cnn", model_args={"depth": 1}, epochs=3, lr=0.1)
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config
    assert again.model_args is not config.model_args  # no shared mutable default
    assert TrainConfig().model_args is not TrainConfig().model_args
