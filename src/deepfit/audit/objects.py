"""Checks of the objects inside images: boxes and masks that are degenerate, duplicated, or far outside the usual
size of their class. The readers already refuse what cannot be an object (a box of no area, a polygon of two points);
what is left here can be trained on, but is more likely an annotation slip than a real object.

A size is unusual when its log lies more than OUTLIER_Z robust standard deviations (1.4826 x the median absolute
deviation) from its class's median: robust, so a class's few wrong sizes cannot hide themselves by widening the spread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

MIN_SIDE = 2.0  # px: a box thinner than this is a click, not an object
MAX_ASPECT = 20.0
SAME_BOX_IOU = 0.9  # two boxes of one class overlapping this much in one image: labelled twice
OUTLIER_Z = 3.5
MIN_CLASS_OBJECTS = 8  # fewer objects than this say nothing of a class's usual size
MIN_MASK_SHARE = 0.05  # an instance mask covering less of its box than this is a slip of the pen
MIN_REGION_PX = 16  # segmentation: a class present with fewer pixels is a speck, likely a stray brush stroke


@dataclass(frozen=True)
class Finding:
    item: int  # the item (image) index
    kind: str  # "tiny box", "duplicate box", "unusual size", ...
    detail: str
    label: str = ""  # the class concerned
    obj: int | None = None  # the object's index in its image, where there is one


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 x MAD); zeros when the spread is nil."""
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return (values - median) / mad if mad > 0 else np.zeros_like(values)


def box_findings(boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray], classes: Sequence[str]) -> list[Finding]:
    """Boxes (per image (N, 4) x1 y1 x2 y2 px, labels (N,)) that are tiny, needle-thin, doubled or of unusual size."""
    found: list[Finding] = []
    areas: dict[int, list[tuple[float, int, int]]] = {}  # class -> (log area, image, object)
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        overlaps = box_iou(torch.from_numpy(b), torch.from_numpy(b)).numpy()  # (N, N)
        for j in range(len(b)):
            name = classes[int(lab[j])]
            if min(w[j], h[j]) < MIN_SIDE:
                found.append(Finding(i, "tiny box", f"{w[j]:.1f} x {h[j]:.1f} px", name, j))
            elif max(w[j], h[j]) / min(w[j], h[j]) > MAX_ASPECT:
                found.append(Finding(i, "needle box", f"{w[j]:.0f} x {h[j]:.0f} px (over {MAX_ASPECT:.0f}:1)", name, j))
            for k in range(j + 1, len(b)):
                if lab[k] == lab[j] and overlaps[j, k] >= SAME_BOX_IOU:
                    found.append(Finding(i, "duplicate box", f"objects {j} and {k} overlap {overlaps[j, k]:.0%} (IoU)", name, k))
            if w[j] > 0 and h[j] > 0:
                areas.setdefault(int(lab[j]), []).append((float(np.log(w[j] * h[j])), i, j))
    found += _unusual_sizes(areas, classes, "box area", lambda v: f"{np.exp(v):,.0f} px²")
    return found


def mask_findings(shares: Sequence[tuple[int, int, str, float]]) -> list[Finding]:
    """Instance masks (image, object, class, share of its box the mask covers) that are empty or nearly so."""
    return [Finding(i, "empty mask" if s == 0 else "thin mask", f"covers {s:.1%} of its box", name, j)
            for i, j, name, s in shares if s < MIN_MASK_SHARE]


def region_findings(counts: np.ndarray, classes: Sequence[str], ignore_only: Sequence[int] = ()) -> list[Finding]:
    """Semantic masks, from (N, K) pixels of each class per image: masks with no labelled pixel, specks of a class, and a
    class covering far more or less of an image than it usually does (first class, the background, left out)."""
    found = [Finding(i, "empty mask", "every pixel is ignored (no label at all)") for i in ignore_only]
    counts = np.asarray(counts)
    shares: dict[int, list[tuple[float, int, int]]] = {}
    for i, row in enumerate(counts):
        total = row.sum()
        for c in np.flatnonzero(row[1:]) + 1:  # the background's share says nothing of objects
            if row[c] < MIN_REGION_PX:
                found.append(Finding(i, "speck", f"{int(row[c])} px of {classes[c]}", classes[c]))
            else:
                shares.setdefault(int(c), []).append((float(np.log(row[c] / total)), i, -1))
    found += _unusual_sizes(shares, classes, "share of the image", lambda v: f"{np.exp(v):.1%}")
    return found


def _unusual_sizes(values: dict[int, list[tuple[float, int, int]]], classes: Sequence[str], what: str,
                   show: Callable[[float], str]) -> list[Finding]:
    found = []
    for c, rows in values.items():
        if len(rows) < MIN_CLASS_OBJECTS:
            continue
        logs = np.array([r[0] for r in rows])
        z = robust_z(logs)
        usual = float(np.median(logs))
        for (v, i, j), zi in zip(rows, z, strict=True):
            if abs(zi) > OUTLIER_Z:
                side = "larger" if zi > 0 else "smaller"
                found.append(Finding(i, "unusual size", f"{what} {show(v)}, far {side} than the class's usual {show(usual)}",
                                     classes[c], None if j < 0 else j))
    return found
