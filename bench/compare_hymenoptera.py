"""`deepfit compare` on hymenoptera (ants vs bees): hand-made features + SVM, tf_efficientnet_lite0 features
+ SVM and lite0 fine-tuned, on 10/25/50/100% of the 245 training photos, scored on the 153 validation photos
(the data has no test split). Target: the whole comparison within 10 minutes on the 2-core CPU.

    uv run python bench/compare_hymenoptera.py

The learning-curve plots are copied to bench/results/ and shown in BENCHMARKS.md.
"""

from __future__ import annotations

import shutil
import tempfile
import time

from deepfit.workflows.compare import compare

from common import REPO, SHARED, record, unpack


def main() -> None:
    data = unpack("hymenoptera.tar", "hymenoptera")
    weights = SHARED / "weights" / "tf_efficientnet_lite0.safetensors"
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = compare(data, models=[f"tf_efficientnet_lite0={weights}"], output=tmp, name="compare")
        wall = time.perf_counter() - started
        for png in ("accuracy_vs_size.png", "accuracy_vs_time.png"):
            shutil.copy(result.folder / png, results / f"compare_hymenoptera_{png}")
    table = "\n".join(
        f"| {r['approach']} | {r['train_images']} ({r['fraction']:.0%}) | {r['accuracy']:.2%} | {r['seconds']:.1f} s |"
        for r in result.rows
    )
    verdict = "\n".join(f"> {line}" for line in result.verdict)
    record(
        "compare_hymenoptera", "`deepfit compare` on hymenoptera (CPU)",
        f"""
Hand-made features + SVM, tf_efficientnet_lite0 features + SVM, lite0 fine-tuned (`finetune` preset, no validation
split: the last epoch is kept), each on nested 10/25/50/100% fractions of the training photos, all scored on the same
{result.test_images} validation photos.

**Wall time of the whole comparison: {wall:.0f} s** (target <= 600 s).

| approach | training photos | test accuracy | wall time to train |
|---|---|---|---|
{table}

Verdict, as deepfit printed it:

{verdict}

![accuracy against training-set size](bench/results/compare_hymenoptera_accuracy_vs_size.png)
![accuracy against wall time](bench/results/compare_hymenoptera_accuracy_vs_time.png)
""",
    )


if __name__ == "__main__":
    main()
