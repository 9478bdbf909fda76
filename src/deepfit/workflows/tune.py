"""`deepfit tune`: a hyperparameter search with Optuna, whose best trial is a normal run.

    tune(data, trials=20, space=..., **options)   search the space (workflows/tune_space.py) around the training options
    resume_tune(tune_dir, trials=, timeout=)     continue a stopped search with what its tune.json saved

Every trial is an ordinary run folder (TUNE_DIR/trials/trial-0007) trained with the same seed, hence on the same split,
and scored by its best validation score: the test split is never looked at while choosing. TPE proposes the options
(the first trial tries the base options themselves), and a median pruner stops a trial whose validation score falls
behind the others' at the same epoch. The study lives in TUNE_DIR/study.db (or any SQLAlchemy URL, shared by several
processes or machines); finished trials (complete or pruned) count towards --trials over every run of the search, so
a killed search continues where it stopped. A trial left RUNNING by a killed process stops beating (heartbeats every
HEARTBEAT_INTERVAL s): once GRACE_PERIOD s have passed, the next trial to start, in any process, marks it failed and
queues its options to be tried again.
"""

from __future__ import annotations

import json
import math
import random
import socket
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from deepfit.config import TrainConfig
from deepfit.engine.interfaces import Callback
from deepfit.engine.trainer import Trainer
from deepfit.errors import ConfigError, DataError, TrainingError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger, setup_logging
from deepfit.options import with_options
from deepfit.presets import apply_preset
from deepfit.registry import all_tasks, get_task
from deepfit.report.tune_page import (
    best_trial,
    shown_url,
    shown_value,
    write_best_json,
    write_trials_csv,
    write_tune_page,
)
from deepfit.runs.folder import check_output_outside_data, new_run_dir
from deepfit.tasks.base import option_values
from deepfit.workflows.train import train
from deepfit.workflows.tune_space import (
    Fixed,
    Space,
    base_values,
    check_space,
    config_changes,
    default_space,
    load_space,
    merge_spaces,
    parse_space,
    suggest,
    to_plain,
    train_command,
)

TUNE_FILE, BEST_FILE, STUDY_DB = "tune.json", "best.json", "study.db"
TUNE_FORMAT = "deepfit-tune/1"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A running trial writes a heartbeat this often; one silent for GRACE_PERIOD s (its process was killed, its machine
# lost) is failed by the next trial that starts and retried once. The grace is long enough for a busy database.
HEARTBEAT_INTERVAL = 20
GRACE_PERIOD = 60
MAX_RETRY = 1


@dataclass
class TuneResult:
    tune_dir: Path  # tune.json, study.db, trials/, trials.csv, best.json, tune.html
    study_name: str
    monitor: str  # the validation value trials are scored by ("val_acc", "val_map", "val_miou"), higher is better
    best_run: Path | None  # the best trial's run folder: a normal run (deepfit evaluate / predict / load)
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]  # the searched options of the best trial
    command: str | None  # `deepfit train ...` with the best trial's options
    complete: int
    pruned: int
    failed: int

    def headline(self) -> str:
        if self.best_trial is None:
            return f"no trial completed ({self.pruned} pruned, {self.failed} failed); {self.tune_dir / 'tune.html'}"
        params = ", ".join(f"{k}={shown_value(v)}" for k, v in self.best_params.items())
        return (f"best trial {self.best_trial} of {self.complete + self.pruned} finished ({self.pruned} pruned): "
                f"{self.monitor} {self.best_value:.4f} with {params}; run folder: {self.best_run}")


@dataclass
class Plan:
    """What tune.json keeps: enough for another process (`--resume`, a rerun, a second machine) to search the same way."""

    data: str
    data_options: dict[str, Any]
    options: dict[str, Any]  # the training options as given (a preset's and the task's defaults fill the rest)
    preset: str | None
    space: dict[str, Any]  # the whole space in its YAML form, defaults included
    trials: int
    timeout: float | None  # minutes
    storage: str | None  # None: study.db in the tune folder
    study_name: str
    format: str = TUNE_FORMAT


class PruneOnValidation(Callback):
    """Reports each epoch's validation score to the trial and stops training when the pruner judges it poor; the
    caller raises optuna.TrialPruned once the run has ended cleanly (its folder then holds the epochs it trained)."""

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self.trial, self.pruned_at, self.epochs = trial, None, 0

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.epochs = int(record["epoch"])
        score = record.get(trainer.task.monitor)
        if score is None or not math.isfinite(score):  # no validation this epoch: nothing to judge
            return
        self.trial.report(float(score), self.epochs)
        if self.trial.should_prune():
            self.pruned_at = self.epochs
            trainer.should_stop = True


@with_options(TrainConfig)
def tune(data: str | Path, *, trials: int = 20, timeout: float | None = None, space: dict[str, Any] | str | Path | None = None,
         storage: str | None = None, study_name: str | None = None, preset: str | None = None, **options: Any) -> TuneResult:
    """Search training options on `data` for `trials` finished trials (or `timeout` minutes); `space`: a dict or a YAML
    file overriding the default space; `storage`: an SQLAlchemy URL shared by several processes (default: study.db in
    the tune folder, OUTPUT/NAME from `output` and `name`); `options`: every training and data option of `train`, the
    base of every trial. Rerunning with the same `name` continues the search."""
    setup_logging()
    _limits(trials, timeout)
    data_names = {o.name for task in all_tasks() for o in task.data_options}
    data_options = {k: v for k, v in options.items() if k in data_names and v is not None}
    given = {k: v for k, v in options.items() if k not in data_names}
    base = apply_preset(preset, given)
    user_space, where = load_space(space)  # its mistakes first: they need no data
    modality = _read(str(data), base, data_options)
    full = merge_spaces(default_space(base.task, base, modality), user_space)
    check_space(full, base, where)
    if storage:  # a wrong URL is said before a folder is made
        open_storage(storage)
    folder = _tune_folder(base)
    plan = Plan(str(Path(data).resolve()), data_options, json.loads(json.dumps(given, default=str)), preset, to_plain(full),
                trials, timeout, storage, study_name or folder.name)
    _check_same_search(folder, plan)
    atomic_write_text(folder / TUNE_FILE, json.dumps(asdict(plan), indent=2) + "\n")
    return _search(plan, folder, base, full, modality)


def resume_tune(tune_dir: str | Path, *, trials: int | None = None, timeout: float | None = None) -> TuneResult:
    """Continue the search in `tune_dir` with its saved data, options and space; `trials` and `timeout` may change."""
    setup_logging()
    _limits(trials, timeout)
    folder = Path(tune_dir).resolve()
    plan = read_plan(folder)
    plan.trials, plan.timeout = plan.trials if trials is None else trials, plan.timeout if timeout is None else timeout
    base = apply_preset(plan.preset, plan.options)
    modality = _read(plan.data, base, plan.data_options)
    space = parse_space(plan.space, str(folder / TUNE_FILE))
    check_space(space, base, str(folder / TUNE_FILE))
    atomic_write_text(folder / TUNE_FILE, json.dumps(asdict(plan), indent=2) + "\n")
    return _search(plan, folder, base, space, modality)


def read_plan(folder: Path) -> Plan:
    path = folder / TUNE_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a search folder: it has no {TUNE_FILE} (`deepfit tune` writes one)")
    saved = json.loads(path.read_text())
    if saved.get("format") != TUNE_FORMAT:
        raise ConfigError(f"{path} is of another format ({saved.get('format')!r}); this deepfit reads {TUNE_FORMAT}")
    return Plan(**saved)


def _limits(trials: int | None, timeout: float | None) -> None:
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise ConfigError(f"--trials must be a whole number of at least 1, got {trials!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"--timeout must be a number of minutes above 0, got {timeout!r}")


def _read(data: str, base: TrainConfig, data_options: dict[str, Any]) -> str:
    """Read and split the data once before any trial: its modality, and a clear error when it has no validation split
    (the only split trials may be scored on)."""
    if base.cv:
        raise ConfigError("--cv is not for tune: trials are scored on the validation split; tune first, then train the best "
                          "options with --cv")
    task = get_task(base.task)
    options = option_values(task, data_options, task.data_options, "training data")
    dataset = task.read(data, base, **options)
    check_output_outside_data(base.output, dataset.root)
    if not task.split(dataset, base).get("val"):
        raise DataError(f"{data} gives no validation split, and trials are scored on it (never on the test split): give "
                        "the data a val/ split or a --val-fraction above 0")
    return dataset.record.get("modality", task.modality)


def _tune_folder(base: TrainConfig) -> Path:
    """OUTPUT/NAME: an existing search folder is reused (the search continues), a new one is made otherwise."""
    if base.name:
        folder = Path(base.output).resolve() / base.name
        if (folder / TUNE_FILE).is_file():
            return folder
        if folder.exists():
            raise ConfigError(f"{folder} exists and is not a search folder (it has no {TUNE_FILE}): choose another --name")
    return new_run_dir(base.output, base.name, "tune")


def _check_same_search(folder: Path, plan: Plan) -> None:
    """A rerun continues its search only with the same data, options and space: another search would mix trials."""
    if not (folder / TUNE_FILE).is_file():
        return
    saved = asdict(read_plan(folder))
    differ = [k for k in ("data", "data_options", "options", "preset", "space", "storage", "study_name")
              if saved[k] != json.loads(json.dumps(asdict(plan)[k]))]
    if differ:
        raise ConfigError(f"{folder} holds a search with other {', '.join(differ)}: rerun the same command, continue it with "
                          f"`deepfit tune --resume {folder}`, or choose another --name")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's database with heartbeats, so that a trial whose process died is failed and retried, not left running."""
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9; before: RetryFailedTrialCallback
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # several processes wait for the lock
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats and retries are marked experimental
        callback = (retry or optuna.storages.RetryFailedTrialCallback)(max_retry=MAX_RETRY)
        stale = {"heartbeat_stale_trial_callback": callback} if retry else {"failed_trial_callback": callback}
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_INTERVAL,
                                              grace_period=GRACE_PERIOD, **stale)
        except Exception as e:  # SQLAlchemy's and the drivers' own errors: a bad URL, a missing driver, no server
            raise ConfigError(f"--storage {shown_url(url)}: cannot open the database ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def _search(plan: Plan, folder: Path, base: TrainConfig, space: Space, modality: str) -> TuneResult:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # deepfit logs each trial (and a failed one's error) itself
    try:
        return _run_study(plan, folder, base, space, modality)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run_study(plan: Plan, folder: Path, base: TrainConfig, space: Space, modality: str) -> TuneResult:
    storage = open_storage(plan.storage or f"sqlite:///{folder / STUDY_DB}")
    startup = max(2, min(10, plan.trials // 2))  # TPE's random trials before it models: half of a short search
    study = optuna.create_study(storage=storage, study_name=plan.study_name, direction="maximize", pruner=make_pruner(),
                                sampler=optuna.samplers.TPESampler(seed=base.seed, n_startup_trials=startup), load_if_exists=True)
    if study.trials:  # another process's search, or one continued: the seed's random proposals would repeat theirs
        study.sampler = optuna.samplers.TPESampler(seed=random.SystemRandom().randrange(2**31), n_startup_trials=startup)
    else:  # the base options first: the search starts from them and can only improve on them
        study.enqueue_trial(base_values(space, base, modality), skip_if_exists=True)
    remaining = plan.trials - len(study.get_trials(deepcopy=False, states=FINISHED))
    where = f"database {shown_url(plan.storage)}" if plan.storage else f"{folder / STUDY_DB}"
    try:
        if remaining > 0:
            logger.info(f"search {plan.study_name}: {remaining} more trials to finish, of {plan.trials} ({where})")
            study.optimize(_Objective(plan, folder, base, space), n_trials=remaining,
                           timeout=plan.timeout * 60 if plan.timeout else None, catch=(TrainingError,),
                           callbacks=[optuna.study.MaxTrialsCallback(plan.trials, states=FINISHED), _after_trial(plan, folder)])
        else:
            logger.info(f"search {plan.study_name} already has {plan.trials} finished trials (pass --trials N to extend it)")
    except KeyboardInterrupt:
        logger.warning(f"search stopped: the trial in progress counts as failed; continue with `deepfit tune --resume {folder}`")
        raise
    finally:
        result = _write_results(study, plan, folder, base, space)
    return result


def make_pruner() -> optuna.pruners.BasePruner:
    """A trial is judged from its second epoch on (the first is mostly warm-up), once five trials have completed (Optuna's
    default: the median of fewer is noise; with two, a CIFAR-10 search pruned six trials of eight, bench/tune_cifar10.py):
    stopped when its best validation score so far is below the median of the completed trials' at the same epoch."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


class _Objective:
    """One trial: the space's values on top of the base options -> a run folder in TUNE_DIR/trials -> its best validation
    score (pruned: optuna.TrialPruned after the run has ended and written its epochs)."""

    def __init__(self, plan: Plan, folder: Path, base: TrainConfig, space: Space) -> None:
        self.plan, self.folder, self.base, self.space = plan, folder, base, space

    def __call__(self, trial: optuna.trial.Trial) -> float:
        values = suggest(trial, self.space)
        name = f"trial-{trial.number:04d}"
        config = self.base.replace(**config_changes(self.base, values), output=str(self.folder / "trials"), name=name)
        trial.set_user_attr("options", json.loads(json.dumps(values, default=str)))
        trial.set_user_attr("host", socket.gethostname())  # another machine's run folder is on that machine
        trial.set_user_attr("run_dir", str(self.folder / "trials" / name))  # a killed trial's folder too
        searched = ", ".join(f"{k}={shown_value(v)}" for k, v in values.items() if not isinstance(self.space[k], Fixed))
        logger.info(f"trial {trial.number}: {searched}")
        pruning = PruneOnValidation(trial)
        try:
            result = train(self.plan.data, config, callbacks=[pruning], **self.plan.data_options)
        except TrainingError as e:  # a loss gone NaN at a high rate: a failed trial, and the search goes on
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("epochs", pruning.epochs)
        trial.set_user_attr("best_score", result.best_score)
        trial.study.set_user_attr("monitor", result.monitor)
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"{result.monitor} below the median of the other trials at epoch {pruning.pruned_at}")
        if result.best_score is None:
            raise DataError(f"trial {trial.number} ({result.run_dir}) has no validation score to be judged by")
        return result.best_score


def _after_trial(plan: Plan, folder: Path) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def log(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        monitor = study.user_attrs.get("monitor", "validation score")
        outcome = {TrialState.COMPLETE: f"{monitor} {trial.value:.4f}" if trial.value is not None else "complete",
                   TrialState.PRUNED: f"pruned at epoch {trial.user_attrs.get('epochs', '?')}",
                   TrialState.FAIL: f"failed: {trial.user_attrs.get('error', 'see the log')}"}.get(trial.state, trial.state.name.lower())
        best = best_trial(trials)
        best_text = f"; best {best.value:.4f} (trial {best.number})" if best is not None and best.value is not None else ""
        logger.info(f"trial {trial.number} {outcome}{best_text}; {finished} of {plan.trials} finished")
        write_trials_csv(trials, folder / "trials.csv")
    return log


def _write_results(study: optuna.Study, plan: Plan, folder: Path, base: TrainConfig, space: Space) -> TuneResult:
    """trials.csv, best.json and tune.html from the study as it is now (other processes' trials included)."""
    trials = study.get_trials(deepcopy=False)
    monitor = study.user_attrs.get("monitor", "validation score")
    best = best_trial(trials)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    command = best_run = None
    if best is not None:
        options = {**plan.options, **config_changes(base, best.user_attrs.get("options", {}))}
        command = train_command(plan.data, plan.preset, options, plan.data_options)
        best_run = Path(best.user_attrs["run_dir"])
        write_best_json(folder / BEST_FILE, best, monitor=monitor, command=command,
                        finished=counts[TrialState.COMPLETE] + counts[TrialState.PRUNED])
        if not best_run.is_dir():
            logger.warning(f"the best trial ran on {best.user_attrs.get('host')}: its run folder {best_run} is on that machine")
    write_trials_csv(trials, folder / "trials.csv")
    fixed = {k: d.value for k, d in space.items() if isinstance(d, Fixed)}
    where = shown_url(plan.storage) if plan.storage else STUDY_DB
    write_tune_page(study, folder, monitor=monitor, fixed_options=fixed, planned=plan.trials, storage=where, command=command)
    return TuneResult(folder, plan.study_name, monitor, best_run, best.number if best else None, best.value if best else None,
                      dict(best.params) if best else {}, command, counts[TrialState.COMPLETE], counts[TrialState.PRUNED],
                      counts[TrialState.FAIL])
