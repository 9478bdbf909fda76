"""The page and table of a hyperparameter search (`deepfit tune`): TUNE_DIR/tune.html and TUNE_DIR/trials.csv.

The page shows every trial (state, score, the options it tried, epochs trained, its run folder), the history of the
search (each trial's score and the best so far) and how much each option mattered (Optuna's fANOVA importances, from
the completed trials). Trials come from the study's database, so trials that other processes or machines ran are
listed too; their run folders are on the machine named in the table.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from deepfit.fileio import atomic_write_text
from deepfit.report.html import (
    data_table,
    embedded_figures,
    empty_note,
    esc,
    score_bar,
    summary_table,
    table_row,
    write_page,
)
from deepfit.report.plots import light_grid, save_figure
from deepfit.report.text import fixed, write_csv

_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
           TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
_STYLES = "<style>.per-class td.state-pruned, .per-class td.state-failed { color: var(--muted); } " \
          ".per-class tr.best td { background: #ecfdf3; font-weight: 600; } code { font-size: 13px; }</style>"


def param_names(trials: Sequence[FrozenTrial]) -> list[str]:
    """Every searched option, in the order trials first used them."""
    names: dict[str, None] = {}
    for trial in trials:
        names.update(dict.fromkeys(trial.params))
    return list(names)


def best_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The completed trial with the highest score; of equal ones, the earliest."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def write_best_json(path: Path, best: FrozenTrial, *, monitor: str, command: str, finished: int) -> Path:
    """best.json: the best trial's number, score, searched values (`params`, as Optuna stores them) and options, its run
    folder and host, and the `deepfit train` command line of its options."""
    summary = {"trial": best.number, "value": best.value, "monitor": monitor, "params": best.params,
               "options": best.user_attrs.get("options", {}), "run_dir": best.user_attrs.get("run_dir"),
               "host": best.user_attrs.get("host"), "command": command, "finished_trials": finished,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")


def _epochs(trial: FrozenTrial) -> Any:
    return trial.user_attrs.get("epochs", trial.last_step if trial.last_step is not None else "")


def _seconds(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def shown_value(value: Any) -> str:
    """A searched value as the page and the log show it: 4 significant digits for a float."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def shown_url(url: str) -> str:
    """The URL without its password, for messages and the page."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: the error says so; show it as given
        return url


def write_trials_csv(trials: Sequence[FrozenTrial], path: Path) -> Path:
    """One row per trial: number, state, value (the best validation score; a pruned trial's best before it was stopped
    is in best_score), each searched option, epochs, run folder, host, seconds."""
    names = param_names(trials)
    rows = [[t.number, _STATES.get(t.state, t.state.name.lower()), "" if t.value is None else t.value,
             *(t.params.get(n, "") for n in names), _epochs(t), _none(t.user_attrs.get("best_score")),
             t.user_attrs.get("run_dir", ""), t.user_attrs.get("host", ""), _none(_seconds(t))] for t in trials]
    return write_csv(path, ["trial", "state", "value", *names, "epochs", "best_score", "run_dir", "host", "seconds"], rows)


def _none(value: Any) -> Any:
    return "" if value is None else value


def plot_history(trials: Sequence[FrozenTrial], path: Path, monitor: str) -> Path | None:
    """Each completed trial's score, pruned trials at the best score they reached, and the best so far as a step line."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if not done and not pruned:
        return None
    fig = Figure(figsize=(8.0, 3.8), layout="constrained")
    ax = fig.subplots()
    if done:
        ax.plot([t.number for t in done], [t.value for t in done], "o", color="#1f77b4", label="completed")
        best, steps = -math.inf, []
        for t in done:
            best = max(best, t.value)
            steps.append(best)
        last = max(t.number for t in trials)  # the best so far holds until the last trial
        ax.step([t.number for t in done] + [last], steps + steps[-1:], where="post", color="#d62728", label="best so far")
    if pruned:
        ax.plot([t.number for t in pruned], [max(t.intermediate_values.values()) for t in pruned], "x", color="#7b8794",
                label="pruned (best before stopping)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{monitor} (validation)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    light_grid(ax)
    ax.legend(loc="best", frameon=False)
    fig.suptitle("Search history")
    return save_figure(fig, path, "search history")


def importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """(option -> importance, summing to 1) from the completed trials, or None and why not."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"Importances need at least 2 completed trials; the search has {len(complete)}."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fANOVA's own warnings on few trials
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            return optuna.importance.get_param_importances(study, evaluator=evaluator), ""
    except (ValueError, RuntimeError) as e:  # e.g. no option varied over the completed trials
        return None, f"Importances could not be computed from {len(complete)} completed trials: {e}"


def _run_cell(trial: FrozenTrial, folder: Path) -> str:
    run = trial.user_attrs.get("run_dir")
    if not run:
        return "<td></td>"
    run_path = Path(run)
    if not run_path.is_dir():  # another machine's trial (or a killed one that never made its folder)
        host = trial.user_attrs.get("host")
        return f'<td class="none">{esc(run_path.name)}{esc(f" (on {host})" if host else "")}</td>'
    target = run_path / "report.html" if (run_path / "report.html").is_file() else run_path
    href = os.path.relpath(target, folder).replace(os.sep, "/")
    return f'<td><a href="{esc(href)}">{esc(run_path.name)}</a></td>'


def write_tune_page(study: optuna.Study, folder: Path, *, monitor: str, fixed_options: dict[str, Any], planned: int,
                    storage: str, command: str | None) -> Path:
    trials = study.get_trials(deepcopy=False)
    names = param_names(trials)
    best = best_trial(trials)
    counts = {label: sum(t.state == s for t in trials) for s, label in _STATES.items()}
    summary = {
        "study": f"{study.study_name} ({storage})",
        "trials": f"{counts['complete'] + counts['pruned']} finished of {planned} planned: " + ", ".join(
            f"{n} {label}" for label, n in counts.items() if n),
        "scored by": f"{monitor}: the best validation score of each trial (higher is better); the test split is never used",
        "fixed for every trial": ", ".join(f"{k}={shown_value(v)}" for k, v in fixed_options.items()) or "nothing beyond the base options",
    }
    if best is not None:
        summary["best"] = f"trial {best.number}: {monitor} {best.value:.4f}"
    rows = []
    for t in trials:
        state = _STATES.get(t.state, t.state.name.lower())
        value = fixed(t.value, 4) if t.state == TrialState.COMPLETE else (
            f"({fixed(max(t.intermediate_values.values()), 4)})" if t.intermediate_values else "–")
        cells = (f"<td>{t.number}</td><td class=\"state-{esc(state)}\">{esc(state)}</td><td>{value}</td>"
                 + "".join(f"<td>{esc(shown_value(t.params[n])) if n in t.params else '–'}</td>" for n in names)
                 + f"<td>{esc(_epochs(t))}</td>" + _run_cell(t, folder))
        row = table_row(cells)
        rows.append(row.replace("<tr>", '<tr class="best">', 1) if best is not None and t.number == best.number else row)
    table = data_table(["trial", "state", monitor, *names, "epochs", "run"], rows, empty_html="No trials yet.")
    history = plot_history(trials, folder / "history.png", monitor)
    scores, why = importances(study)
    if scores:
        ranked = [table_row(f"<td>{esc(name)}</td><td>{value:.3f}{score_bar(value)}</td>") for name, value in scores.items()]
        importance = data_table(["option", "importance"], ranked) + empty_note(
            "fANOVA importances over the completed trials: the share of the variation of the score each option explains "
            "(options varied together, with few trials, are only a rough guide).")
    else:
        importance = empty_note(esc(why))
    sections = [
        summary_table(summary, []),
        "<h2>Best options</h2>" + (f"<p>Train them again as a normal run:</p><p><code>{esc(command)}</code></p>" if command
                                   else empty_note("No trial has completed yet.")),
        "<h2>Trials</h2>" + table + empty_note("A pruned trial's score (in brackets) is the best it reached before the "
                                               "pruner stopped it; it does not compete for best."),
        "<h2>History</h2>" + (embedded_figures({"validation score of each trial, and the best so far": history}) if history
                              else empty_note("No trial has finished yet.")),
        "<h2>What mattered</h2>" + importance,
    ]
    return write_page(folder / "tune.html", f"Hyperparameter search {folder.name}", sections, styles=_STYLES, what="search page")
