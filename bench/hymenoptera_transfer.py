"""Transfer learning on hymenoptera (ants vs bees, 245 train / 153 val photos) from local ImageNet weights.

    uv run python bench/hymenoptera_transfer.py

Fine-tunes timm's tf_efficientnet_lite0 from ../shared/weights/tf_efficientnet_lite0.safetensors with the
`finetune` preset on the CPU and reports validation accuracy and wall time (target: >= 94% within 3 minutes).
"""

from __future__ import annotations

import tempfile
import time

from deepfit.presets import apply_preset
from deepfit.workflows.train import train

from common import SHARED, record, unpack


def main() -> None:
    data = unpack("hymenoptera.tar", "hymenoptera")
    weights = SHARED / "weights" / "tf_efficientnet_lite0.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        config = apply_preset("finetune", {"model": "tf_efficientnet_lite0", "weights": str(weights), "output": tmp})
        started = time.perf_counter()
        result = train(data, config)
        wall = time.perf_counter() - started
    record(
        "hymenoptera_transfer", "Transfer learning: hymenoptera from tf_efficientnet_lite0 ImageNet weights (CPU)",
        f"""
`--preset finetune`: {config.head_epochs} head-only epochs on the frozen backbone, then {config.epochs - config.head_epochs}
epochs of the whole network (pretrained layers at {config.backbone_lr_scale}x the learning rate), 224 px, batch {config.batch_size}.

| figure | value |
|---|---|
| best validation accuracy (153 images) | **{result.best_val_acc:.2%}** (target >= 94%) |
| wall time of `train`, including decoding and model loading | **{wall:.0f} s** (target <= 180 s) |
""",
    )


if __name__ == "__main__":
    main()
