"""The README's pictures of explanations (docs/explain/*.png), one of each kind, made again from scratch.

    uv run python bench/explain_pictures.py [--runs DIR]     # DIR keeps the trained runs between invocations

Each picture comes from a short CPU training on the shared data, then `deepfit explain` on one held-out input:

- image.png    tf_efficientnet_lite0 (shared ImageNet weights) fine-tuned 1 epoch on hymenoptera; a val bee
- detect.png   fasterrcnn:tv/mobilenet_v2 trained on made-up scenes of red squares and blue discs on noise (a
               detector trained on coco128 for 12 epochs on this CPU reaches 0.008 box mAP: BENCHMARKS.md), a map
               per object (16 epochs on 96 scenes)
- segment.png  unet:tv/mobilenet_v2 (shared weights) on the membrane images (24 train), 30 epochs; the cells
               (class "foreground", white in its labels) of a test image
- sound.png    soundcnn on the spoken digits (fsdd), 4 epochs; a held-out clip over its spectrogram
- text.png     the bag of n-grams on the SMS spam collection, 5 epochs at lr 0.01; a made-up spam message's token scores

Not a benchmark: nothing is timed. Takes about ten minutes on two cores.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from deepfit.config import TrainConfig
from deepfit.workflows.explain import explain
from deepfit.workflows.train import train

from common import REPO, SHARED, unpack
from segmentation import membrane_split
from sound_fsdd import usual_split

WEIGHTS = SHARED / "weights"
OUT = REPO / "docs" / "explain"


def scenes(root: Path, per_split: dict[str, int], size: int = 160) -> Path:
    """YOLO-layout scenes: 1-3 red squares and blue discs of 24-48 px on smooth noise, boxes in labels/."""
    rng = np.random.default_rng(0)
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("names: [square, disc]\n")
    for split, n in per_split.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise = rng.integers(60, 200, (size // 8, size // 8, 3), dtype=np.uint8)
            picture = Image.fromarray(noise).resize((size, size), Image.Resampling.BICUBIC)
            draw, lines = ImageDraw.Draw(picture), []
            for _ in range(int(rng.integers(1, 4))):
                kind, side = int(rng.integers(0, 2)), int(rng.integers(24, 49))
                x, y = int(rng.integers(0, size - side)), int(rng.integers(0, size - side))
                box = (x, y, x + side, y + side)
                (draw.rectangle if kind == 0 else draw.ellipse)(box, fill=(220, 40, 40) if kind == 0 else (40, 60, 220))
                lines.append(f"{kind} {(x + side / 2) / size} {(y + side / 2) / size} {side / size} {side / size}")
            picture.save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    return root


def runs(output: Path) -> dict[str, Path]:
    """The five runs, trained into `output` (or reused from it)."""
    common = {"output": str(output), "workers": 2, "seed": 0}
    made = {}

    def run(name: str, data: Path, **options: object) -> Path:
        if not (output / name / "best.safetensors").is_file():
            train(data, TrainConfig(name=name, **common, **options))
        made[name] = output / name
        return made[name]

    run("image", unpack("hymenoptera.tar", "hymenoptera"), model="tf_efficientnet_lite0", epochs=1,
        weights=str(WEIGHTS / "tf_efficientnet_lite0.safetensors"))
    run("detect", scenes(output / "scenes", {"train": 96, "val": 16}), task="detect", model="fasterrcnn:tv/mobilenet_v2",
        weights=str(WEIGHTS / "mobilenet_v2.safetensors"), image_size=160, epochs=16)
    run("segment", membrane_split(), task="segment", model="unet:tv/mobilenet_v2", weights=str(WEIGHTS / "mobilenet_v2.safetensors"),
        epochs=30, val_fraction=0.0)
    run("sound", usual_split(unpack("fsdd.tar.gz", "fsdd")), modality="sound", model="soundcnn", epochs=4)
    run("text", SHARED / "data" / "sms_spam.tsv", modality="text", model="bag", epochs=5, lr=0.01)
    return made


def held_out(run: Path, root: Path, label: str | None = None) -> str:
    """The first held-out input of the run (test split, else validation; of class `label` if given), from its split.csv
    (paths relative to the data folder `root`)."""
    with (run / "split.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if label in (None, r["label"])]
    for split in ("test", "val"):
        kept = [r["path"] for r in rows if r["split"] == split]
        if kept:
            return str(root / kept[0])
    raise SystemExit(f"{run} holds no test or validation inputs")


def save(picture: np.ndarray, path: Path, side: int = 400) -> None:
    """A picture for the README, at most `side` pixels high (a 512 px segmentation overlay is half a megabyte)."""
    image = Image.fromarray(picture)
    if image.height > side:
        image = image.resize((round(image.width * side / image.height), side), Image.Resampling.LANCZOS)
    image.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", help="a folder to keep the trained runs in and reuse them from (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.runs) if args.runs else Path(tmp)
        made = runs(folder)
        OUT.mkdir(parents=True, exist_ok=True)
        picks = {
            "image": ([held_out(made["image"], unpack("hymenoptera.tar", "hymenoptera"), "bees")], {}),
            "detect": ([str(folder / "scenes" / "images" / "val" / "0.png")], {"max_objects": 1}),
            "segment": ([str(membrane_split() / "test" / "image" / "24.png")], {"target": "foreground"}),
            "sound": ([held_out(made["sound"], unpack("fsdd.tar.gz", "fsdd"))], {}),
        }
        for name, (inputs, options) in picks.items():
            found, _ = explain(made[name], inputs, output=Path(tmp) / f"explained-{name}", **options)
            save(found[0].picture, OUT / f"{name}.png")
            print(f"{name}: {found[0].source} -> {found[0].target} {found[0].probability:.0%} ({found[0].method}, {found[0].layer})")
        message = "WINNER!! You have won a 1000 cash prize. Call 09061701461 now to claim, valid 12 hours only"
        found, _ = explain(made["text"], texts=[message], output=Path(tmp) / "explained-text")
        save(found[0].picture, OUT / "text.png")
        print(f"text: {found[0].target} {found[0].probability:.0%}: {found[0].tokens}")


if __name__ == "__main__":
    main()
