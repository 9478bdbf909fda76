"""discover(): folder layouts, CSV lists, natural order, and the errors a user can fix."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
from PIL import Image

from deepfit.data.media import IMAGE_EXTENSIONS
from deepfit.data.sources import LabeledFile, discover, natural_key
from deepfit.errors import DataError
from deepfit.log import logger

_colours = itertools.count(1)


def png(path: Path) -> Path:
    """A tiny image whose colour differs from every other one made here, so no two files are identical."""
    i = next(_colours)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 200)).save(path)
    return path


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def rel(files: list[LabeledFile], root: Path) -> list[str]:
    return [f.path.relative_to(root.resolve()).as_posix() for f in files]


# --- natural order -------------------------------------------------------------------------------


def test_natural_key_orders_numbers_and_ignores_case() -> None:
    names = ["img10.png", "IMG2.png", "img1.png", "b", "A", "10", "2"]
    assert sorted(names, key=natural_key) == ["2", "10", "A", "b", "img1.png", "IMG2.png", "img10.png"]


def test_image_extensions_are_lower_case_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".tiff"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


# --- folders -------------------------------------------------------------------------------------


def test_class_folders_with_nesting_and_natural_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    png(data / "10" / "a.png")
    png(data / "2" / "img10.png")
    png(data / "2" / "img2.png")
    png(data / "2" / "deep" / "er" / "img1.PNG")  # nested, upper-case suffix
    png(data / "2" / ".hidden" / "x.png")  # hidden folder: ignored
    png(data / "2" / ".x.png")  # hidden file: ignored
    (data / "2" / "notes.txt").write_text("not an image")
    catalog = discover(data)
    assert catalog.layout == "class-folders"
    assert catalog.classes == ["2", "10"]
    assert not catalog.has_splits
    assert catalog.root == data.resolve()
    assert rel(catalog.files, data) == ["2/deep/er/img1.PNG", "2/img2.png", "2/img10.png", "10/a.png"]
    assert [f.label for f in catalog.files] == ["2", "2", "2", "10"]
    assert all(f.split is None and f.path.is_absolute() for f in catalog.files)


def test_non_image_files_warn_once_with_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    for c in ("a", "b"):
        png(data / c / "1.png")
        (data / c / "readme.md").write_text("x")
    logger.addHandler(caplog.handler)  # deepfit's logger may not propagate once logging is set up
    try:
        with caplog.at_level(logging.WARNING, logger="deepfit"):
            discover(data)
    finally:
        logger.removeHandler(caplog.handler)
    warnings = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]
    assert len(set(warnings)) == 1 and "2 file(s) that are not images" in warnings[0] and "readme.md" in warnings[0]


def test_split_folders_with_valid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for split in ("train", "valid", "test"):
        for c in ("cat", "dog"):
            png(data / split / c / "1.png")
    png(data / "train" / "cat" / "2.png")
    catalog = discover(data)
    assert catalog.layout == "split-folders"
    assert catalog.has_splits
    assert catalog.classes == ["cat", "dog"]
    assert [f.split for f in catalog.files] == ["train"] * 3 + ["val"] * 2 + ["test"] * 2
    assert rel(catalog.files, data)[:3] == ["train/cat/1.png", "train/cat/2.png", "train/dog/1.png"]


def test_split_folder_class_missing_from_train(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for c in ("cat", "dog"):
        png(data / "train" / c / "1.png")
        png(data / "val" / c / "1.png")
    png(data / "val" / "bird" / "1.png")
    with pytest.raises(DataError, match="bird"):
        discover(data)


def test_train_folder_next_to_classes_is_a_class(tmp_path: Path) -> None:
    data = tmp_path / "vehicles"
    for c in ("bus", "car", "train"):
        png(data / c / "1.png")
    catalog = discover(data)
    assert catalog.layout == "class-folders"
    assert catalog.classes == ["bus", "car", "train"]


# --- CSV lists -----------------------------------------------------------------------------------


def _image_tree(root: Path) -> None:
    for c in ("cat", "dog"):
        for i in (1, 2):
            png(root / "images" / f"{c}{i}.png")


def test_csv_relative_paths_and_default_columns(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "id,Filename,Class\n1,images/dog1.png,dog\n2,images/cat2.png,cat\n3,images/cat1.png,cat\n"
        f"4,{(tmp_path / 'images' / 'dog2.png').resolve()},dog\n"  # absolute path
    )
    catalog = discover(csv_path)
    assert catalog.layout == "csv"
    assert catalog.root == tmp_path.resolve()
    assert catalog.classes == ["cat", "dog"]
    assert rel(catalog.files, tmp_path) == [
        "images/cat1.png", "images/cat2.png", "images/dog1.png", "images/dog2.png"
    ]
    assert not catalog.has_splits


def test_tsv_falls_back_to_first_two_columns(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    tsv = tmp_path / "list.tsv"
    tsv.write_text("where\twhat\nimages/cat1.png\tcat\nimages/dog1.png\tdog\n")
    catalog = discover(tsv)
    assert [(f.path.name, f.label) for f in catalog.files] == [("cat1.png", "cat"), ("dog1.png", "dog")]


def test_txt_with_tabs_is_sniffed(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    txt = tmp_path / "list.txt"
    txt.write_text("path\tlabel\nimages/cat1.png\tcat\nimages/dog1.png\tdog\n")
    assert discover(txt).classes == ["cat", "dog"]


def test_csv_explicit_columns(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("label,img,species\nx,images/cat1.png,cat\nx,images/dog1.png,dog\n")
    catalog = discover(csv_path, path_column="img", label_column="species")
    assert catalog.classes == ["cat", "dog"]


def test_csv_split_column(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path,label,split\nimages/cat1.png,cat,train\nimages/dog1.png,dog,TRAIN\n"
        "images/cat2.png,cat,validation\nimages/dog2.png,dog,test\n"
    )
    catalog = discover(csv_path)
    assert catalog.has_splits
    assert [(f.path.name, f.split) for f in catalog.files] == [
        ("cat1.png", "train"), ("dog1.png", "train"), ("cat2.png", "val"), ("dog2.png", "test")
    ]


# --- errors --------------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data folder not found: .*nope"):
        discover(tmp_path / "nope")


def test_empty_class_folder(tmp_path: Path) -> None:
    png(tmp_path / "a" / "1.png")
    png(tmp_path / "b" / "1.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"class folder .*empty has no images \(looked for .*\.png") as info:
        discover(tmp_path)
    assert "\n" not in str(info.value)


def test_csv_missing_file_names_line(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\nimages/cat1.png,cat\nimages/dog1.png,dog\nimages/ghost.png,dog\n")
    with pytest.raises(DataError, match=r"labels\.csv line 4: file not found: .*ghost\.png"):
        discover(csv_path)


def test_csv_unknown_label_column_lists_columns(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\nimages/cat1.png,cat\nimages/dog1.png,dog\n")
    with pytest.raises(DataError, match=r"'species' not found in .*labels\.csv; columns are: path, label"):
        discover(csv_path, label_column="species")


def test_csv_empty_label_names_line(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\nimages/cat1.png,cat\nimages/dog1.png, \n")
    with pytest.raises(DataError, match="line 3: empty label"):
        discover(csv_path)


def test_csv_without_header(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("images/cat1.png,cat\nimages/dog1.png,dog\n")
    with pytest.raises(DataError, match="no header row"):
        discover(csv_path)


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    png(tmp_path / "only" / "1.png")
    png(tmp_path / "only" / "2.png")
    with pytest.raises(DataError, match=r"at least 2 classes.*found 1 .*\(only\)"):
        discover(tmp_path)


def test_images_at_top_level_without_class_folders(tmp_path: Path) -> None:
    png(tmp_path / "1.png")
    png(tmp_path / "2.png")
    with pytest.raises(DataError, match=r"no class folders.*DATA/<class>/\*\.jpg"):
        discover(tmp_path)


def test_discover_never_writes_into_the_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in ("a", "b"):
            png(data / split / c / "1.png")
    (data / "list.csv").write_text("path,label\ntrain/a/1.png,a\ntrain/b/1.png,b\n")
    before = listing(data)
    discover(data)
    discover(data / "list.csv")
    assert listing(data) == before
