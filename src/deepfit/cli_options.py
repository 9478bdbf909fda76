"""The CLI's options built from the configs' fields and from what the tasks declare, with their help and defaults."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from deepfit.config import TrainConfig, field_type, parse_model_args
from deepfit.errors import ConfigError

if TYPE_CHECKING:
    from deepfit.tasks.base import Option, Task


def model_args_type(text: str) -> dict[str, Any]:
    """argparse type of --model-args: its error is a readable sentence, not "invalid parse_model_args value"."""
    try:
        return parse_model_args(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"expects key=value,... (e.g. depth=4,width=32), got {text!r}") from e


def default_text(name: str, default: Any, by_task: bool = True) -> str:
    """' (default: X)' once; for an option whose default depends on the task (`by_task`: a TrainConfig field), each
    task's default from the registry; nothing when the default is None (the help says what happens then)."""
    from deepfit.registry import all_tasks

    tasks = all_tasks() if by_task else []
    per_task = {t.name: t.defaults[name] for t in tasks if name in getattr(t, "defaults", {})}
    if not per_task:
        return "" if default is None else f" (default: {default})"
    parts = [f"{task} {value}" for task, value in per_task.items()]
    if default is not None and len(per_task) < len(tasks):
        parts.append(f"other tasks {default}")
    return f" (default: {', '.join(parts)})"


def add_config_options(parser: argparse.ArgumentParser, cls: type = TrainConfig, title: str | None = None) -> None:
    """One option per config field; defaults are suppressed so only what the user typed overrides a preset."""
    group = parser.add_argument_group(title or "training options (defaults shown are used unless a --preset sets them)")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata["help"] + default_text(f.name, default if default != {} else None, cls is TrainConfig)
        kind = field_type(f, cls)
        if kind is dict:  # model_args, frontend: key=value,...
            group.add_argument(flag, type=model_args_type, default=argparse.SUPPRESS, help=help_text, metavar="K=V,...")
        elif kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            # choices are checked by TrainConfig, whose error suggests the nearest valid value
            choices, words = f.metadata.get("choices"), f.metadata.get("words", ())
            metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper() + "".join(f"|{w}" for w in words)
            parse = _number_or(kind, words) if words else kind
            group.add_argument(flag, type=parse, default=argparse.SUPPRESS, help=help_text, metavar=metavar)


def _number_or(kind: type, words: tuple[str, ...]) -> Any:
    """argparse type of a number option that also takes words (--lr 0.01 or --lr find)."""
    def parse(text: str) -> Any:
        if text.strip().lower() in words:
            return text.strip().lower()
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a number or {' or '.join(words)}, got {text!r}") from None

    return parse


def add_task_options(parser: argparse.ArgumentParser, kind: str, title: str) -> None:
    """The options that tasks declare (`data_options`, `evaluate_options`, `predict_options`, `check_options`), one flag
    per name with each task's help; defaults are suppressed, so a flag given for a task that does not take it is an
    error naming the task that does (tasks/base.py `option_values`)."""
    from deepfit.registry import all_tasks

    declared: dict[str, tuple[Option, dict[str, list[str]]]] = {}  # name -> (option, {help: [tasks]})
    for task in all_tasks():
        for option in options_of(task, kind):
            _, helps = declared.setdefault(option.name, (option, {}))
            helps.setdefault(option.help, []).append(task.name)
    group = parser.add_argument_group(title)
    for option, helps in declared.values():
        help_text = "; ".join(f"{', '.join(tasks)}: {text}" for text, tasks in helps.items())
        if option.type is bool:
            group.add_argument(option.flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
        elif option.type is list:
            group.add_argument(option.flag, nargs="+", default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(option.flag, type=option.type, default=argparse.SUPPRESS, help=help_text)


def options_of(task: Task, kind: str) -> tuple[Option, ...]:
    if kind == "data":
        return task.data_options
    if kind == "evaluate":
        return tuple(o for o in task.data_options if o.name in task.evaluate_options)
    if kind == "check":
        return (*task.data_options, *task.check_options)
    return task.predict_options


def task_option_names(kind: str) -> set[str]:
    from deepfit.registry import all_tasks

    return {o.name for task in all_tasks() for o in options_of(task, kind)}


def refuse_changes(flag: str, keeps: str, may_change: tuple[str, ...], got: list[str]) -> None:
    """`--resume`-like flags continue something saved: any other option given (`got`) is an error naming those that
    may change."""
    if got:
        names = [f"--{o.replace('_', '-')}" for o in may_change]
        allowed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
        raise ConfigError(f"{flag} keeps {keeps}; only {allowed} may change (got {', '.join(got)})")


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """--quiet / --verbose, on every command."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="print only warnings and errors")
    group.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="also print debug messages")
