"""`deepfit quickstart`: the whole job on an embedded data set, in under a minute on a laptop CPU.

The data are the 1,797 handwritten digits (8x8 grey images, 10 classes) that ship inside
scikit-learn, written out once as PNG class folders to the cache, so the run reads them exactly as
it would read a user's own images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from deepfit.fileio import cache_dir
from deepfit.presets import apply_preset


def digits_folder(root: Path | None = None) -> Path:
    """Write scikit-learn's digits as `digits/<class>/<index>.png` (once) and return the folder."""
    from sklearn.datasets import load_digits

    folder = (root or cache_dir()) / "digits"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        class_dir = folder / str(label)
        class_dir.mkdir(parents=True, exist_ok=True)
        pixels = (image / 16.0 * 255.0).round().astype(np.uint8)  # values 0..16 -> 0..255
        Image.fromarray(pixels, mode="L").save(class_dir / f"{i:04d}.png")
    marker.write_text("written by deepfit quickstart\n")
    return folder


def quickstart(output: str = "runs", **overrides):  # noqa: ANN201 - returns (TrainResult, Evaluation)
    from deepfit.workflows.evaluate import evaluate
    from deepfit.workflows.train import train

    data = digits_folder()
    config = apply_preset("quickstart", {"output": output, "name": "quickstart", **overrides})
    result = train(data, config)
    evaluation = evaluate(result.run_dir)
    return result, evaluation
