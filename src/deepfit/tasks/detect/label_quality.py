"""`deepfit data audit --run RUN` for detection: the boxes of images a trained detector never trained on, judged by its
predictions with cleanlab's object-detection label quality (an overlooked object, a box given the wrong class, a box
in the wrong place each lower an image's score; 1 is clean, 0 is likely wrong).

Why cleanlab: its score combines the three kinds of mistake the way its published method does (Tkachenko et al. 2023),
which a few lines here could not match. Why only images the run never trained on: a detector reproduces the labels it
was fitted to, mistakes included, so only held-out predictions can contradict them (cleanlab asks for out-of-sample
predictions for the same reason).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.data.split import file_digest, load_split
from deepfit.errors import ConfigError
from deepfit.log import logger
from deepfit.runs.folder import read_run_config, resolve_checkpoint, run_folder

LOW_CONF = 0.05  # predictions kept down to this score: cleanlab weighs them by their confidence
SURE = 0.5  # a detector that finds nothing this sure in most images cannot contradict anyone's labels


def _digest(path: Path) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None


def judge_boxes(task: Any, run: str | Path, classes: list[str], items: list) -> tuple[list[int], np.ndarray, set[int]]:
    """(indexes of the judged items, their label quality, the indexes cleanlab flags) for the detection samples
    `items`, from the detector in `run`; items of the run's own training split are not judged."""
    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import get_label_quality_scores

    folder = run_folder(run)
    saved = read_run_config(folder)
    if saved.get("task") not in ("detect", "segment-instances") or list(saved.get("classes", [])) != list(classes):
        raise ConfigError(f"--run {run}: a detector trained on these classes ({', '.join(classes[:5])}...) is needed, not a "
                          f"{saved.get('task')} run of {', '.join(map(str, saved.get('classes', [])[:5]))}...")
    # by content, not path: the data audited may be a copy of (or a move from) what the run trained on
    trained_on = {_digest(f.path) for f in load_split(folder / "split.csv", Path(saved["data_root"])).get("train", [])}
    judged = [i for i, s in enumerate(items) if _digest(s.path) not in trained_on]
    if not judged:
        logger.warning(f"--run {run} trained on every image audited: no held-out image to judge its labels by")
        return [], np.zeros(0), set()
    predictor = task.predictor(task.load(resolve_checkpoint(folder, "best")))
    found = predictor.predict([items[i].path for i in judged], conf=LOW_CONF)
    labels = [{"bboxes": np.asarray(items[i].boxes, dtype=np.float32).reshape(-1, 4),
               "labels": np.asarray(items[i].labels, dtype=np.int64)} for i in judged]
    predictions = [[np.column_stack([d["boxes"][d["labels"] == k], d["scores"][d["labels"] == k]]).reshape(-1, 5)
                    for k in range(len(classes))] for d in found]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = get_label_quality_scores(labels, predictions, verbose=False)
        flagged = find_label_issues(labels, predictions)
    sure = np.mean([bool(len(d["scores"])) and float(d["scores"].max()) >= SURE for d in found])
    if sure < 0.5:  # cleanlab leaves unsure predictions out, and then calls every label clean
        logger.warning(f"--run {folder.name} is unsure of most images (a score of {SURE} or more on {sure:.0%} of them): "
                       "its judgement of their labels means little; train it longer or give a better detector")
    logger.info(f"boxes of {len(judged)} held-out images judged by {folder.name}: {int(flagged.sum())} flagged")
    return judged, np.asarray(quality, dtype=np.float64), {judged[k] for k in np.flatnonzero(flagged)}
