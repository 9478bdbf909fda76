"""CIFAR-10 (shared, 50,000 train / 10,000 test images): tf_efficientnet_lite0 ImageNet features + logistic
regression, accuracy and total time on the CPU.

    uv run python bench/features_cifar10.py [--image-size 128]

The 32 px images are upscaled to the network's input size; 128 px (rather than the weights' 224 px) keeps
the extraction of 60,000 images near 7 minutes on 2 cores. The regularisation strength C is chosen by
3-fold cross-validation on all 50,000 training images (no validation split is carved out: the
cross-validation does the tuning), and the data's test split is scored once at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from deepfit.config import FeaturesConfig
from deepfit.workflows.features import fit_features

from common import SHARED, record, unpack


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--cv-folds", type=int, default=3)
    args = parser.parse_args()
    data = unpack("cifar10.tar.gz", "cifar10")
    weights = str(SHARED / "weights" / "tf_efficientnet_lite0.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DEEPFIT_CACHE"] = os.path.join(tmp, "cache")  # cold cache
        config = FeaturesConfig(
            model="tf_efficientnet_lite0", weights=weights, classifier="logreg", image_size=args.image_size,
            cv_folds=args.cv_folds, output=tmp, batch_size=128, val_fraction=0.0,
        )
        started = time.perf_counter()
        result = fit_features(data, config)
        wall = time.perf_counter() - started
    feats = result.features
    record(
        "features_cifar10", "Feature extraction: CIFAR-10, tf_efficientnet_lite0 features + logistic regression (CPU)",
        f"""
`deepfit features cifar10 --model tf_efficientnet_lite0 --weights tf_efficientnet_lite0.safetensors --classifier logreg
--image-size {args.image_size} --cv-folds {args.cv_folds}`: pre-logits embedding ({feats.features.shape[1]} dimensions) of the
32 px images upscaled to {args.image_size} px; {result.classifier.describe()}.

| figure | value |
|---|---|
| test accuracy (10,000 images, scored once) | **{result.evaluation.metrics['accuracy']:.2%}** |
| feature extraction of {len(feats)} images (decoding included, cold cache) | {feats.seconds:.0f} s ({len(feats) / feats.seconds:.0f} images/s) |
| total wall time of `fit_features` (extraction, cross-validation, fit, report) | **{wall:.0f} s** |
""",
    )


if __name__ == "__main__":
    main()
