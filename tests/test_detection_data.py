"""Reading detection / instance-segmentation labels: COCO JSON, YOLO txt, Pascal VOC XML, mask PNGs."""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from deepfit.errors import DataError
from deepfit.tasks.detect.data import (
    DetectionSample,
    rasterize,
    read_detection,
    summarize,
)


def _image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (30, 60, 90)).save(path)
    return path


def _shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- YOLO ------------------------------------------------------------------------------------------


def _yolo(root: Path, yaml_text: str, labels: dict[str, str], images: dict[str, tuple[int, int]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml_text)
    for name, size in images.items():
        _image(root / "images" / f"{name}.png", *size)
    for name, text in labels.items():
        (root / "labels" / f"{name}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{name}.txt").write_text(text)
    return root


def test_yolo_boxes_normalised_to_pixel_xyxy(tmp_path: Path) -> None:
    root = _yolo(
        tmp_path / "d", "names: [cat, dog]\n",
        {"train/a": "1 0.5 0.5 0.25 0.5\n0 0.125 0.25 0.25 0.5\n", "val/b": "0 0.5 0.5 1.0 1.0\n"},
        {"train/a": (64, 32), "val/b": (40, 20), "train/empty": (10, 10)},
    )
    ds = read_detection(root)
    assert ds.format == "yolo" and ds.classes == ["cat", "dog"]
    by_name = {s.path.stem: s for s in ds.samples}
    a = by_name["a"]
    np.testing.assert_array_equal(a.boxes, np.array([[24, 8, 40, 24], [0, 0, 16, 16]], dtype=np.float32))
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64 and a.labels.tolist() == [1, 0]
    assert (a.width, a.height, a.split, a.masks) == (64, 32, "train", None)
    np.testing.assert_array_equal(by_name["b"].boxes, [[0, 0, 40, 20]])
    assert by_name["b"].split == "val"
    assert len(by_name["empty"]) == 0 and by_name["empty"].boxes.shape == (0, 4)  # background image kept
    summary = summarize(ds)
    assert summary["images"] == 3 and summary["objects"] == 3 and summary["images_without_objects"] == 1
    assert summary["objects_per_class"] == {"cat": 2, "dog": 1} and summary["format"] == "yolo"


def test_yolo_seg_polygons_and_dict_names_with_gaps(tmp_path: Path) -> None:
    poly = "0.1 0.1 0.9 0.1 0.9 0.6 0.1 0.9"
    root = _yolo(tmp_path / "d", "names:\n  1: person\n  3: car\n", {"a": f"3 {poly}\n1 0.5 0.5 0.2 0.2\n"},
                 {"a": (100, 50)})
    ds = read_detection(root / "data.yaml")
    assert ds.classes == ["person", "car"] and ds.class_ids == [1, 3]
    s = ds.samples[0]
    assert s.labels.tolist() == [1, 0]
    np.testing.assert_allclose(s.boxes[0], [10, 5, 90, 45], atol=1e-4)  # the polygon's extent
    assert s.masks is not None and s.masks[1] is None  # box-only line in a seg file
    points = np.array([float(v) for v in poly.split()]).reshape(-1, 2) * [100, 50]
    np.testing.assert_allclose(s.masks[0][0], points.ravel())
    area = s.mask(0).sum()
    assert s.mask(0).shape == (50, 100) and abs(area - _shoelace(points)) < 0.05 * _shoelace(points)
    assert s.mask(1).sum() == 20 * 10  # a box-only object rasterises to its box


def test_yolo_bad_lines_are_dropped_with_their_line_number(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = "0 0.5 0.5 0.2 0.2\n" * 100
    bad = "7 0.5 0.5 0.2 0.2\n0 0.5 0.5 0 0.2\n0 0.1 0.1\n0 1.05 0.5 0.2 0.2\n"
    root = _yolo(tmp_path / "d", "names: [cat]\n", {"a": good + bad, "orphan": "0 0.5 0.5 0.1 0.1\n"}, {"a": (50, 50)})
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_detection(root)
    text = "\n".join(_warnings(caplog))
    assert "a.txt:101: class id 7 is not in the class names" in text
    assert "a.txt:102: box" in text and "zero size" in text
    assert "a.txt:103: polygon has 1 point(s)" in text
    assert "a.txt:104: box" in text and "clipped" in text  # reaches 5.5 px outside: kept, clipped
    assert "orphan.txt: no image" in text
    assert len(ds.samples[0]) == 101
    np.testing.assert_allclose(ds.samples[0].boxes[-1], [47.5, 20, 50, 30])


def test_yolo_yaml_without_names_is_an_error(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "d", "path: .\ntrain: images\n", {"a": "0 0.5 0.5 0.2 0.2\n"}, {"a": (8, 8)})
    with pytest.raises(DataError, match=r"data\.yaml has no class names"):
        read_detection(root)


def test_too_many_bad_annotations_is_an_error_listing_them(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "d", "names: [cat]\n", {"a": "0 0.5 0.5 0.2 0.2\n" * 10 + "4 0.5 0.5 0.2 0.2\n"},
                 {"a": (8, 8)})
    with pytest.raises(DataError, match=r"1 of 11 annotations .* are bad .*a\.txt:11: class id 4"):
        read_detection(root)


def test_no_labels_at_all_shows_the_expected_layouts(tmp_path: Path) -> None:
    _image(tmp_path / "d" / "photo.png", 8, 8)
    with pytest.raises(DataError, match=r"(?s)no detection labels found.*COCO.*YOLO.*Pascal VOC.*masks"):
        read_detection(tmp_path / "d")
    root = _yolo(tmp_path / "e", "names: [cat]\n", {"a": ""}, {"a": (8, 8)})
    with pytest.raises(DataError, match=r"(?s)no labelled objects found.*DATA/labels"):
        read_detection(root)


# --- COCO ------------------------------------------------------------------------------------------


def _coco(root: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    images = images if images is not None else [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
    ]
    for img in images:
        _image(root / "images" / img["file_name"], img["width"], img["height"])
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "dog"}, {"id": 2, "name": "cat"}]}
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def _ann(i: int, bbox: list[float], category: int = 2, image: int = 1, **extra) -> dict:
    return {"id": i, "image_id": image, "category_id": category, "bbox": bbox, "iscrowd": 0, **extra}


def test_coco_boxes_polygons_rle_and_crowd(tmp_path: Path) -> None:
    square = np.zeros((48, 64), dtype=np.uint8)
    square[10:20, 30:50] = 1
    compressed = mask_utils.encode(np.asfortranarray(square))
    compressed["counts"] = compressed["counts"].decode("ascii")  # as JSON holds it
    uncompressed = {"size": [48, 64], "counts": [48 * 5, 48 * 2, 48 * 57]}  # columns 5-6, column-major
    poly = [10.0, 10.0, 40.0, 10.0, 40.0, 30.0]
    path = _coco(tmp_path / "d", [
        _ann(1, [10, 10, 30, 20], 7, segmentation=[poly]),
        _ann(2, [30, 10, 20, 10], segmentation=compressed),
        {**_ann(3, [5, 0, 2, 48], segmentation=uncompressed), "iscrowd": 1},
        _ann(4, [1.5, 2.5, 3.25, 4.0]),
    ])
    ds = read_detection(tmp_path / "d")  # the folder: its one COCO file is found
    assert ds.format == "coco" and ds.classes == ["cat", "dog"] and ds.class_ids == [2, 7]
    a, b = ds.samples
    assert b.path.name == "b.png" and len(b) == 0  # an image without annotations is kept
    np.testing.assert_array_equal(a.boxes, np.array(
        [[10, 10, 40, 30], [30, 10, 50, 20], [5, 0, 7, 48], [1.5, 2.5, 4.75, 6.5]], dtype=np.float32))
    assert a.labels.tolist() == [1, 0, 0, 0] and a.iscrowd.tolist() == [False, False, True, False]
    assert a.masks is not None and a.masks[3] is None
    points = np.array(poly).reshape(-1, 2)
    assert abs(a.mask(0).sum() - _shoelace(points)) < 0.05 * _shoelace(points)
    np.testing.assert_array_equal(a.mask(1), square.astype(bool))
    expected = np.zeros((48, 64), dtype=bool)
    expected[:, 5:7] = True
    np.testing.assert_array_equal(a.mask(2), expected)
    np.testing.assert_array_equal(rasterize(a.masks[1], 48, 64), square.astype(bool))
    assert summarize(ds)["crowd_objects"] == 1 and path.name == "annotations.json"


def test_coco_bad_annotations_are_dropped_with_their_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [_ann(100 + i, [1, 1, 5, 5]) for i in range(200)]
    bad = [
        _ann(1, [1, 1, 5, 5], category=99),
        _ann(2, [10, 10, -3, 5]),
        _ann(3, [10, 10, 0, 5]),
        _ann(4, [1, 1, 5, 5], segmentation=[[1, 1, 5, 5]]),
        _ann(5, [1, 1, 5, 5], segmentation={"size": [10, 10], "counts": [100]}),
        _ann(6, [1, 1, 5, 5], image=42),
        _ann(7, [60, 40, 10, 10]),  # reaches outside the 64x48 image: clipped, kept
        _ann(8, [1, 1, 5, 5], image=3),
    ]
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    path = _coco(tmp_path / "d", good + bad, images)
    data = json.loads(path.read_text())
    data["images"].append({"id": 3, "file_name": "gone.png", "width": 8, "height": 8})
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_detection(path)
    text = "\n".join(_warnings(caplog))
    for expected in ("annotation id 1: category_id 99", "annotation id 2: box x1=10 y1=10 x2=7 y2=15 has x2 < x1",
                     "annotation id 3: box", "zero size", "annotation id 4: polygon has 2 point(s)",
                     "annotation id 5: RLE size [10, 10] differs", "annotation id 6: image_id 42",
                     "annotation id 7: box", "clipped", "image id 3: image file gone.png not found"):
        assert expected in text, expected
    assert ds.num_objects == 201
    np.testing.assert_array_equal(ds.samples[0].boxes[-1], [60, 40, 64, 48])


# --- Pascal VOC ------------------------------------------------------------------------------------


def _voc_xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int], int]], size=(50, 40)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects
    )
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def test_voc_boxes_classes_and_difficult(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "voc"
    _image(root / "JPEGImages" / "x.jpg", 50, 40)
    (root / "Annotations").mkdir()
    (root / "Annotations" / "x.xml").write_text(
        _voc_xml("x.jpg", [("person", (1, 1, 10, 20), 0), ("bike", (11, 5, 50, 40), 1)]))
    ds = read_detection(root)
    assert ds.format == "voc" and ds.classes == ["bike", "person"]
    s = ds.samples[0]
    np.testing.assert_array_equal(s.boxes, [[0, 0, 10, 20], [10, 4, 50, 40]])  # 1-based inclusive -> xyxy
    assert s.labels.tolist() == [1, 0] and s.iscrowd.tolist() == [False, True]
    objs = [("person", (1, 1, 10, 20), 0)] * 30 + [("bike", (5, 5, 9, 9), 0)]
    (root / "Annotations" / "x.xml").write_text(_voc_xml("x.jpg", objs))
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_detection(root, classes=["person"])
    assert "x.xml object 31: class 'bike' is not among the classes" in "\n".join(_warnings(caplog))
    assert ds.num_objects == 30


# --- instance-mask PNGs ----------------------------------------------------------------------------


def test_mask_pngs_one_object_per_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "m"
    _image(root / "images" / "a.jpg", 32, 24)
    _image(root / "images" / "b.jpg", 32, 24)
    values = np.zeros((24, 32), dtype=np.uint8)
    values[2:6, 3:9] = 1
    values[10:20, 20:30] = 5
    (root / "masks").mkdir()
    Image.fromarray(values).save(root / "masks" / "a.png")
    Image.fromarray(np.ones((10, 10), dtype=np.uint8)).save(root / "masks" / "b.png")  # wrong size
    with caplog.at_level(logging.WARNING, logger="deepfit"), pytest.raises(DataError, match="mask is 10x10"):
        read_detection(root)  # 1 bad of 3 objects: more than 5%
    (root / "masks" / "b.png").unlink()
    ds = read_detection(root)
    assert ds.format == "masks" and ds.classes == ["object"]
    a = next(s for s in ds.samples if s.path.stem == "a")
    np.testing.assert_array_equal(a.boxes, [[3, 2, 9, 6], [20, 10, 30, 20]])
    np.testing.assert_array_equal(a.mask(1), values == 5)
    assert summarize(ds)["images_without_objects"] == 1
    (root / "classes.json").write_text(json.dumps({"a": {"1": "cat", "5": "dog"}}))
    ds = read_detection(root)
    assert ds.classes == ["cat", "dog"]
    assert next(s for s in ds.samples if s.path.stem == "a").labels.tolist() == [0, 1]


def test_sample_mask_of_a_box(tmp_path: Path) -> None:
    s = DetectionSample(tmp_path / "x.png", 10, 8, np.array([[1.5, 2, 4, 5]], np.float32), np.array([0]))
    assert s.mask(0).sum() == 3 * 3 and len(s) == 1 and s.iscrowd.tolist() == [False]


# --- the real coco128 ------------------------------------------------------------------------------

_COCO128_IMAGES = 10


@pytest.fixture(scope="session")
def coco128(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The YOLO detection labels, the COCO JSON and the first 10 train images of coco128, extracted once."""
    target = tmp_path_factory.mktemp("coco128-tar")
    with tarfile.open(shared_dir / "data" / "coco128.tar") as archive:
        members = archive.getmembers()
        images = sorted(m.name for m in members if m.name.startswith("coco128/images/train2017/"))
        keep = set(images[:_COCO128_IMAGES])
        stems = {Path(n).stem for n in keep}
        chosen = [
            m for m in members if m.isfile() and (
                m.name in keep or m.name in ("coco128/object_detection/config.yaml",
                                             "coco128/coco_json/instances_train2017.json")
                or m.name.startswith("coco128/object_detection/labels/train2017/") and Path(m.name).stem in stems
            )
        ]
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, members=chosen, filter="data")
        else:
            archive.extractall(target, members=chosen)
    return target / "coco128"


def test_coco128_yolo_and_coco_json_agree(coco128: Path) -> None:
    ds = read_detection(coco128 / "object_detection")
    assert len(ds.classes) == 80 and ds.classes[0] == "person" and ds.classes[-1] == "toothbrush"
    assert len(ds.samples) == _COCO128_IMAGES and all(s.split == "train" for s in ds.samples)
    assert ds.num_objects > 20
    for s in ds.samples:
        assert (s.width, s.height) == Image.open(s.path).size
        assert (s.boxes[:, 2:] > s.boxes[:, :2]).all() and (s.boxes >= 0).all()
        assert (s.boxes[:, [2, 3]] <= [s.width, s.height]).all()
    # the COCO JSON of the same images: same boxes (to the YOLO files' 6 decimals) and the same class indexes
    full = json.loads((coco128 / "coco_json" / "instances_train2017.json").read_text())
    names = {s.path.name for s in ds.samples}
    full["images"] = [i for i in full["images"] if i["file_name"] in names]
    ids = {i["id"] for i in full["images"]}
    full["annotations"] = [a for a in full["annotations"] if a["image_id"] in ids]
    small = coco128 / "coco_json" / "first10_train2017.json"  # images found in ../images/train2017
    small.write_text(json.dumps(full))
    coco = read_detection(small)
    assert coco.classes == ds.classes and coco.has_masks
    elsewhere = read_detection(small, images=coco128 / "images" / "train2017")  # the image folder named
    assert [s.path for s in elsewhere.samples] == [s.path for s in coco.samples]
    for y, c in zip(ds.samples, coco.samples, strict=True):
        assert y.path == c.path
        plain = ~c.iscrowd  # the YOLO files leave crowd regions out
        order_y, order_c = np.lexsort(y.boxes.T[::-1]), np.lexsort(c.boxes[plain].T[::-1])
        np.testing.assert_allclose(y.boxes[order_y], c.boxes[plain][order_c], atol=0.01)
        assert y.labels[order_y].tolist() == c.labels[plain][order_c].tolist()


def test_cli_data_check_summarises_and_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deepfit.cli import main

    good = "0 0.5 0.5 0.2 0.2\n" * 30
    root = _yolo(tmp_path / "d", "names: [cat, dog]\n", {"a": good + "1 0.5 0.5 0 0.2\n", "b": "1 0.5 0.5 0.4 0.4\n"},
                 {"a": (50, 50), "b": (40, 40), "c": (20, 20)})
    assert main(["data", "check", str(root)]) == 0
    captured = capsys.readouterr()
    assert "yolo labels" in captured.out and "3 images, 31 objects in 2 classes" in captured.out
    assert "cat" in captured.out and "30" in captured.out and "images with no objects: 1" in captured.out
    assert "a.txt:31" in captured.err and "zero size" in captured.err  # the bad box, by file and line
    _image(tmp_path / "e" / "photo.png", 8, 8)
    assert main(["data", "check", str(tmp_path / "e")]) == 2
    assert "no labels found" in capsys.readouterr().err  # with every task's layouts (tests/test_mask_layouts.py)


def test_cli_output_to_a_file_or_pipe_is_never_wrapped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Written to a pipe (as capsys is, or `> log.txt`), a summary line stays one line however long its path."""
    from deepfit.cli import main

    deep = tmp_path / ("a-long-folder-name-" * 6) / ("another-long-one-" * 5)
    root = _yolo(deep / "d", "names: [a-class-with-a-rather-long-name-that-would-not-fit-eighty-columns, dog]\n",
                 {"a": "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.4 0.4\n"}, {"a": (50, 50)})
    assert len(str(root)) > 200
    assert main(["data", "check", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"yolo labels in {root}: 1 images, 2 objects in 2 classes" in lines
    name = "a-class-with-a-rather-long-name-that-would-not-fit-eighty-columns"
    assert any(name in line.split() and "1" in line.split() for line in lines)  # the table row: name and count on one line
