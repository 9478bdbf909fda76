"""Classical models on feature vectors: fitted with scikit-learn, then turned into a torch head.

Each classifier's regularisation strength (or k) is chosen by stratified cross-validation on the
training split only. The fitted model becomes an exact torch equivalent (a Linear layer with the
standardisation folded into it, or a k-NN vote over the stored training features), so the run is
an ordinary checkpoint that predicts from images with no scikit-learn object to unpickle.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse import issparse
from torch import nn

from deepfit.errors import ConfigError, DataError
from deepfit.log import logger
from deepfit.models.features import KNNHead, RBFHead

# Candidate strengths: features are standardised first, so one grid serves every network and layer.
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# TF-IDF rows (sparse, unit length, not standardised: centring would make them dense) need far weaker regularisation
SPARSE_C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SPARSE_KINDS = ("svm", "logreg")  # the models that take sparse rows as they are and become one linear layer
RBF_C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)  # a kernel SVM's margin: wider values than a linear one's
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
K_GRID = (1, 3, 5, 7, 11, 15, 21)
# Used when a class has too few training images to cross-validate.
DEFAULTS: dict[str, dict[str, Any]] = {
    "svm": {"C": 1e-2}, "rbf": {"C": 10.0}, "logreg": {"C": 1e-1}, "ridge": {"alpha": 10.0}, "knn": {"k": 5},
}


@dataclass
class FittedClassifier:
    kind: str  # "svm" | "rbf" | "logreg" | "knn" | "ridge"
    head: nn.Module  # (B, D) features -> (B, C) logits, deciding as the fitted scikit-learn model does
    params: dict[str, Any]  # the chosen hyper-parameters
    cv_accuracy: float | None  # mean cross-validated accuracy of the chosen parameters (None: not cross-validated)
    folds: int  # 0 when there were too few images per class to cross-validate
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every candidate: params, mean and std accuracy
    estimator: Any = None  # the scikit-learn model itself, for users who want it

    def describe(self) -> str:
        chosen = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        if not self.folds:
            return f"{self.kind} ({chosen}, default: too few images per class to cross-validate)"
        return f"{self.kind} ({chosen}, chosen by {self.folds}-fold cross-validation, accuracy {self.cv_accuracy:.2%})"


def check_features(x: Any, y: np.ndarray, classes: list[str]) -> None:
    """The causes that make a classifier impossible to fit, as errors that name them (`x` dense, or scipy sparse)."""
    present = set(np.unique(y).tolist())
    if len(present) < 2:
        only = classes[next(iter(present))] if present else "none"
        raise DataError(
            f"the training split holds images of a single class ({only}): a classifier needs examples of at "
            "least two classes; add images of the others"
        )
    absent = [classes[i] for i in range(len(classes)) if i not in present]
    if absent:
        raise DataError(
            f"classes with no training images: {', '.join(absent)}; a classifier cannot learn a class it never "
            "saw: add training images for them (or remove their folders)"
        )
    if issparse(x):
        return
    if not np.isfinite(x).all():
        raise DataError("the features contain NaN or infinite values: the network's output at this layer is not usable")
    if x.shape[0] and float(np.ptp(x, axis=0).max()) == 0.0:
        raise DataError(
            f"all {x.shape[0]} feature vectors are identical, so no classifier can tell the images apart: the "
            "layer's output does not depend on the image (choose another --layer), or the images are all the same"
        )


def _pipeline(kind: str, params: dict[str, Any], seed: int, shape: tuple[int, int], sparse: bool = False) -> Any:
    """The scikit-learn model of `kind` for features of `shape` (N, D), standardised first (unit vectors for k-NN;
    sparse rows, such as TF-IDF, as they are)."""
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC, LinearSVC

    n, dim = shape
    if kind == "knn":  # unit vectors: Euclidean neighbours are cosine neighbours, as in KNNHead
        return Pipeline([("scale", Normalizer()), ("clf", KNeighborsClassifier(n_neighbors=params["k"]))])
    clf = {
        # liblinear's dual solver unless there are far more examples than dimensions: on FSDD's 2,700 EfficientNet
        # features (1,280 dimensions) the primal one took 299 s at C=0.1 against 13 s (scikit-learn's "auto" picks
        # primal whenever N > D); on its 60 MFCC statistics the primal one is the faster (0.1 s against 1.4 s at C=1)
        "svm": lambda: LinearSVC(C=params["C"], max_iter=20000, dual=n < 10 * dim, random_state=seed),
        # one-vs-rest, so each class's decision is one kernel expansion that RBFHead computes exactly; gamma 1/D is
        # scikit-learn's "scale" for standardised features (variance 1), given explicitly so the head can use it
        "rbf": lambda: OneVsRestClassifier(SVC(kernel="rbf", C=params["C"], gamma=1.0 / dim)),
        "logreg": lambda: LogisticRegression(C=params["C"], max_iter=2000),
        "ridge": lambda: RidgeClassifier(alpha=params["alpha"]),
    }[kind]()
    return Pipeline([("clf", clf)] if sparse else [("scale", StandardScaler()), ("clf", clf)])


def _candidates(kind: str, n_smallest_fold: int, sparse: bool = False) -> list[dict[str, Any]]:
    if sparse:
        return [{"C": c} for c in SPARSE_C_GRID]
    if kind == "knn":
        return [{"k": k} for k in K_GRID if k <= n_smallest_fold] or [{"k": 1}]
    if kind == "ridge":
        return [{"alpha": a} for a in ALPHA_GRID]
    return [{"C": c} for c in (RBF_C_GRID if kind == "rbf" else C_GRID)]


def fit_classifier(
    kind: str, x: Any, y: np.ndarray, classes: list[str], *, folds: int = 5, seed: int = 0
) -> FittedClassifier:
    """Choose the hyper-parameter by stratified k-fold cross-validation on (x, y), refit on all of it. `x`: dense
    (N, D), or a scipy sparse matrix (TF-IDF), which only `svm` and `logreg` take."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    sparse = issparse(x)
    if sparse and kind not in SPARSE_KINDS:
        raise ConfigError(f"--classifier {kind} needs dense features; on TF-IDF n-grams use {' or '.join(SPARSE_KINDS)}")
    x = x.astype(np.float32) if sparse else np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    check_features(x, y, classes)
    smallest = int(np.bincount(y, minlength=len(classes)).min())
    folds = min(folds, smallest)
    table: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        # a few non-converged fits at extreme strengths are normal in a grid; the chosen one is checked below
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds >= 2:
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            train_fold = len(y) - len(y) // folds - 1
            for params in _candidates(kind, train_fold, sparse):
                scores = cross_val_score(_pipeline(kind, params, seed, x.shape, sparse), x, y, cv=splitter, scoring="accuracy")
                table.append({**params, "mean_accuracy": float(scores.mean()), "std_accuracy": float(scores.std())})
            # ties go to the strongest regularisation (smallest C, largest alpha, largest k): the simpler model
            best = max(table, key=lambda r: (round(r["mean_accuracy"], 6), -r.get("C", 0), r.get("alpha", 0), r.get("k", 0)))
            params = {k: v for k, v in best.items() if k not in ("mean_accuracy", "std_accuracy")}
            cv_accuracy: float | None = best["mean_accuracy"]
        else:
            folds, params, cv_accuracy = 0, ({"C": 1.0} if sparse else dict(DEFAULTS[kind])), None
            if kind == "knn":
                params["k"] = min(params["k"], len(y))
            logger.warning(
                f"a class has only {smallest} training image(s): too few to cross-validate; {kind} uses the "
                f"default {params}"
            )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator = _pipeline(kind, params, seed, x.shape, sparse).fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        logger.warning(f"the {kind} classifier ({params}) did not fully converge; its predictions may be slightly off")
    head = to_torch_head(estimator, kind, params, x, y, len(classes))
    return FittedClassifier(kind, head, params, cv_accuracy, folds, table, estimator)


def to_torch_head(estimator: Any, kind: str, params: dict[str, Any], x: np.ndarray, y: np.ndarray, num_classes: int) -> nn.Module:
    """The fitted pipeline as a torch module that gives the same decisions on the same features."""
    if kind == "knn":
        head = KNNHead(x.shape[1], num_classes, x.shape[0], params["k"])
        head.bank.copy_(nn.functional.normalize(torch.from_numpy(x), dim=1))
        head.bank_labels.copy_(torch.from_numpy(y))
        return head
    scaler, clf = estimator.named_steps.get("scale"), estimator["clf"]
    if kind == "rbf":
        return _rbf_head(scaler, clf, x.shape[1], num_classes)
    # (C, D), or one row for two classes: (1, D) for LinearSVC / LogisticRegression, but (D,) for RidgeClassifier
    w = np.atleast_2d(np.asarray(clf.coef_, dtype=np.float64))
    b = np.asarray(clf.intercept_, dtype=np.float64).reshape(-1)
    if w.shape[0] == 1:
        # two classes: one decision d for the second; logits (-d/2, d/2) give softmax = sigmoid(d), as logreg does
        w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
    if scaler is not None:  # fold the standardisation in: w . (x - mean) / scale + b = (w / scale) . x + (b - (w / scale) . mean)
        w = w / scaler.scale_
        b = b - w @ scaler.mean_
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
        linear.bias.copy_(torch.from_numpy(b))
    return linear


def _rbf_head(scaler: Any, ovr: Any, dim: int, num_classes: int) -> nn.Module:
    """A fitted one-vs-rest RBF SVM as an RBFHead: every binary machine's support vectors stacked, each with its dual
    coefficient in its class's column (two classes: one machine, whose decision d becomes the logits (-d/2, d/2))."""
    machines = ovr.estimators_
    supports = np.concatenate([m.support_vectors_ for m in machines])  # (N, D)
    coef = np.zeros((len(supports), num_classes))
    intercept = np.zeros(num_classes)
    row = 0
    for c, machine in enumerate(machines):
        n = len(machine.support_vectors_)
        coef[row : row + n, c] = machine.dual_coef_[0]
        intercept[c] = machine.intercept_[0]
        row += n
    if len(machines) == 1:
        coef = np.concatenate([-coef[:, :1] / 2, coef[:, :1] / 2], axis=1)
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    head = RBFHead(dim, num_classes, len(supports))
    with torch.no_grad():
        for buffer, value in ((head.mean, scaler.mean_), (head.scale, scaler.scale_), (head.support, supports),
                              (head.coef, coef), (head.intercept, intercept)):
            buffer.copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32))
        head.gamma.fill_(1.0 / dim)
    return head


@torch.inference_mode()
def head_probabilities(head: nn.Module, x: Any, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (N, C) of a fitted head on features `x`, dense or sparse (made dense a batch at a time)."""
    chunks = [x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]
    out = [head(torch.from_numpy(c.toarray() if issparse(c) else np.asarray(c, dtype=np.float32))).softmax(1) for c in chunks]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)
