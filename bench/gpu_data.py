"""Data for bench/gpu.py: the shared archives unpacked, tiny generated stand-ins for --smoke, and the slimmed
copies of the archives that travel to the device machine.

The device machine gets a copy of the working tree only (../shared stays behind), and what travels is
limited to 64 MiB in all, so bench/gpu_prepare.sh calls `python3 bench/gpu_data.py slice SHARED .gpu/shared`
to copy what the benchmark reads, slimmed where the whole archive is not needed, in the layout of
../shared (data/*.tar*, weights/*): the same folder then serves `gpu.py --data` and, as DEEPFIT_SHARED,
the CUDA-only tests' fixtures.
"""

from __future__ import annotations

import io
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# What travels from ../shared (bench/gpu_prepare.sh). Sliced archives keep their folder layout.
CIFAR = "cifar10.tar.gz"  # whole: time to 94% needs all 60,000 images
HYMENOPTERA = "hymenoptera.tar"  # all train photos (the JPEG data path) and 8 val photos a class (the CUDA tests' slice)
HYMENOPTERA_VAL_PER_CLASS = 8
COCO = "coco128.tar"  # sliced to COCO_IMAGES train images with their YOLO boxes (detection speed)
COCO_SLICE = "coco128-slice.tar"
COCO_IMAGES = 24
MEMBRANE = "membrane.tar"  # sliced to MEMBRANE_PAIRS image/mask pairs (segmentation speed)
MEMBRANE_PAIRS = 16
WEIGHTS = ("tf_efficientnet_lite0.safetensors",)  # the CUDA feature-extraction test loads these


@dataclass
class Data:
    """Where each section's data is, unpacked or generated."""

    cifar: Path  # train/<class>/*.jpg and test/<class>/*.jpg
    photos: list[Path]  # JPEG photos for the ResNet-50 data path
    detection: Path  # YOLO boxes: config.yaml (or data.yaml), images/, labels/
    membrane: Path  # image/N.png and label/N.png (0/255 masks)
    shared: Path | None  # a folder in the layout of ../shared for the CUDA tests (None: they skip what needs it)


# --- the real data -----------------------------------------------------------------------------------


def _unpack(archive: Path, work: Path, folder: str) -> Path:
    """Unpack `archive` into `work` once (a rerun on a warm machine reuses it); return work/folder."""
    target = work / folder
    if not (target.is_dir() and any(target.iterdir())):
        work.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
    return target


def locate(shared: Path, work: Path) -> Data:
    """The archives of `shared` (../shared, or .gpu/shared made by bench/gpu_prepare.sh) unpacked into `work`."""
    data = shared / "data"
    missing = [name for name in (CIFAR, HYMENOPTERA, MEMBRANE) if not (data / name).is_file()]
    coco = data / COCO_SLICE if (data / COCO_SLICE).is_file() else data / COCO
    if missing or not coco.is_file():
        raise SystemExit(f"{data} lacks {', '.join(missing + ([] if coco.is_file() else [COCO_SLICE]))}: "
                         "run bench/gpu_prepare.sh first (see bench/README.md)")
    hymenoptera = _unpack(data / HYMENOPTERA, work, "hymenoptera")
    return Data(
        cifar=_unpack(data / CIFAR, work, "cifar10"),
        photos=sorted(hymenoptera.glob("train/*/*.jpg")),
        detection=_unpack(coco, work, "coco128") / "object_detection",
        membrane=_unpack(data / MEMBRANE, work, "membrane"),
        shared=shared,
    )


# --- slimmed copies for the device machine -------------------------------------------------------------


def _copy_members(source: Path, target: Path, keep: callable) -> int:
    """Write the members of tar `source` for which keep(name) is true (folders always) into tar `target`."""
    count = 0
    with tarfile.open(source) as src, tarfile.open(target, "w") as dst:
        for member in src:
            if member.isdir() or keep(member.name):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
                count += member.isfile()
    return count


def slice_shared(shared: Path, target: Path) -> None:
    """Copy into `target` (in the layout of ../shared) what gpu.py and the CUDA tests read, slimmed to fit."""
    (target / "data").mkdir(parents=True, exist_ok=True)
    (target / "weights").mkdir(parents=True, exist_ok=True)
    shutil.copy2(shared / "data" / CIFAR, target / "data" / CIFAR)
    for name in WEIGHTS:
        shutil.copy2(shared / "weights" / name, target / "weights" / name)

    with tarfile.open(shared / "data" / HYMENOPTERA) as tar:
        val = sorted(n for n in tar.getnames() if "/val/" in n and n.endswith(".jpg"))
    first_val = {n for cls in ("ants", "bees") for n in [v for v in val if f"/val/{cls}/" in v][:HYMENOPTERA_VAL_PER_CLASS]}
    _copy_members(shared / "data" / HYMENOPTERA, target / "data" / HYMENOPTERA,
                  lambda n: "/train/" in n or n in first_val)

    with tarfile.open(shared / "data" / COCO) as tar:
        labelled = sorted(n for n in tar.getnames() if "object_detection/labels/train2017/" in n and n.endswith(".txt"))
    stems = {Path(n).stem for n in labelled[:COCO_IMAGES]}
    _copy_members(shared / "data" / COCO, target / "data" / COCO_SLICE, lambda n: n.endswith("object_detection/config.yaml")
                  or (("object_detection/labels/train2017/" in n or "images/train2017/" in n) and Path(n).stem in stems))

    _copy_members(shared / "data" / MEMBRANE, target / "data" / MEMBRANE,
                  lambda n: Path(n).stem.isdigit() and int(Path(n).stem) < MEMBRANE_PAIRS)


# --- tiny generated data for --smoke -------------------------------------------------------------------


def _jpeg(path: Path, array: np.ndarray, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())


def generate(work: Path, classes: int = 4, train: int = 16, test: int = 8) -> Data:
    """Small stand-ins for every data set, made in a second: the same layouts as the real ones."""
    rng = np.random.default_rng(0)
    cifar = work / "cifar10"
    for c in range(classes):
        tint = rng.integers(30, 226, 3)
        for split, n in (("train", train), ("test", test)):
            for i in range(n):
                pixels = np.clip(tint + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                _jpeg(cifar / split / f"class{c}" / f"{i}.jpg", pixels)

    photos = []
    for i in range(12):  # photos of a few sizes, as real ones come
        h, w = 64 + 8 * (i % 3), 80 + 4 * (i % 4)
        gradient = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3))
        path = work / "photos" / ("ants" if i % 2 else "bees") / f"{i}.jpg"
        _jpeg(path, np.clip(gradient + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))
        photos.append(path)

    detection = work / "squares"
    (detection).mkdir(parents=True, exist_ok=True)
    (detection / "data.yaml").write_text("names: [red, blue]\n")
    for i in range(8):
        image = np.full((96, 96, 3), 128, np.uint8)
        lines = []
        for k, colour in enumerate(((220, 30, 30), (30, 30, 220))):
            side, x, y = (int(v) for v in rng.integers((16, 0, 0), (32, 60, 60)))
            image[y : y + side, x : x + side] = colour
            lines.append(f"{k} {(x + side / 2) / 96} {(y + side / 2) / 96} {side / 96} {side / 96}")
        _jpeg(detection / "images" / "train" / f"{i}.jpg", image)
        (detection / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (detection / "labels" / "train" / f"{i}.txt").write_text("\n".join(lines) + "\n")

    membrane = work / "membrane"
    for i in range(6):
        mask = np.zeros((64, 64), np.uint8)
        mask[8 + i : 40 + i, 12:50] = 255
        grey = np.clip(mask * 0.6 + rng.normal(60, 20, mask.shape), 0, 255).astype(np.uint8)
        for kind, array in (("image", grey), ("label", mask)):
            (membrane / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(membrane / kind / f"{i}.png")
    return Data(cifar, photos, detection, membrane, shared=None)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "slice":
        sys.exit("usage: python3 bench/gpu_data.py slice SHARED TARGET")
    slice_shared(Path(sys.argv[2]), Path(sys.argv[3]))
