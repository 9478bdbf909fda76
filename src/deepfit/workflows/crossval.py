"""Cross-validation (`--cv N`): one model per fold, each tested once on its fold; every fold's score and their mean and
spread, which say more than one split can about a small data set (and are how environmental-sound benchmarks are
scored, on the data's own folds).

Folds are, in this order: the data's own (a `fold` column of a CSV, or a `fold` group of --label-pattern); whole groups
(speakers, source recordings: scikit-learn's StratifiedGroupKFold), so no group is heard both in training and in the
fold it is tested on; or stratified by class (StratifiedKFold). Each fold's run is an ordinary run folder
(`fold1`, `fold2`, ...) inside the cross-validation's folder, with its validation split carved from its training part,
its test split the fold; `results.csv` and `cv.json` beside them hold the scores.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.config import TrainConfig
from deepfit.data.catalog import Catalog, LabeledFile, natural_key
from deepfit.data.split import group_key
from deepfit.errors import ConfigError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger, setup_logging
from deepfit.registry import get_task
from deepfit.runs.folder import new_run_dir
from deepfit.tasks.base import option_values
from deepfit.workflows.evaluate import evaluate
from deepfit.workflows.train import train


@dataclass
class CVResult:
    folder: Path  # the cross-validation's folder: a run folder per fold, results.csv, cv.json
    runs: list[Path]
    accuracy: list[float]  # test accuracy of each fold
    balanced_accuracy: list[float]
    folds_from: str  # "the data's folds", "groups" or "classes"

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracy)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracy) if len(self.accuracy) > 1 else 0.0

    def headline(self) -> str:
        return (f"{len(self.runs)}-fold cross-validation (folds by {self.folds_from}): test accuracy {self.mean:.2%} ± "
                f"{self.std:.2%} (mean ± std over folds; each fold {', '.join(f'{a:.1%}' for a in self.accuracy)}); {self.folder}")


def assign_folds(files: list[LabeledFile], folds: int, seed: int) -> tuple[list[int], str]:
    """(each file's fold, 0-based; what the folds follow). The data's own folds win; then whole groups; then classes."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if any(f.fold is not None for f in files):
        missing = [f.path for f in files if f.fold is None]
        if missing:
            raise ConfigError(f"{missing[0]} has no fold while others do: give every file a fold, or none")
        names = sorted({str(f.fold) for f in files}, key=natural_key)
        if folds != len(names):
            raise ConfigError(f"the data has {len(names)} folds of its own ({', '.join(names)}), and --cv {folds} asks for "
                              f"{folds}: use --cv {len(names)}")
        return [names.index(str(f.fold)) for f in files], "the data's folds"
    labels = [f.label for f in files]
    grouped = any(f.group is not None for f in files)
    if grouped:
        groups = [group_key(f) for f in files]
        if len(set(groups)) < folds:
            raise ConfigError(f"--cv {folds} needs at least {folds} groups; the data has {len(set(groups))}")
        splitter: Any = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        smallest = min(labels.count(c) for c in set(labels))
        if smallest < folds:
            raise ConfigError(f"--cv {folds}: a class has only {smallest} files, fewer than the folds; use --cv {max(2, smallest)}")
        splitter, groups = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed), None
    out = [0] * len(files)
    with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits": said above, or fine
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, held) in enumerate(splitter.split(np.zeros(len(files)), labels, groups)):
            for i in held:
                out[i] = k
    return out, "groups" if grouped else "classes"


def cross_validate(data: str | Path, config: TrainConfig, **data_options: Any) -> CVResult:
    """Train `config.cv` models, fold k tested on fold k and trained on the rest; write results.csv and cv.json."""
    setup_logging()
    task = get_task(config.task)
    if task.name != "classify":
        raise ConfigError(f"--cv is for classification; --task {task.name} trains one run (use --val-fraction for its split)")
    options = option_values(task, {k: v for k, v in data_options.items() if v is not None}, task.data_options, "training data")
    dataset = task.read(data, config, **options)
    catalog: Catalog = dataset.source
    if catalog.has_splits:
        logger.warning("the data's own train/val/test split is set aside: cross-validation makes one split per fold")
    folds, follows = assign_folds(catalog.files, config.cv, config.seed)
    folder = new_run_dir(config.output, config.name, f"{config.model}-cv")
    runs, accuracy, balanced = [], [], []
    for k in range(config.cv):
        files = [replace(f, split="test" if fold == k else None) for f, fold in zip(catalog.files, folds, strict=True)]
        subset = Catalog(sorted(files, key=LabeledFile.sort_key), catalog.classes, catalog.root, f"fold {k + 1} of {config.cv}")
        logger.info(f"cross-validation fold {k + 1} of {config.cv}: {sum(f.split == 'test' for f in files)} test files")
        result = train(subset, config.replace(cv=0, output=str(folder), name=f"fold{k + 1}"))
        metrics = evaluate(result.run_dir).metrics
        runs.append(result.run_dir)
        accuracy.append(float(metrics["accuracy"]))
        balanced.append(float(metrics["balanced_accuracy"]))
    cv = CVResult(folder, runs, accuracy, balanced, follows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["fold", "run", "test_accuracy", "test_balanced_accuracy"])
    writer.writerows([k + 1, r.name, f"{a:.6f}", f"{b:.6f}"] for k, (r, a, b) in enumerate(zip(runs, accuracy, balanced, strict=True)))
    atomic_write_text(folder / "results.csv", out.getvalue())
    summary = {"folds": config.cv, "folds_from": follows, "data": str(data), "accuracy_mean": cv.mean, "accuracy_std": cv.std,
               "accuracy": accuracy, "balanced_accuracy": balanced, "config": config.to_dict()}
    atomic_write_text(folder / "cv.json", json.dumps(summary, indent=2) + "\n")
    logger.info(cv.headline())
    return cv
