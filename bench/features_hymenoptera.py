"""Feature extraction on hymenoptera (ants vs bees, 245 train / 153 val photos): tf_efficientnet_lite0
ImageNet features + a linear SVM, and the speed of deepfit's extraction against a bare loop.

    uv run python bench/features_hymenoptera.py

1. `fit_features` with a fresh (empty) feature cache: validation accuracy (the data has no test split; the
   SVM's C is chosen by cross-validation on the training split, so validation is unseen), extraction rate
   from the JPEG files (decoding included), and total wall time. A second classifier (logreg) then runs
   on the cached features.
2. Speed on the *same preprocessed tensors*: every photo decoded once to the model's storage size, then
   (a) deepfit's `extract_batch` (centre crop + normalise + network, as the workflow runs it) and
   (b) a bare `model.forward_features` loop over the already cropped and normalised float tensors, in
   both memory layouts. Alternating repeats; the ratio is deepfit / the faster bare loop.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch

from deepfit.config import FeaturesConfig
from deepfit.data.sources import discover
from deepfit.modalities.image.augment import BatchTransform
from deepfit.modalities.image.store import ImageStore
from deepfit.models.factory import create_model
from deepfit.models.features import FeatureExtractor
from deepfit.workflows.extraction import extract_batch
from deepfit.workflows.features import fit_features

from common import SHARED, record, unpack

BATCH = 64
REPEATS = 3


def speed(weights: str, data) -> dict[str, list[float]]:
    catalog = discover(data)
    created = create_model("tf_efficientnet_lite0", 2, weights=weights)
    prep = created.preprocessing
    store, _ = ImageStore.load([f.path for f in catalog.files], [0] * len(catalog.files), prep.resize_size, workers=1)
    model = created.model.eval()
    extractor = FeatureExtractor(model)
    cpu = torch.device("cpu")
    plain = BatchTransform(prep.image_size, prep.mean, prep.std, "none")
    ready = plain(store.images)  # (N, 3, 224, 224) float, cropped and normalised once
    ready_cl = ready.contiguous(memory_format=torch.channels_last)
    deepfit_tf = BatchTransform(prep.image_size, prep.mean, prep.std, "none", channels_last=True)
    n = len(store)

    def run(name: str) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, n, BATCH):
                if name == "deepfit":
                    extract_batch(extractor, deepfit_tf, store.images[s : s + BATCH], cpu, "fp32")
                elif name == "bare":
                    model.forward_features(ready[s : s + BATCH])
                else:
                    model.forward_features(ready_cl[s : s + BATCH])
        return n / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {"deepfit": [], "bare": [], "bare_cl": []}
    for _ in range(REPEATS):
        for name in rates:
            if name == "deepfit":
                model.to(memory_format=torch.channels_last)
            elif name == "bare":
                model.to(memory_format=torch.contiguous_format)
            else:
                model.to(memory_format=torch.channels_last)
            run(name) if not rates[name] else None  # warm-up in this layout, first repeat only
            rates[name].append(run(name))
    return rates


def main() -> None:
    data = unpack("hymenoptera.tar", "hymenoptera")
    weights = str(SHARED / "weights" / "tf_efficientnet_lite0.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DEEPFIT_CACHE"] = os.path.join(tmp, "cache")  # cold cache: every image is extracted
        config = FeaturesConfig(model="tf_efficientnet_lite0", weights=weights, classifier="svm", output=tmp)
        started = time.perf_counter()
        svm = fit_features(data, config)
        wall = time.perf_counter() - started
        started = time.perf_counter()
        logreg = fit_features(data, FeaturesConfig(model="tf_efficientnet_lite0", weights=weights, classifier="logreg", output=tmp))
        wall_logreg = time.perf_counter() - started
    n = len(svm.features)
    rates = speed(weights, data)
    mean = {k: statistics.mean(v) for k, v in rates.items()}
    best_bare = max(mean["bare"], mean["bare_cl"])
    each = {k: ", ".join(f"{r:.1f}" for r in v) for k, v in rates.items()}
    record(
        "features_hymenoptera", "Feature extraction: hymenoptera, tf_efficientnet_lite0 features + SVM (CPU)",
        f"""
`deepfit features DATA --model tf_efficientnet_lite0 --weights tf_efficientnet_lite0.safetensors --classifier svm`:
pre-logits embedding (1280 dimensions), 224 px, linear SVM with C chosen by {svm.classifier.folds}-fold cross-validation on the
{len(svm.features.paths_of('train'))} training photos ({svm.classifier.describe()}).

| figure | value |
|---|---|
| validation accuracy, SVM (153 images, not used for fitting or tuning) | **{svm.evaluation.metrics['accuracy']:.2%}** (target >= 93%) |
| validation accuracy, logistic regression on the cached features | {logreg.evaluation.metrics['accuracy']:.2%} |
| extraction from the JPEG files, cold cache ({n} photos, decoding included) | {n / svm.features.seconds:.1f} images/s ({svm.features.seconds:.1f} s) |
| wall time of `fit_features` (svm), cold cache | {wall:.0f} s |
| wall time of `fit_features` (logreg), all {logreg.features.reused} features reused from the cache | {wall_logreg:.0f} s |

Speed on the same preprocessed tensors ({n} photos decoded once to {256} px storage; batch {BATCH}; {REPEATS} alternating repeats):

| loop | images/s (mean) | each repeat |
|---|---|---|
| deepfit `extract_batch` (crop + normalise + network, channels-last) | {mean['deepfit']:.1f} | {each['deepfit']} |
| bare `model.forward_features` on ready float tensors, default layout | {mean['bare']:.1f} | {each['bare']} |
| bare `model.forward_features` on ready float tensors, channels-last | {mean['bare_cl']:.1f} | {each['bare_cl']} |

**Ratio deepfit / faster bare loop: {mean['deepfit'] / best_bare:.2f}** (target >= 0.9); against the bare loop in the
default layout, which is what a plain PyTorch user writes: {mean['deepfit'] / mean['bare']:.2f}.
""",
    )


if __name__ == "__main__":
    main()
