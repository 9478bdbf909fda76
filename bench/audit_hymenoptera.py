"""The data audit on hymenoptera (ants vs bees, 245 train / 153 val photos): what it finds, with tf_efficientnet_lite0
ImageNet embeddings and with the hand-made features (no network), and how long it takes.

    uv run python bench/audit_hymenoptera.py

The data holds one known non-photo, train/ants/imageNotFound.gif (shared/data/README.md): the audit must list it.
Nothing here is planted: the findings are the data's own, listed for a person to look at.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from deepfit.workflows.audit import audit_data

from common import SHARED, record, unpack

JUNK = "imageNotFound.gif"


def run(data: Path, output: Path, model: str, weights: str | None) -> tuple[object, float]:
    started = time.perf_counter()
    found = audit_data(data, model=model, weights=weights, output=output, name=model, device="cpu")
    return found, time.perf_counter() - started


def rank_of(names: list[str], name: str) -> str:
    return f"{names.index(name) + 1} of {len(names)}" if name in names else f"not among {len(names)}"


def main() -> None:
    data = unpack("hymenoptera.tar", "hymenoptera")
    weights = str(SHARED / "weights" / "tf_efficientnet_lite0.safetensors")
    rows, details = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model, w in (("tf_efficientnet_lite0", weights), ("handmade", None)):
            found, seconds = run(data, Path(tmp), model, w)
            outliers = [found.items[i].path.name for i, _ in found.outlier_items()]
            order = [found.items[found.embedded[k]].path.name for k in found.issues.candidates]
            flagged = [found.items[i] for i in found.flagged_labels()]
            cross = found.cross_split()
            rows.append(f"| {model} | {seconds:.0f} s | {len(found.pairs)} ({len(cross)} across splits) | {len(flagged)} | "
                        f"{rank_of(outliers, JUNK)} | {rank_of(order, JUNK)} |")
            if model == "tf_efficientnet_lite0":
                details.append("Duplicate pairs (image pHash within 6 bits, or embeddings at cosine >= 0.97):\n")
                details += [f"- `{found.items[p.first].path.relative_to(data)}` ({found.items[p.first].split}) and "
                            f"`{found.items[p.second].path.relative_to(data)}` ({found.items[p.second].split}): {p.kind}, "
                            f"{p.score:.3g}" for p in found.pairs] or ["- none"]
                details.append("\nLikely label errors flagged by confident learning (given label -> the model's suggestion):\n")
                details += [f"- `{item.path.relative_to(data)}`: {item.label} -> "
                            f"{found.classes[found.issues.suggested[k]]}" for item, k in zip(flagged, found.issues.ranked, strict=True)] or ["- none"]
                details.append(f"\nThe {len(outliers)} most atypical photos (cleanlab's out-of-distribution score on the embeddings):\n")
                details += [f"- `{found.items[i].path.relative_to(data)}` ({score:.3f})" for i, score in found.outlier_items()]
    body = (
        "`deepfit data audit` on hymenoptera as shipped (train/ and val/ folders; the audit holds 15% of train out as "
        "validation, as `deepfit train` would). The known non-photo `train/ants/imageNotFound.gif` must be found: its "
        "rank among the outliers listed, and among all photos ranked by label quality, says whether it is.\n\n"
        "| embeddings | wall time (2 cores; embeddings reused from the feature cache of an earlier run) | duplicate pairs | likely label errors | imageNotFound.gif among outliers | "
        "its rank by label quality |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\nWith tf_efficientnet_lite0:\n\n"
        + "\n".join(details)
    )
    record("audit-hymenoptera", "Data audit: hymenoptera", body)


if __name__ == "__main__":
    main()
