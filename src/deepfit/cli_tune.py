"""The `deepfit tune` command: a hyperparameter search (workflows/tune.py) whose best trial is then scored once on the
test split, as `deepfit train` scores its run."""

from __future__ import annotations

import argparse
from typing import Any

from deepfit.cli_options import (
    add_config_options,
    add_task_options,
    add_verbosity,
    refuse_changes,
    task_option_names,
)
from deepfit.errors import ConfigError
from deepfit.presets import PRESETS

# the command's own arguments; every other one is a training or data option, the base of every trial
_OWN = {"command", "data", "preset", "no_evaluate", "version", "resume", "trials", "timeout", "space", "storage", "study_name"}
DEFAULT_TRIALS = 20


def add_tune_command(sub: Any) -> argparse.ArgumentParser:
    t = sub.add_parser("tune", help="search training options (learning rate, weight decay, batch size, augmentation, dropout, "
                       "network size) with Optuna; the best trial is a normal run, scored once on the test split")
    t.add_argument("data", nargs="?", help="the data, as for `deepfit train`; it needs a validation split (trials are scored "
                   "on it, never on the test split)")
    t.add_argument("--trials", type=int, help=f"finished trials (complete or pruned) the search ends with, counted over every "
                   f"run of it (default {DEFAULT_TRIALS})")
    t.add_argument("--timeout", type=float, metavar="MINUTES", help="start no new trial after this many minutes (the running "
                   "one finishes)")
    t.add_argument("--space", metavar="FILE", help="a YAML file of options to search or fix, replacing the default space key "
                   "by key, e.g. 'lr: {low: 1e-4, high: 1e-2, log: true}', 'batch_size: [16, 32]', 'epochs: 3'")
    t.add_argument("--storage", metavar="URL", help="the study's database, any SQLAlchemy URL (e.g. postgresql://host/db): "
                   "processes and machines given the same URL and --study-name share one search (default: study.db in "
                   "the search folder)")
    t.add_argument("--study-name", help="the study's name in the database (default: the search folder's name)")
    t.add_argument("--resume", metavar="TUNE_DIR", help="continue a stopped search with its saved data, options and space "
                   "(--trials and --timeout may change)")
    t.add_argument("--preset", choices=sorted(PRESETS), help="a tested set of options to start from")
    t.add_argument("--no-evaluate", action="store_true", help="do not score the best run's test split after the search")
    add_task_options(t, "data", "how the data is read (each option is for the tasks it names)")
    add_config_options(t, title="training options, the base of every trial (the search space overrides them per trial; "
                       "--output and --name place the search folder)")
    add_verbosity(t)
    return t


def cmd_tune(args: argparse.Namespace) -> list[str]:
    """Run (or continue) the search; the lines to print: the best trial, its `deepfit train` command, its test score."""
    from deepfit.registry import get_task
    from deepfit.runs.folder import run_task
    from deepfit.workflows.evaluate import evaluate
    from deepfit.workflows.tune import resume_tune, tune

    given = {k: v for k, v in vars(args).items() if k not in _OWN}
    if args.resume:
        others = sorted(given) + [f"--{k.replace('_', '-')}" for k in ("space", "storage", "study_name", "preset") if getattr(args, k)]
        refuse_changes("--resume", "the search's own data, options and space", ("trials", "timeout"),
                       others + (["DATA"] if args.data else []))
        result = resume_tune(args.resume, trials=args.trials, timeout=args.timeout)
    elif not args.data:
        raise ConfigError("deepfit tune needs DATA (a folder or CSV of labelled examples), or --resume TUNE_DIR")
    else:
        data_names = task_option_names("data")
        result = tune(args.data, trials=DEFAULT_TRIALS if args.trials is None else args.trials, timeout=args.timeout, space=args.space,
                      storage=args.storage, study_name=args.study_name, preset=args.preset,
                      **{k: v for k, v in given.items() if k not in data_names},
                      **{k: v for k, v in given.items() if k in data_names})
    lines = [f"search folder: {result.tune_dir} (page: {result.tune_dir / 'tune.html'})", result.headline()]
    if result.best_run is None:
        return lines
    lines.append(f"the same run again: {result.command}")
    if not result.best_run.is_dir():
        lines.append(f"the best run is on another machine (best.json names it): score it there with `deepfit evaluate "
                     f"{result.best_run}`")
    elif not args.no_evaluate:  # scored once, as `deepfit train` scores its run
        evaluation = evaluate(result.best_run, device=getattr(args, "device", "auto"))
        lines.append(f"best run: {get_task(run_task(result.best_run)).headline(evaluation)}")
    return lines
