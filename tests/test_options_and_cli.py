"""Options and the CLI around them: values checked in Python and on the command line, readable argparse errors,
help that states each default once, --quiet/--verbose, and `deepfit models`."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import deepfit
from deepfit.cli import main
from deepfit.config import FeaturesConfig, TrainConfig
from deepfit.errors import ConfigError
from deepfit.log import logger, setup_logging


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting exit code 2 (from argparse or from deepfit); its stderr, which must be short."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 2, err
    return err


# --- item 3: every numeric option checked, in Python (keyword) and on the CLI (flag) ---------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_size": -5}, "image_size must be at least 16, got -5"),
        ({"image_size": 0}, "image_size must be at least 16"),
        ({"image_size": 7}, "image_size must be at least 16"),
        ({"workers": -1}, "workers must be at least 0"),
        ({"lr": 0}, "lr must be greater than 0"),
        ({"weight_decay": -0.1}, "weight_decay must be at least 0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"warmup_epochs": -1}, "warmup_epochs must be at least 0"),
        ({"head_epochs": -1}, "head_epochs must be at least 0"),
        ({"backbone_lr_scale": -1}, "backbone_lr_scale must be at least 0"),
        ({"tile_size": 8}, "tile_size must be at least 32"),
        ({"accumulate": 0}, "accumulate must be at least 1"),
        ({"save_every_steps": -1}, "save_every_steps must be at least 0"),
        ({"early_stopping": -2}, "early_stopping must be at least 0"),
        ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ({"seed": -1}, "seed must be at least 0"),
    ],
)
def test_train_values_out_of_range_name_the_keyword_and_the_range(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message) as info:
        TrainConfig(**options)
    assert "\n" not in str(info.value) and "--" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": "abc"}, "lr must be a number or 'find', got 'abc' (str)"),
        ({"epochs": 2.5}, "epochs must be a whole number, got 2.5 (float)"),
        ({"epochs": "3"}, "epochs must be a whole number, got '3' (str)"),
        ({"hflip": 1}, "hflip must be true or false, got 1 (int)"),
        ({"augment": 3}, "augment must be text, got 3 (int)"),
    ],
)
def test_wrong_types_from_python_name_the_keyword_and_the_type(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        deepfit.ImageClassifier("cnn", **options)
    assert str(info.value) == message


def test_ints_are_accepted_for_float_options() -> None:
    config = TrainConfig(lr=1, momentum=0, weight_decay=0, warmup_epochs=2)
    assert config.lr == 1 and config.warmup_epochs == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [({"cv_folds": 1}, "cv_folds must be at least 2"), ({"image_size": 4}, "image_size must be at least 16"),
     ({"workers": -1}, "workers must be at least 0"), ({"batch_size": "8"}, "batch_size must be a whole number")],
)
def test_features_values_are_checked(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        FeaturesConfig(**options)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-size", "-5"], "error: --image-size must be at least 16, got -5"),
        (["--image-size", "0"], "error: --image-size must be at least 16, got 0"),
        (["--lr", "-1"], "error: --lr must be greater than 0, got -1.0"),
        (["--momentum", "1"], "error: --momentum must be in [0, 1), got 1.0"),
        (["--workers", "-3"], "error: --workers must be at least 0, got -3"),
    ],
)
def test_cli_values_out_of_range_are_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    err = _fail(["train", str(tmp_path), "--output", str(tmp_path / "runs"), *flags], capsys)
    assert err.strip() == message


def test_features_cli_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _fail(["features", str(tmp_path), "--cv-folds", "1"], capsys).strip() == "error: --cv-folds must be at least 2, got 1"


# --- item 13: CLI errors without internals ----------------------------------------------------------------


def test_unknown_task_lists_the_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fail(["train", str(tmp_path), "--task", "detct"], capsys)
    assert "unknown task 'detct' (did you mean 'detect'?)" in err
    for task in ("classify", "detect", "segment", "segment-instances"):
        assert task in err
    assert "Task" not in err and "<" not in err  # no Python class names or reprs


def test_model_args_error_is_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fail(["train", str(tmp_path), "--model-args", "depth"], capsys)
    assert "--model-args: expects key=value,..." in err and "'depth'" in err
    assert "parse_model_args" not in err


def test_a_suggestion_must_be_close(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fail(["train", str(tmp_path), "--quite"], capsys)
    assert "--quite: did you mean --quiet?" in err
    err = _fail(["train", str(tmp_path), "--qzx"], capsys)
    assert "--qzx: no such option" in err and "did you mean" not in err


@pytest.mark.parametrize("command", [["train", "x"], ["evaluate", "x"], ["models"], ["data", "check", "x"]])
def test_the_hint_names_the_subcommand_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = _fail([*command, "--epoch", "2"], capsys)
    assert f"see `deepfit {' '.join(c for c in command if c != 'x')} --help`" in err


def test_evaluate_a_missing_folder_says_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fail(["evaluate", str(tmp_path / "missing")], capsys)
    assert "not found" in err and "config.json" not in err
    err = _fail(["evaluate", str(tmp_path)], capsys)  # a folder, but not a run's
    assert "is not a deepfit run folder" in err and "not found" not in err


# --- item 17: help -------------------------------------------------------------------------------------------


def _help(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "100000")  # one line per option, whatever the terminal
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return re.sub(r"\n {6,}(?=[^ -])", " ", capsys.readouterr().out)  # an option's help on one line, even when argparse breaks it


def test_train_help_states_each_default_once(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = _help(["train"], capsys, monkeypatch)
    assert "(default: None)" not in out
    option_lines = [line for line in out.splitlines() if line.lstrip().startswith("--")]
    assert option_lines and all(line.count("default") <= 2 for line in option_lines)
    batch = next(line for line in option_lines if line.lstrip().startswith("--batch-size"))
    for task in deepfit.registry.all_tasks():
        assert f"{task.name} {task.defaults['batch_size']}" in batch
    assert batch.count("(default") == 1
    image = next(line for line in option_lines if line.lstrip().startswith("--image-size"))
    assert "detect 512" in image and "segment 256" in image and image.count("(default") == 1
    assert "--epochs" in out and "(default: 10)" in out


def test_positional_arguments_and_description_have_help(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for command in ("evaluate", "predict"):
        out = _help([command], capsys, monkeypatch)
        line = next(line for line in out.splitlines() if line.strip().startswith("run_dir"))
        assert "run folder" in line
    out = _help([], capsys, monkeypatch)
    assert "classifiers" in out and "detectors" in out and "segmenters" in out


# --- item 19: --quiet and --verbose ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["models", "resnet18"], ["--quiet", "models", "resnet18"]])
def test_quiet_and_verbose_set_the_log_level_for_every_later_setup(command: list[str],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    try:
        for flag, level in (("--quiet", logging.WARNING), ("--verbose", logging.DEBUG)):
            argv = [*command, flag] if command[0] == "models" else ["models", "resnet18", flag]
            assert main(argv) == 0
            setup_logging()  # what every workflow calls: keeps the level the user chose
            assert logger.level == level
        assert main(["models", "resnet18"]) == 0
        assert logger.level == logging.INFO
    finally:
        setup_logging(logging.INFO, choose=True)
    capsys.readouterr()


def test_quiet_and_verbose_are_on_every_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for command in (["quickstart"], ["train"], ["features"], ["compare"], ["data", "check"], ["evaluate"], ["predict"],
                    ["models"]):
        out = _help(command, capsys, monkeypatch)
        assert "--quiet" in out and "--verbose" in out, command
    assert "not allowed with" in _fail(["models", "--quiet", "--verbose"], capsys)


# --- item 10: deepfit models ------------------------------------------------------------------------------------


def _sections(out: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    heading = ""
    for line in out.splitlines():
        if line.startswith("  "):
            sections[heading].append(line.strip())
        else:
            match = re.fullmatch(r"(.*) \((\d+)\):", line)
            assert match, line
            heading = match.group(1)
            sections[heading] = []
    return sections


def test_models_prints_one_name_a_line_as_it_is_chosen(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "resnet18"]) == 0
    sections = _sections(capsys.readouterr().out)
    assert "resnet18" in sections["timm"] and "tv/resnet18" in sections["torchvision"]
    assert "deepfit" not in sections  # no empty sections
    assert "unet:tv/resnet18" in sections["segmentation, --task segment"]
    assert "fasterrcnn:tv/resnet18" in sections["object detection, --task detect"]
    assert "maskrcnn:tv/resnet18" in sections["instance segmentation, --task segment-instances"]


def test_models_lists_detectors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "fasterrcnn"]) == 0
    sections = _sections(capsys.readouterr().out)
    assert list(sections) == ["object detection, --task detect"]
    assert "fasterrcnn_resnet50_fpn" in sections["object detection, --task detect"]
    assert "fasterrcnn:<timm model>" in sections["object detection, --task detect"]


def test_models_with_no_match_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "zzqq-no-such-model"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == "error: no model matches 'zzqq-no-such-model'"


def test_paths_are_accepted_for_text_options(tmp_path: Path) -> None:
    config = TrainConfig(output=tmp_path / "runs", weights=tmp_path / "w.safetensors")
    assert config.output == str(tmp_path / "runs") and isinstance(config.weights, str)


# --- item 26: the README's options table ------------------------------------------------------------------------


def test_readme_options_table_matches_train_help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("### Options", 1)[1].split("\n\n")[2]
    flags = set(re.findall(r"`(--[a-z-]+)", table))
    assert {"--val-fraction", "--test-fraction", "--task", "--model", "--quiet", "--verbose"} <= flags
    out = _help(["train"], capsys, monkeypatch)
    for flag in flags:
        assert re.search(rf"\s{flag}[\s,\]]", out), f"{flag} is in the README but not in `deepfit train --help`"
    rows = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in table.splitlines()[2:]}
    for task in deepfit.registry.all_tasks():  # the per-task defaults the table gives are the registry's
        assert task.defaults["model"] in rows["`--model`"]
        assert str(task.defaults["batch_size"]) in rows["`--batch-size`"]


def test_features_help_shows_its_own_defaults(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = _help(["features"], capsys, monkeypatch)
    batch = next(line for line in out.splitlines() if line.lstrip().startswith("--batch-size"))
    assert batch.endswith("(default: 64)") and "classify" not in batch
    assert "(default: None)" not in out


def test_a_closed_pipe_ends_quietly() -> None:
    """`deepfit models | head -1`: the reader is gone before deepfit writes; no traceback, the exit status of SIGPIPE."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: deepfit's first write fails with EPIPE, deterministically
    proc = subprocess.run([sys.executable, "-m", "deepfit.cli", "models", "resnet"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141
