"""`deepfit data audit` finds problems planted in data the tests make: copies across splits, flipped labels, bad boxes
and masks; it changes nothing in the data and never overwrites a file."""

from __future__ import annotations

import csv
import hashlib
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from deepfit.cli import main
from deepfit.workflows.audit import audit_data
from test_sound_classify import PATTERN, make_recordings
from test_text_classify import write_table

COLOURS = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40)]
CLASSES = ["red", "green", "blue", "yellow"]


def _picture(label: int, seed: int, size: int = 48) -> Image.Image:
    """A disc of the class's colour over a smooth random background: every picture different, its class plain to see."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(4, 4, 3))
    background = ((field - field.min()) / np.ptp(field) * 110).astype(np.uint8)
    image = Image.fromarray(background).resize((size, size), Image.Resampling.BICUBIC)
    r = int(rng.integers(size // 4, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[label])
    return image


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode() + (path.read_bytes() if path.is_file() else b"/"))
    return digest.hexdigest()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]], list[str]]:
    """train/ and test/ class folders (30 + 10 a class), with 3 exact and 2 near (resized JPEG) copies of training
    images in test/, and 8 training images (5% of 160) moved to a wrong class."""
    root = tmp_path_factory.mktemp("planted") / "data"
    for split, count in (("train", 30), ("test", 10)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                _picture(c, 1000 * c + i + (500 if split == "test" else 0)).save(root / split / name / f"{split}{i}.png")
    rng = random.Random(0)
    picked = rng.sample(sorted((root / "train").rglob("*.png")), 13)
    copies = []
    for i, path in enumerate(picked[:5]):
        copy = root / "test" / path.parent.name / (f"copy{i}.png" if i < 3 else f"near{i}.jpg")
        if i < 3:
            shutil.copy(path, copy)
        else:
            Image.open(path).resize((40, 40)).save(copy, quality=80)
        copies.append((str(path), str(copy)))
    flips = []
    for path in picked[5:]:
        wrong = rng.choice([c for c in CLASSES if c != path.parent.name])
        flips.append(str(shutil.move(path, root / "train" / wrong / f"flip_{path.parent.name}_{path.name}")))
    return root, copies, flips


def test_planted_copies_and_flipped_labels_are_found(planted: tuple[Path, list[tuple[str, str]], list[str]],
                                                     tmp_path: Path, weights_dir: Path) -> None:
    root, copies, flips = planted
    before = _tree_digest(root)
    keep = tmp_path / "keep.csv"
    found = audit_data(root, model="tf_efficientnet_lite0", weights=str(weights_dir / "tf_efficientnet_lite0.safetensors"),
                  write_clean=keep, output=tmp_path, name="a")
    assert _tree_digest(root) == before  # nothing in the data changed
    pairs = {(str(found.items[p.first].path), str(found.items[p.second].path)) for p in found.cross_split()}
    assert all(pair in pairs for pair in copies), (copies, pairs)  # every planted copy across splits

    rows = list(csv.DictReader((found.folder / "label_issues.csv").open()))
    ranked, flagged = [row["path"] for row in rows], {row["path"] for row in rows if row["flagged"] == "True"}
    top = ranked[: 2 * len(flips)]
    assert sum(f in top for f in flips) >= 0.8 * len(flips), (flips, ranked[:20])
    assert (found.folder / "audit.html").read_text().count("<img") > 20

    kept = {row["path"] for row in csv.DictReader(keep.open())}
    assert not kept & {copy for _, copy in copies} and all(original in kept for original, _ in copies)
    assert flagged and not kept & flagged and sum(f in kept for f in flips) <= 0.5 * len(flips)

    # the keep list never overwrites a file: a second audit asking for the same one stops before any work
    assert main(["data", "audit", str(root), "--write-clean", str(keep), "--output", str(tmp_path)]) == 2


def test_text_and_sound_copies_are_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "texts").mkdir()
    table = write_table(tmp_path / "texts" / "news.csv", n=40)
    rows = list(csv.reader(table.open(encoding="utf-8")))
    with table.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["copy", "  " + rows[5][1].upper() + " ", rows[5][2]])  # the same text, case and spaces aside
    assert main(["data", "audit", str(table), "--text-column", "body", "--output", str(tmp_path / "out"), "--name", "t"]) == 0
    duplicates = list(csv.DictReader((tmp_path / "out" / "t" / "duplicates.csv").open()))
    assert any(d["kind"] == "exact" and {d["path_a"], d["path_b"]} == {f"{table}:6", f"{table}:82"} for d in duplicates)
    assert (tmp_path / "out" / "t" / "label_issues.csv").is_file()

    recordings = make_recordings(tmp_path / "rec", speakers=2, takes=4)
    shutil.copy(recordings / "low_s0_0.wav", recordings / "low_s1_9.wav")
    assert main(["data", "audit", str(recordings), "--label-pattern", PATTERN, "--output", str(tmp_path / "out"), "--name", "s"]) == 0
    duplicates = list(csv.DictReader((tmp_path / "out" / "s" / "duplicates.csv").open()))
    assert any(d["kind"] == "exact" and Path(d["path_b"]).name in ("low_s0_0.wav", "low_s1_9.wav") for d in duplicates)
    assert "<audio" in (tmp_path / "out" / "s" / "audit.html").read_text()
    assert "audit: " in capsys.readouterr().out


def test_bad_boxes_and_masks_are_listed(squares: Path, tmp_path: Path) -> None:
    from conftest import draw_rectangles

    data = tmp_path / "squares"
    shutil.copytree(squares, data)
    label = data / "labels" / "train" / "train0.txt"
    first = label.read_text().splitlines()[0]
    label.write_text(label.read_text() + first + "\n0 0.5 0.5 0.505 0.5 0.505 0.9 0.5 0.9\n")  # a doubled box, a needle
    found = audit_data(data, task="detect", output=tmp_path / "out", name="d")
    kinds = {(found.items[f.item].path.name, f.kind) for f in found.findings}
    assert ("train0.png", "duplicate box") in kinds and ("train0.png", "tiny box") in kinds
    assert "duplicate box" in (found.folder / "objects.csv").read_text()
    assert len((found.folder / "outliers.csv").read_text().splitlines()) == 1 + len(found.items)  # images ranked too

    rectangles = draw_rectangles(tmp_path / "rect", {"train": 6, "val": 2})
    mask_path = rectangles / "masks" / "train" / "train0.png"
    mask = np.array(Image.open(mask_path))
    mask[mask == 2] = 0
    mask[:3, :3] = 2  # blue reduced to a 9-pixel speck
    Image.fromarray(mask).save(mask_path)
    found = audit_data(rectangles, task="segment", output=tmp_path / "out", name="s")
    assert any(f.kind == "speck" and f.label == "blue" and found.items[f.item].path.name == "train0.png" for f in found.findings)


def test_a_detectors_confident_predictions_flag_a_box_given_the_wrong_class(squares: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """--run: the images the run trained on (matched by content) are left out, the others' boxes are handed to
    cleanlab with the run's predictions. The detector here is a stand-in that predicts the original, correct boxes
    with confidence (no detector trained on this CPU in seconds is sure enough to judge anything)."""
    from deepfit.data.catalog import LabeledFile
    from deepfit.registry import get_task
    from deepfit.tasks.detect import label_quality
    from deepfit.tasks.detect.data import read_detection

    truth = {s.path.name: s for s in read_detection(squares).samples}
    data = tmp_path / "squares"
    shutil.copytree(squares, data)
    label = data / "labels" / "val" / "val0.txt"
    first, *rest = label.read_text().splitlines()
    label.write_text("\n".join([("1" if first[0] == "0" else "0") + first[1:], *rest]) + "\n")  # one class swapped

    class Predictor:
        def predict(self, paths: list[Path], conf: float) -> list[dict]:
            return [{"boxes": truth[Path(p).name].boxes, "labels": truth[Path(p).name].labels,
                     "scores": np.full(len(truth[Path(p).name].labels), 0.95)} for p in paths]

    task = get_task("detect")
    monkeypatch.setattr(task, "load", lambda checkpoint: None)
    monkeypatch.setattr(task, "predictor", lambda trained: Predictor())
    monkeypatch.setattr(label_quality, "resolve_checkpoint", lambda folder, which: folder)
    monkeypatch.setattr(label_quality, "read_run_config", lambda folder: {"task": "detect", "classes": ["red", "blue"],
                                                                          "data_root": str(squares)})
    monkeypatch.setattr(label_quality, "load_split", lambda path, root: {
        "train": [LabeledFile(p, "", "train") for p in sorted((squares / "images" / "train").glob("*.png"))]})
    found = audit_data(data, task="detect", run=tmp_path / "run", output=tmp_path / "out", name="d")
    assert {found.items[i].split for i in found.judged} == {"val"}  # the training images (copied) are not judged
    rows = list(csv.DictReader((found.folder / "label_issues.csv").open()))
    assert Path(rows[0]["path"]).name == "val0.png" and rows[0]["flagged"] == "True"
    assert float(rows[0]["quality"]) < min(float(r["quality"]) for r in rows[1:])
