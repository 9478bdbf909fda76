"""Likely label errors and outliers, from each example's embedding.

Label errors by confident learning (Northcutt et al. 2021), as cleanlab implements it: a simple model (logistic
regression on the embeddings) predicts every example's class probabilities out of fold — from a model that never saw
that example — and examples whose given label those probabilities contradict more than each class's own noise level
allows are flagged, ranked by the probability given to their label (self-confidence), with the class the model
prefers as the suggestion. Why cleanlab and not our own: its thresholds per class and its pruning are the published
method, tested far more widely than a copy here would be.

Outliers: cleanlab's OutOfDistribution score from the embeddings (the mean distance to an example's nearest
neighbours, turned into a score in (0, 1]; low is atypical), i.e. far from every class.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np

from deepfit.log import logger

FOLDS = 5


@dataclass
class LabelIssues:
    pred_probs: np.ndarray  # (N, K) out-of-fold probabilities
    ranked: np.ndarray  # indexes of the examples confident learning flags, most likely wrong first
    quality: np.ndarray  # (N,) cleanlab's label quality (self-confidence: the probability given to the label)
    suggested: np.ndarray  # (N,) the class the out-of-fold model prefers
    folds: int
    balanced_accuracy: float = 0.0  # of the out-of-fold predictions: how well the embeddings tell the classes apart
    note: str = ""  # why nothing is flagged, when the embeddings are too weak to judge labels

    @property
    def candidates(self) -> np.ndarray:
        """Every example, the lowest label quality first: the flagged ones lead, the next are worth a look too."""
        return np.argsort(self.quality, kind="stable")


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """(N, K) probabilities of each example from a logistic regression fitted on the other folds, and the folds used
    (fewer than 5 when the smallest class has fewer examples)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    present = np.bincount(labels, minlength=num_classes)
    folds = int(min(FOLDS, present[present > 0].min()))
    probs = np.full((len(labels), num_classes), 1.0 / num_classes)
    if folds < 2 or (present > 0).sum() < 2:
        return probs, 0
    # Unit-length embeddings and a mildly regularised logistic regression, the usual linear probe of an embedding:
    # on planted label flips (tests/test_audit.py) it ranked the flips above the rest better than standardised features
    model = make_pipeline(Normalizer(), LogisticRegression(max_iter=2000, C=10.0))
    with warnings.catch_warnings():  # convergence chatter on hard data: the probabilities are still usable
        warnings.simplefilter("ignore")
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        found = cross_val_predict(model, features, labels, cv=cv, method="predict_proba")  # (N, classes present)
    probs[:, np.flatnonzero(present)] = found
    probs[:, present == 0] = 0.0
    return probs, folds


def label_issues(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> LabelIssues:
    """The examples whose label is likely wrong (see the module doc)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs, folds = out_of_fold_probabilities(features, labels, num_classes, seed)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    suggested = probs.argmax(1)
    if not folds:
        logger.warning("label errors not looked for: a class has fewer than 2 examples (or there is one class)")
        return LabelIssues(probs, np.zeros(0, dtype=np.int64), quality, suggested, 0)
    from sklearn.metrics import balanced_accuracy_score

    score = float(balanced_accuracy_score(labels, suggested))
    chance = 1.0 / len(np.unique(labels))
    if score < (1 + chance) / 2:  # embeddings that barely tell the classes apart contradict good labels everywhere
        note = (f"the embeddings tell the classes apart too poorly to judge labels (out-of-fold balanced accuracy "
                f"{score:.0%}, chance {chance:.0%}): nothing is flagged; give --model and --weights of a pretrained network")
        logger.warning(note)
        return LabelIssues(probs, np.zeros(0, dtype=np.int64), quality, suggested, folds, score, note)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # cleanlab prints advice on tiny classes
        warnings.simplefilter("ignore")
        ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    return LabelIssues(probs, np.asarray(ranked, dtype=np.int64), quality, suggested, folds, score)


def outlier_scores(features: np.ndarray) -> np.ndarray:
    """(N,) cleanlab's out-of-distribution score from the embeddings: low = far from everything else."""
    from cleanlab.outlier import OutOfDistribution
    from scipy import sparse

    x = features.toarray() if sparse.issparse(features) else np.asarray(features, dtype=np.float32)
    if len(x) < 3:
        return np.ones(len(x))
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)  # every feature on one scale: a few large ones must not decide alone
    k = min(10, len(x) - 1)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OutOfDistribution(params={"k": k}).fit_score(features=x)
