"""Reading semantic-segmentation labels: folder pairs, dataset YAML and COCO JSON; index, 16-bit, palette,
binary and RGB masks; ignore values, saved class maps, counts and bad input."""

from __future__ import annotations

import json
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from deepfit.data.formats.masks import IGNORE_INDEX as IGNORE
from deepfit.errors import DataError
from deepfit.tasks.segment.data import (
    SegmentationDataset,
    read_segmentation,
    summarize,
)


def _image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (30, 60, 90)).save(path)
    return path


def _mask(path: Path, values: np.ndarray | list, mode: str | None = None, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(values, dtype=np.uint16 if mode == "I;16" else np.uint8)
    img = Image.fromarray(arr, mode) if mode in ("P", "RGB", "RGBA") else Image.fromarray(arr)
    if palette is not None:
        img.putpalette(palette)
    img.save(path)
    return path


def _pair(root: Path, name: str, values: np.ndarray | list, mode: str | None = None,
          palette: list[int] | None = None, images: str = "images", masks: str = "masks") -> None:
    arr = np.asarray(values)
    _image(root / images / f"{name}.jpg", arr.shape[1], arr.shape[0])
    _mask(root / masks / f"{name}.png", arr, mode, palette)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _by_name(ds: SegmentationDataset) -> dict[str, int]:
    return {s.path.stem: i for i, s in enumerate(ds.samples)}


# --- layouts and index masks -----------------------------------------------------------------------

A = [[0, 0, 1, 1],
     [0, 2, 2, 255],
     [1, 1, 255, 255]]


def test_folders_grey_index_masks_counts_and_values(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root, "a", A)
    _pair(root, "b", [[2, 2], [2, 0]])
    ds = read_segmentation(root, workers=1)
    assert (ds.format, ds.kind, ds.root) == ("folders", "index", root.resolve())
    assert ds.classes == ["0", "1", "2"] and ds.values == [0, 1, 2] and ds.ignore_value == 255
    assert [s.path.name for s in ds.samples] == ["a.jpg", "b.jpg"] and len(ds) == 2
    a, b = ds.samples
    assert a.mask == (root / "masks" / "a.png").resolve() and (a.width, a.height, a.split) == (4, 3, None)
    np.testing.assert_array_equal(ds.read_mask(a), A)  # values 0, 1, 2 are their own indexes; 255 = IGNORE
    assert ds.read_mask(a).dtype == np.uint8
    assert a.counts.tolist() == [3, 4, 2] and b.counts.tolist() == [1, 0, 3] and a.counts.dtype == np.int64
    assert ds.pixel_counts().tolist() == [4, 4, 5] and ds.pixel_counts([b]).tolist() == [1, 0, 3]
    assert ds.colors.shape == (3, 3) and ds.colors.dtype == np.uint8 and ds.colors[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in ds.colors.tolist()}) == 3 and ds.problems == []
    threaded = read_segmentation(root, workers=4)
    assert [s.counts.tolist() for s in threaded.samples] == [s.counts.tolist() for s in ds.samples]


def test_split_folders_outside_and_inside_and_natural_order(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root / "train", "img10", [[1, 0]])
    _pair(root / "train", "img2", [[0, 1]])
    _pair(root / "Validation", "v", [[1, 1]], images="JPEGImages", masks="SegmentationClass")  # any case
    ds = read_segmentation(root)
    assert [(s.path.name, s.split) for s in ds.samples] == [
        ("img2.jpg", "train"), ("img10.jpg", "train"), ("v.jpg", "val")]
    nested = tmp_path / "n"  # split folders inside images/ and masks/, one more folder below
    _pair(nested, "train2017/x/a", [[0, 1]], masks="gt")
    _pair(nested, "test/b", [[1, 0]], masks="gt")
    (nested / "labels").mkdir()  # a YOLO-style labels/ without masks is not the mask folder
    (nested / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    ds = read_segmentation(nested)
    assert [(s.path.relative_to(nested).as_posix(), s.split) for s in ds.samples] == [
        ("images/test/b.jpg", "test"), ("images/train2017/x/a.jpg", "train")]
    assert ds.samples[1].mask == (nested / "gt" / "train2017" / "x" / "a.png").resolve()


def test_explicit_mask_folder_and_other_mask_formats(tmp_path: Path) -> None:
    data = tmp_path / "d" / "train"
    _image(data / "photos" / "a.jpg", 2, 1)
    _image(data / "photos" / "b.jpg", 2, 1)
    (data / "where-masks-are").mkdir(parents=True)
    Image.fromarray(np.array([[1, 0]], np.uint8)).save(data / "where-masks-are" / "a.bmp")
    Image.fromarray(np.array([[3, 3]], np.uint8)).save(data / "where-masks-are" / "b.tif")
    ds = read_segmentation(data / "photos", masks=data / "where-masks-are")
    assert ds.format == "folders" and ds.root == data.resolve()
    assert [(s.mask.name, s.split) for s in ds.samples] == [("a.bmp", "train"), ("b.tif", "train")]
    assert ds.classes == ["0", "1", "3"]
    np.testing.assert_array_equal(ds.read_mask(ds.samples[1]), [[2, 2]])


def test_classes_txt_and_given_classes_name_the_values(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root, "a", [[0, 2], [1, 255]])
    (root / "classes.txt").write_text("sky\ntree\nroad\n")
    ds = read_segmentation(root)
    assert ds.classes == ["sky", "tree", "road"] and ds.values == [0, 1, 2]
    ds = read_segmentation(root, classes=["a", "b", "c", "d"])  # classes= wins over classes.txt
    assert ds.classes == ["a", "b", "c", "d"] and ds.samples[0].counts.tolist() == [1, 1, 1, 0]


def _yaml_data(root: Path, yaml_text: str) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "config.yaml").write_text(yaml_text)
    # images beside the YAML's folder, masks below it, as in coco128
    for split, values in (("train", [[0, 3], [7, 255]]), ("val", [[7, 7], [0, 0]])):
        _image(root / "images" / split / f"{split}1.jpg", 2, 2)
        _mask(root / "data" / "masks" / split / f"{split}1.png", values)
    return root / "data" / "config.yaml"


YAML = """
train:
  images: ../images/train
  masks: masks/train
val:
  images: ../images/val
  masks: masks/val
classes:
  0: unlabeled
  3: cat
  7: dog
"""


def test_yaml_with_dict_ids_with_gaps_and_ignore_value(tmp_path: Path) -> None:
    config = _yaml_data(tmp_path, YAML)
    ds = read_segmentation(config.parent)  # the folder holding config.yaml
    assert (ds.format, ds.kind, ds.root) == ("yaml", "index", config.parent.resolve())
    assert ds.classes == ["unlabeled", "cat", "dog"] and ds.values == [0, 3, 7]
    assert [s.split for s in ds.samples] == ["train", "val"]
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[0, 1], [2, IGNORE]])
    assert ds.pixel_counts().tolist() == [3, 1, 3]
    _mask(config.parent / "masks" / "train" / "train1.png", [[0, 3], [7, 0]])  # 255 would now be unknown
    ds = read_segmentation(config, ignore_value=0)  # value 0 (unlabeled) is ignored, and no class
    assert ds.classes == ["cat", "dog"] and ds.values == [3, 7] and ds.ignore_value == 0
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[IGNORE, 0], [1, IGNORE]])
    assert ds.pixel_counts().tolist() == [1, 3]
    _mask(config.parent / "masks" / "train" / "train1.png", [[0, 3], [7, 255]])
    config.write_text(YAML.split("classes:")[0] + "names: [a, b, c, d, e, f, g, h]\n")  # a list
    ds = read_segmentation(config)
    assert ds.classes == list("abcdefgh") and ds.values == list(range(8))
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[0, 3], [7, IGNORE]])


def test_yaml_names_make_other_values_bad(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _yaml_data(tmp_path, YAML)
    _mask(config.parent / "masks" / "val" / "val1.png", [[5, 7], [9, 0]])
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_segmentation(config, max_bad=1.0)
    assert [s.split for s in ds.samples] == ["train"]
    assert "val1.png: 5, 9 not in the class map (3 classes)" in "\n".join(_warnings(caplog))


# --- COCO ------------------------------------------------------------------------------------------


def test_coco_objects_painted_largest_first_crowd_ignored(tmp_path: Path) -> None:
    _image(tmp_path / "d" / "images" / "a.png", 10, 8)
    crowd = {"size": [8, 10], "counts": [8 * 9, 8]}  # uncompressed RLE: the last column
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 8}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [  # the small object first in the file: it must still end on top
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [2, 2, 2, 2], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [1, 1, 6, 5], "iscrowd": 0,
             "segmentation": [[1, 1, 7, 1, 7, 6, 1, 6]]},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [9, 0, 1, 8], "iscrowd": 1, "segmentation": crowd},
        ],
    }
    (tmp_path / "d" / "annotations.json").write_text(json.dumps(data))
    ds = read_segmentation(tmp_path / "d")
    assert (ds.format, ds.kind, ds.ignore_value) == ("coco", "coco", None)
    assert ds.classes == ["background", "cat", "dog"] and ds.values == [0, 2, 7]
    s = ds.samples[0]
    assert s.mask is None and s.objects is not None and (s.width, s.height) == (10, 8)
    expected = np.zeros((8, 10), dtype=np.uint8)
    expected[1:6, 1:7] = 2  # dog
    expected[2:4, 2:4] = 1  # cat, on top
    expected[:, 9] = IGNORE  # crowd
    got = ds.read_mask(s)
    np.testing.assert_array_equal(got, expected)
    assert s.counts.tolist() == [80 - 30 - 8, 4, 26]  # crowd pixels are not counted
    # read again with the class map: the same classes, and unknown categories make a pair bad
    again = read_segmentation(tmp_path / "d" / "annotations.json", class_map=json.loads(json.dumps(ds.class_map())))
    assert again.classes == ds.classes and again.values == ds.values
    np.testing.assert_array_equal(again.read_mask(again.samples[0]), got)
    with pytest.raises(DataError, match=r"category ids 2 not in the class map"):
        read_segmentation(tmp_path / "d", class_map={**ds.class_map(), "classes": ["background", "dog"],
                                                     "values": [0, 7], "colors": [[0, 0, 0], [1, 2, 3]]})


def test_coco_box_objects_paint_exact_boxes(tmp_path: Path) -> None:
    _image(tmp_path / "d" / "a.png", 6, 4)
    data = {
        "images": [{"id": 5, "file_name": "a.png", "width": 6, "height": 4}],
        "categories": [{"id": 1, "name": "x"}, {"id": 3, "name": "y"}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [1, 1, 1, 1], "iscrowd": 0},
                        {"id": 2, "image_id": 5, "category_id": 1, "bbox": [0, 0, 4, 3], "iscrowd": 0}],
    }
    (tmp_path / "d" / "coco.json").write_text(json.dumps(data))
    ds = read_segmentation(tmp_path / "d" / "coco.json")
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[1, 1, 1, 1, 0, 0],
                                                                [1, 2, 1, 1, 0, 0],
                                                                [1, 1, 1, 1, 0, 0],
                                                                [0, 0, 0, 0, 0, 0]])
    assert ds.samples[0].counts.tolist() == [12, 11, 1]


# --- encodings -------------------------------------------------------------------------------------


def test_16_bit_masks(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root, "a", [[0, 1000], [40000, 1000]], mode="I;16")
    assert Image.open(root / "masks" / "a.png").mode.startswith("I")
    ds = read_segmentation(root)
    assert ds.kind == "index" and ds.classes == ["0", "1000", "40000"] and ds.values == [0, 1000, 40000]
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[0, 1], [2, 1]])
    assert ds.samples[0].counts.tolist() == [1, 2, 1]


PALETTE = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [0, 0, 0] * 252 + [255, 255, 255]


def test_palette_masks_use_their_colours(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root, "a", [[0, 1, 2], [255, 2, 2]], mode="P", palette=PALETTE)
    ds = read_segmentation(root)
    assert ds.kind == "palette" and ds.classes == ["0", "1", "2"] and ds.ignore_value == 255
    assert ds.colors.tolist() == [[0, 0, 0], [200, 10, 10], [10, 200, 10]]
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[0, 1, 2], [IGNORE, 2, 2]])


@pytest.mark.parametrize("top", [255, 1])
def test_binary_masks(tmp_path: Path, top: int) -> None:
    root = tmp_path / "d"
    _pair(root, "a", [[0, top], [top, top]])
    _pair(root, "b", [[0, 0], [0, 0]])
    ds = read_segmentation(root)
    assert ds.kind == "binary" and ds.classes == ["background", "foreground"]
    assert ds.values == [0, top] and ds.ignore_value is None  # 255 is foreground here, not ignored
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[0, 1], [1, 1]])
    assert ds.pixel_counts().tolist() == [5, 3]


def test_rgb_masks_with_given_colours_and_ignore(tmp_path: Path) -> None:
    root = tmp_path / "d"
    red, green, white = (255, 0, 0), (0, 255, 0), (255, 255, 255)
    _pair(root, "a", [[red, green], [white, red]], mode="RGB")
    rgba = np.array([[[0, 255, 0, 10], [0, 255, 0, 255]]], dtype=np.uint8)  # alpha is dropped
    _pair(root, "b", rgba, mode="RGBA")
    colors_file = tmp_path / "colors.json"
    colors_file.write_text(json.dumps({"grass": [0, 255, 0], "brick": "#ff0000", "Ignore": [255, 255, 255]}))
    ds = read_segmentation(root, colors=colors_file)
    assert ds.kind == "rgb" and ds.classes == ["grass", "brick"]
    assert ds.values == [(0, 255, 0), (255, 0, 0)] and ds.ignore_value == (255, 255, 255)
    assert ds.colors.tolist() == [[0, 255, 0], [255, 0, 0]]
    a, b = ds.samples
    np.testing.assert_array_equal(ds.read_mask(a), [[1, 0], [IGNORE, 1]])
    np.testing.assert_array_equal(ds.read_mask(b), [[0, 0]])
    assert ds.pixel_counts().tolist() == [3, 2]
    ordered = read_segmentation(root, colors={"brick": (255, 0, 0), "grass": (0, 255, 0), "ignore": white},
                                classes=["brick", "grass"])
    assert ordered.classes == ["brick", "grass"] and ordered.pixel_counts().tolist() == [2, 3]


def test_rgb_unknown_colour_is_bad_when_colours_are_given(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "d"
    _pair(root, "a", [[(255, 0, 0), (0, 0, 9)]], mode="RGB")
    with caplog.at_level(logging.WARNING, logger="deepfit"), pytest.raises(DataError, match="#000009"):
        read_segmentation(root, colors={"brick": (255, 0, 0)})
    assert "a.png: #000009 not in the class map (1 classes)" in "\n".join(_warnings(caplog))


def test_rgb_colours_inferred_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "d"
    _pair(root, "a", [[(255, 0, 0), (0, 0, 0)], [(0, 128, 0), (0, 0, 0)]], mode="RGB")
    _pair(root, "b", [[(0, 128, 0), (0, 128, 0)]], mode="RGB")
    with caplog.at_level(logging.INFO, logger="deepfit"):
        ds = read_segmentation(root)
    assert ds.kind == "rgb" and ds.classes == ["#000000", "#008000", "#ff0000"] and ds.ignore_value is None
    assert ds.values == [(0, 0, 0), (0, 128, 0), (255, 0, 0)]
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[2, 0], [1, 0]])
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    start = next(i for i, line in enumerate(lines) if line.startswith("inferred 3 classes"))
    logged = json.loads("\n".join(lines[start + 1:start + 4]))  # one line per class, together a colors file
    assert logged == {"#000000": [0, 0, 0], "#008000": [0, 128, 0], "#ff0000": [255, 0, 0]}


def test_grey_rgb_masks_read_as_values(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root, "a", [[(0, 0, 0), (2, 2, 2)], [(255, 255, 255), (2, 2, 2)]], mode="RGB")
    ds = read_segmentation(root)
    assert ds.kind == "index" and ds.classes == ["0", "2"]
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[0, 1], [IGNORE, 1]])


def test_custom_and_no_ignore_value(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root, "a", [[0, 1, 2, 255]])
    ds = read_segmentation(root, ignore_value=0)
    assert ds.classes == ["1", "2", "255"] and ds.ignore_value == 0
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[IGNORE, 0, 1, 2]])
    ds = read_segmentation(root, ignore_value=None)
    assert ds.classes == ["0", "1", "2", "255"] and ds.ignore_value is None
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), [[0, 1, 2, 3]])


def test_more_than_255_classes_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root, "a", np.arange(300, dtype=np.uint16).reshape(10, 30) * 7, mode="I;16")
    with pytest.raises(DataError, match=r"300 classes, more than 255: masks are read as uint8"):
        read_segmentation(root)


# --- class maps ------------------------------------------------------------------------------------


def test_class_map_round_trip_reads_the_same(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "train"
    _pair(root, "a", [[0, 1, 2], [255, 2, 2]], mode="P", palette=PALETTE)
    _pair(root, "b", [[1, 1, 0], [0, 0, 0]], mode="P", palette=PALETTE)
    ds = read_segmentation(root, ignore_value=0)
    saved = json.loads(json.dumps(ds.class_map()))  # as a run folder keeps it
    assert saved["kind"] == "palette" and saved["classes"] == ["1", "2", "255"] and saved["ignore_value"] == 0
    assert saved["ignore_index"] == IGNORE
    again = read_segmentation(root, class_map=saved)  # ignore_value's default does not override the map
    assert (again.classes, again.values, again.ignore_value, again.kind) == (ds.classes, ds.values, 0, "palette")
    np.testing.assert_array_equal(again.colors, ds.colors)
    for s, t in zip(ds.samples, again.samples, strict=True):
        np.testing.assert_array_equal(ds.read_mask(s), again.read_mask(t))
    # new data lacking class 2 and holding value 9 is read with the same mapping
    new = tmp_path / "eval"
    _pair(new, "c", [[1, 1], [0, 255]], mode="P", palette=PALETTE)
    _pair(new, "d", [[9, 1], [1, 1]], mode="P", palette=PALETTE)
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        evald = read_segmentation(new, class_map=saved, max_bad=1.0)
    assert evald.classes == ["1", "2", "255"] and [s.path.stem for s in evald.samples] == ["c"]
    np.testing.assert_array_equal(evald.read_mask(evald.samples[0]), [[0, 0], [IGNORE, 2]])
    assert "d.png: 9 not in the class map (3 classes)" in "\n".join(_warnings(caplog))
    rgb = tmp_path / "rgb"
    _pair(rgb, "e", [[(1, 2, 3)]], mode="RGB")
    with pytest.raises(DataError, match="RGB colours in a dataset of single-channel masks"):
        read_segmentation(rgb, class_map=saved)
    with pytest.raises(DataError, match="class_map is not one that"):
        read_segmentation(root, class_map={"kind": "index", "classes": ["a"]})


def test_dataset_pickles_for_loader_workers(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root, "a", A)
    ds = pickle.loads(pickle.dumps(read_segmentation(root)))
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), A)


# --- bad input -------------------------------------------------------------------------------------


def _with_problems(root: Path, good: int) -> None:
    for i in range(good):
        _pair(root, f"ok{i}", [[0, 1], [1, 1]])
    _image(root / "images" / "lonely.jpg", 2, 2)  # image without a mask
    _mask(root / "masks" / "orphan.png", [[0, 1], [1, 1]])  # mask without an image
    _image(root / "images" / "wide.jpg", 120, 80)
    _mask(root / "masks" / "wide.png", np.zeros((80, 100)))  # mask of another size
    _pair(root, "odd", [[0, 7], [1, 1]])  # value 7 is no class
    _image(root / "images" / "brokenmask.jpg", 2, 2)
    (root / "masks" / "brokenmask.png").write_bytes(b"not a png")
    (root / "images" / "brokenimage.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    _mask(root / "masks" / "brokenimage.png", [[0, 1], [1, 1]])


def test_bad_pairs_are_skipped_with_one_warning_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "d"
    _with_problems(root, 20)
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_segmentation(root, classes=["bg", "fg"], max_bad=1.0)
    assert len(ds) == 20 and all(s.path.stem.startswith("ok") for s in ds.samples)
    warned = _warnings(caplog)
    expected = {
        "lonely.jpg": "no mask",
        "orphan.png": "no image",
        "wide.png": "mask 100x80, image 120x80 (wide.jpg)",
        "odd.png": "7 not in the class map (2 classes)",
        "brokenmask.png": "Pillow cannot open this mask",
        "brokenimage.jpg": "Pillow cannot open this image",
    }
    for name, what in expected.items():
        mine = [w for w in warned if f"{name}:" in w]
        assert len(mine) == 1 and what in mine[0] and " — " in mine[0], (name, mine)  # with what to do
    assert len(warned) == len(expected)
    assert sorted(p.name for p, _ in ds.problems) == sorted(expected)
    problems = summarize(ds)["problems"]
    assert problems["images without a mask"] == [str((root / "images" / "lonely.jpg").resolve())]
    assert problems["masks without an image"] == [str((root / "masks" / "orphan.png").resolve())]
    assert problems["masks of another size"] == [f"{(root / 'masks' / 'wide.png').resolve()}: mask 100x80, "
                                                 "image 120x80 (wide.jpg)"]
    assert problems["unknown values"] == [f"{(root / 'masks' / 'odd.png').resolve()}: 7 not in the class map "
                                          "(2 classes)"]
    assert sorted(Path(p).name for p in problems["unreadable"]) == ["brokenimage.jpg", "brokenmask.png"]


def test_too_many_bad_pairs_is_an_error_naming_them(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _with_problems(root, 40)  # 5 bad (the image without a mask too) of 45: 11%
    with pytest.raises(DataError, match=r"5 of 45 image/mask pairs .* are bad \(more than 5%\)") as err:
        read_segmentation(root, classes=["bg", "fg"])
    for name in ("lonely.jpg", "wide.png", "odd.png", "brokenmask.png", "brokenimage.jpg"):
        assert name in str(err.value)
    assert "orphan" not in str(err.value)  # a mask without an image is reported, but no pair is lost
    for name in ("odd", "brokenmask", "brokenimage", "lonely"):  # the pairs go, masks and images
        for f in [*(root / "masks").glob(f"{name}.*"), *(root / "images").glob(f"{name}.*")]:
            f.unlink()
    assert len(read_segmentation(root, classes=["bg", "fg"])) == 40  # 1 bad of 41: only warned


def test_images_without_masks_are_bad_unless_skipped_on_purpose(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "d"
    _pair(root, "a", [[0, 1]])
    for i in range(5):  # partly labelled data, like Pascal VOC or coco128
        _image(root / "images" / f"unlabelled{i}.jpg", 2, 1)
    with pytest.raises(DataError, match=r"5 of 6 image/mask pairs.*unlabelled0\.jpg"):
        read_segmentation(root)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_segmentation(root, skip_unmasked=True)
    assert len(ds) == 1 and len(summarize(ds)["problems"]["images without a mask"]) == 5
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["left out 5 images without a mask (--skip-unmasked); `deepfit data check` lists them"]


def test_no_layout_says_what_is_understood(tmp_path: Path) -> None:
    _image(tmp_path / "d" / "photo.png", 8, 8)
    with pytest.raises(DataError, match=r"(?s)no segmentation masks found.*folders.*yaml.*coco"):
        read_segmentation(tmp_path / "d")
    _image(tmp_path / "e" / "images" / "a.png", 8, 8)
    with pytest.raises(DataError, match=r"(?s)no mask folder .* beside images/.*DATA/images"):
        read_segmentation(tmp_path / "e", format="folders")
    _mask(tmp_path / "f" / "masks" / "b.png", [[0]])
    _image(tmp_path / "f" / "images" / "a.png", 1, 1)
    with pytest.raises(DataError, match=r"no image/mask pairs"):
        read_segmentation(tmp_path / "f")


def test_summarize_counts_and_shares(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pair(root / "train", "a", A)
    _pair(root / "val", "b", [[2, 2], [2, 0]])
    summary = summarize(read_segmentation(root))
    assert summary["format"] == "folders" and summary["kind"] == "index" and summary["images"] == 2
    assert summary["classes"] == 3 and summary["splits"] == {"train": 1, "val": 1}
    assert summary["pixel_share"] == {"0": 4 / 13, "1": 4 / 13, "2": 5 / 13}
    assert summary["ignored_share"] == 3 / 16
    assert all(v == [] for v in summary["problems"].values()) and len(summary["problems"]) == 5


# --- the real coco128 ------------------------------------------------------------------------------

_CACHED_COCO128 = Path("/root/.cache/deepfit/data/coco128")


@pytest.fixture(scope="session")
def coco128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """coco128's semantic masks and images: the unpacked copy in the cache, else extracted from the
    shared archive (as CI has it), else skipped."""
    if (_CACHED_COCO128 / "semantic_segmentation" / "config.yaml").is_file():
        return _CACHED_COCO128
    tar = SHARED / "data" / "coco128.tar"
    if not tar.is_file():
        pytest.skip(f"coco128 is neither unpacked in {_CACHED_COCO128} nor in {tar}")
    target = tmp_path_factory.mktemp("coco128-semantic")
    with tarfile.open(tar) as archive:
        chosen = [m for m in archive.getmembers() if m.isfile() and m.name.startswith(
            ("coco128/semantic_segmentation/", "coco128/images/"))]
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, members=chosen, filter="data")
        else:
            archive.extractall(target, members=chosen)
    return target / "coco128"


def test_coco128_semantic_yaml(coco128: Path) -> None:
    config = coco128 / "semantic_segmentation" / "config.yaml"
    ds = read_segmentation(config, skip_unmasked=True)
    assert (ds.format, ds.kind, ds.ignore_value) == ("yaml", "index", 255)
    # the YAML names 130 values (0 = unlabeled and 129 panoptic categories, ids up to 200 with gaps)
    assert len(ds.classes) == 130 and ds.classes[:2] == ["unlabeled", "person"]
    assert ds.values[:4] == [0, 1, 2, 3] and ds.values[-1] == 200 and ds.classes[-1] == "rug-merged"
    assert summarize(ds)["splits"] == {"train": 100, "val": 100}
    # 28 images of each split have no mask: left out on purpose, reported, not counted as bad
    assert len(summarize(ds)["problems"]["images without a mask"]) == 56
    first = ds.samples[0]
    raw = np.asarray(Image.open(first.mask))
    assert Image.open(first.mask).mode == "L" and raw.shape == (first.height, first.width)
    assert (first.width, first.height) == Image.open(first.path).size
    np.testing.assert_array_equal(ds.read_mask(first), np.searchsorted(ds.values, raw))  # values sorted
    assert first.counts.sum() == first.width * first.height

    unlabeled = read_segmentation(config, ignore_value=0, skip_unmasked=True)
    assert len(unlabeled.classes) == 129 and "unlabeled" not in unlabeled.classes
    got = unlabeled.read_mask(unlabeled.samples[0])
    np.testing.assert_array_equal(got == IGNORE, raw == 0)
    np.testing.assert_array_equal(got[raw != 0], np.searchsorted(unlabeled.values, raw[raw != 0]))
    area = sum(s.width * s.height for s in unlabeled.samples)
    zeros = ds.pixel_counts()[0]
    assert unlabeled.pixel_counts().sum() == area - zeros
    np.testing.assert_array_equal(unlabeled.pixel_counts(), ds.pixel_counts()[1:])
