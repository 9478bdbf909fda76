"""Shared fixtures: synthetic image folders, the real shared data, and small trained runs reused across tests.

Trainings here are tiny (a two-stage `cnn` of width 8 on 16 px images, four epochs) so the whole suite
runs in a few minutes on two CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pytest
from PIL import Image, ImageDraw

from deepfit.log import logger

# The shared, read-only data and weights: /work/shared here, ../shared beside the clone on CI, or DEEPFIT_SHARED
# (bench/gpu.py points it at the slimmed copy that travels to the GPU machine).
SHARED = Path(os.environ.get("DEEPFIT_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")

# Precision "auto" picks bf16 on CPUs with native bf16 (engine/device.py): the suite keeps fp32 on every CPU, so it
# computes the same here and on CI whatever the CPU (set in the environment, so CLI subprocesses get it too).
os.environ["DEEPFIT_CPU_BF16"] = "0"

# Options that keep a training run to a second or two on a slow CPU.
TINY = dict(
    model="cnn", model_args={"depth": 2, "width": 8}, image_size=16, epochs=4, batch_size=16, lr=0.01, workers=0,
)
TINY_CLI = [
    "--model", "cnn", "--model-args", "depth=2,width=8", "--image-size", "16", "--epochs", "4",
    "--batch-size", "16", "--lr", "0.01", "--workers", "0",
]

# One colour and shape per class: a tiny CNN separates them within an epoch or two.
CLASS_LOOKS = [((220, 40, 40), "square"), ((40, 200, 60), "circle"), ((50, 80, 230), "triangle"),
               ((230, 200, 40), "cross")]


# --- Ctrl-C in the middle of training ------------------------------------------------------------


@contextlib.contextmanager
def ctrl_c_after(steps: int) -> Iterator[None]:
    """Every Trainer made inside sends its process SIGINT (what the terminal sends on Ctrl-C) after `steps` training
    steps, counted over the process, as a user pressing Ctrl-C would."""
    import signal

    from deepfit.engine import trainer as trainer_module

    done = [0]

    class CtrlC(trainer_module.Callback):
        def on_batch_end(self, trainer: object, step: int, batch_size: int) -> None:
            done[0] += 1
            if done[0] == steps:
                os.kill(os.getpid(), signal.SIGINT)

    original_init = trainer_module.Trainer.__init__

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original_init(self, *args, **kwargs)
        self.callbacks.insert(0, CtrlC())

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module.Trainer, "__init__", init)
        yield


# --- logging -------------------------------------------------------------------------------------


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is *now*, so capsys and redirect_stderr see deepfit's log lines."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # StreamHandler.__init__ sets it; the property always answers with the current sys.stderr


@pytest.fixture(autouse=True, scope="session")
def _deepfit_logging() -> Iterator[None]:
    """Give deepfit's logger a handler before `setup_logging` runs (it then keeps it), and let records
    propagate so `caplog` sees them; a handler bound to one test's captured stream would outlive it."""
    handler = _CurrentStderrHandler()
    old = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = True
    yield
    logger.handlers[:], logger.level, logger.propagate = old[0], old[1], old[2]


@pytest.fixture(autouse=True, scope="session")
def deepfit_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep quickstart's digits (and anything else cached) out of the user's cache."""
    cache = tmp_path_factory.mktemp("deepfit-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPFIT_CACHE", str(cache))
        # Tests never reach for the network (there is none here, and CI must send nothing outside the machine):
        # `--pretrained` then fails at once instead of probing a hub; tests of the online path fake the network.
        mp.setenv("DEEPFIT_OFFLINE", "1")
        yield cache


# --- synthetic images ----------------------------------------------------------------------------


def shape_image(label_index: int, variant: int, size: int = 16, mode: str = "RGB") -> Image.Image:
    """A coloured shape on a dark, slightly noisy background; every (class, variant) is a distinct image."""
    rng = np.random.default_rng(1000 * label_index + variant)
    colour, shape = CLASS_LOOKS[label_index % len(CLASS_LOOKS)]
    background = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(img)
    r = size // 4 + int(rng.integers(0, 2))
    cx, cy = size // 2 + int(rng.integers(-2, 3)), size // 2 + int(rng.integers(-2, 3))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        draw.rectangle((cx - r, cy - 1, cx + r, cy + 1), fill=colour)
        draw.rectangle((cx - 1, cy - r, cx + 1, cy + r), fill=colour)
    if mode == "L":
        return img.convert("L")
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    if mode == "RGBA":
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.fromarray(rng.integers(180, 256, (size, size), dtype=np.uint8), "L"))
        return rgba
    return img


def write_class_folders(
    root: Path, classes: list[str], per_class: int, *, size: int = 16, nest: bool = False,
    modes: tuple[str, ...] = ("RGB",), first: int = 0,
) -> list[Path]:
    """root/<class>/img<i>.png for every class; with nest, half of each class sits one or two folders deeper.
    Images are variants first, first+1, ... of their class's shape: give another `first` for other images."""
    paths = []
    for ci, name in enumerate(classes):
        for i in range(per_class):
            folder = root / name / ("deep" if nest and i % 2 else "") / ("er" if nest and i % 4 == 1 else "")
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"img{i}.png"
            shape_image(ci, first + i, size, modes[i % len(modes)]).save(path)
            paths.append(path)
    return paths


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 20 images, class names "2", "10" and "ring" (natural order: 2, 10, ring). Read-only by
    convention: tests that need to change data make their own."""
    root = tmp_path_factory.mktemp("shapes") / "data"
    write_class_folders(root, ["2", "10", "ring"], 20)
    return root


# --- small trained runs shared by many tests --------------------------------------------------------


@dataclass
class TrainedRun:
    run_dir: Path
    data: Path
    stderr: str  # what training printed on stderr (not a terminal: one line per epoch)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shapes_data: Path) -> TrainedRun:
    """One tiny `cnn` trained (4 epochs, from scratch) on the shapes data; never evaluated, so tests that
    evaluate take a copy (`run_copy`) and see a run whose test split was never scored."""
    from deepfit import ImageClassifier

    output = tmp_path_factory.mktemp("runs")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        clf = ImageClassifier(output=str(output), name="shapes", **TINY).fit(shapes_data)
    assert clf.run_dir is not None
    return TrainedRun(clf.run_dir, shapes_data, err.getvalue())


@pytest.fixture
def run_copy(trained_run: TrainedRun, tmp_path: Path) -> Path:
    """A private copy of the shared run, for tests that write into it (evaluate, predict)."""
    return Path(shutil.copytree(trained_run.run_dir, tmp_path / "run"))


@pytest.fixture(scope="session")
def evaluated_run(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared run whose test split has been scored once (report, metrics, predictions)."""
    from deepfit.workflows.evaluate import evaluate

    run = Path(shutil.copytree(trained_run.run_dir, tmp_path_factory.mktemp("evaluated") / "run"))
    evaluate(run)
    return run


# --- the shared real data --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent (CI has it at ../shared beside the clone)")
    return SHARED


@pytest.fixture(scope="session")
def hymenoptera(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ants/bees photos, extracted once per session: .../hymenoptera/{train,val}/{ants,bees}."""
    tar = shared_dir / "data" / "hymenoptera.tar"  # a shared folder without it is a broken setup: fail
    target = tmp_path_factory.mktemp("hymenoptera-tar")
    with tarfile.open(tar) as archive:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 (and recent 3.10/3.11 patch releases)
            archive.extractall(target, filter="data")
        else:
            archive.extractall(target)  # our own shared archive
    return target / "hymenoptera"


@pytest.fixture(scope="session")
def hymenoptera_slice(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small split-folder copy: 12 train and 8 val photos per class (the first ones by name)."""
    root = tmp_path_factory.mktemp("hymenoptera-slice") / "data"
    for split, count in (("train", 12), ("val", 8)):
        for cls in ("ants", "bees"):
            photos = sorted((hymenoptera / split / cls).glob("*.jpg"))[:count]
            assert len(photos) == count
            (root / split / cls).mkdir(parents=True)
            for photo in photos:
                shutil.copy2(photo, root / split / cls / photo.name)
    return root


@pytest.fixture(scope="session")
def weights_dir(shared_dir: Path) -> Path:
    return shared_dir / "weights"


COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def _draw_squares(root: Path, n_train: int = 8, n_val: int = 4, size: int = 96) -> Path:
    rng = np.random.default_rng(0)
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("names: [red, blue]\n")
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            image = np.full((size, size, 3), 128, np.uint8)
            lines = []
            for k, colour in enumerate(COLOURS.values()):
                side = int(rng.integers(20, 36))
                x, y = int(rng.integers(0, size - side)), int(rng.integers(0, size - side))
                if k == 1 and i % 2:  # some images have one square only
                    continue
                image[y:y + side, x:x + side] = colour
                x1, y1, x2, y2 = (v / size for v in (x, y, x + side, y + side))
                lines.append(f"{k} {x1} {y1} {x2} {y1} {x2} {y2} {x1} {y2}")
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"{split}{i}.png")
            (root / "labels" / split / f"{split}{i}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Detection data: 8 train and 4 val images of a red and a blue square, labelled as YOLO-seg polygons
    (so the same labels give boxes and masks)."""
    return _draw_squares(tmp_path_factory.mktemp("squares") / "data")


# --- semantic segmentation ------------------------------------------------------------------------

SIZE = 64
RECTANGLE_COLOURS = [(220, 30, 30), (30, 30, 220)]


def rectangle_pair(rng: np.random.Generator, height: int = SIZE, width: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Semantic segmentation data: (H, W, 3) image of a red and a blue rectangle on noise, (H, W) mask 0/1/2."""
    image = rng.integers(100, 156, (height, width, 3)).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for k, colour in enumerate(RECTANGLE_COLOURS, start=1):
        h, w = int(rng.integers(height // 5, height // 2)), int(rng.integers(width // 5, width // 2))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        image[y:y + h, x:x + w] = colour
        mask[y:y + h, x:x + w] = k
    return image, mask


def draw_rectangles(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """`counts[split]` drawn pairs in DATA/{images,masks}/SPLIT/, and classes.txt naming the mask values."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for i in range(n):
            image, mask = rectangle_pair(rng)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"{split}{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{split}{i}.png")
    (root / "classes.txt").write_text("background\nred\nblue\n")
    return root


TIMING_COLUMNS = {"samples_per_s", "seconds", "data_wait"}  # metrics.csv columns that differ between identical runs


def same_weights(a: Path, b: Path, kind: str = "last") -> bool:
    """Whether two runs' `kind` checkpoints hold bit-identical tensors."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / f"{kind}.safetensors")), load_file(str(b / f"{kind}.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def epoch_metrics(run: Path) -> list[dict[str, str]]:
    """A run's metrics.csv rows without the timing columns."""
    import csv

    rows = csv.DictReader((run / "metrics.csv").read_text().splitlines())
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]
