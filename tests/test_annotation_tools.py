"""The files of the annotation tools people label with, read directly: VGG Image Annotator (VIA) JSON, LabelMe
JSON and CVAT XML, for detection, instance segmentation and semantic segmentation, with `deepfit data check`
saying how it read them, and bad files refused in one line."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfit.cli import main
from deepfit.data.formats.layout import object_format
from deepfit.errors import DataError
from deepfit.tasks.detect.data import read_detection, summarize
from deepfit.tasks.segment.data import read_segmentation


def _image(path: Path, width: int = 40, height: int = 30, array: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(array) if array is not None else Image.new("RGB", (width, height), (30, 60, 90))).save(path)
    return path


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def _poly(xs: list[float], ys: list[float], **attrs: object) -> dict:
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys}, "region_attributes": attrs}


def _rect(x: float, y: float, w: float, h: float, **attrs: object) -> dict:
    return {"shape_attributes": {"name": "rect", "x": x, "y": y, "width": w, "height": h}, "region_attributes": attrs}


def _via(path: Path, images: dict[str, list[dict]]) -> Path:
    """A VIA 2 export: "<filename><size>" -> {filename, size, regions, file_attributes}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({f"{name}1234": {"filename": name, "size": 1234, "regions": regions, "file_attributes": {}}
                                for name, regions in images.items()}))
    return path


# --- VIA ---------------------------------------------------------------------------------------------------------------


def test_via_polygons_are_masks_rectangles_boxes_circles_polygons(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "d"
    _image(root / "train" / "a.png", 40, 30)
    _image(root / "val" / "b.png", 20, 20)
    circle = {"shape_attributes": {"name": "circle", "cx": 10, "cy": 10, "r": 5}, "region_attributes": {"type": "cat"}}
    ellipse = {"shape_attributes": {"name": "ellipse", "cx": 10, "cy": 10, "rx": 6, "ry": 3, "theta": 0.5},
               "region_attributes": {"type": "dog"}}
    point = {"shape_attributes": {"name": "point", "cx": 1, "cy": 1}, "region_attributes": {"type": "dog"}}
    _via(root / "train" / "via_region_data.json", {"a.png": [
        _poly([5, 25, 25, 5], [5, 5, 20, 20], type="dog"), _rect(1, 2, 10, 8, type="cat"), point]})
    _via(root / "val" / "via_region_data.json", {"b.png": [circle, ellipse]})
    assert object_format(root) == "via"
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_detection(root)
    assert "left out 1 point" in _warnings(caplog)
    assert ds.format == "via" and ds.classes == ["cat", "dog"]  # natural order, not the order met
    a, b = ds.samples
    assert (a.path.name, a.split, b.path.name, b.split) == ("a.png", "train", "b.png", "val")
    np.testing.assert_array_equal(a.boxes, [[5, 5, 25, 20], [1, 2, 11, 10]])
    assert a.labels.tolist() == [1, 0] and a.boxes.dtype == np.float32
    assert a.masks[1] is None  # a rectangle: a box only, as a COCO bbox without a segmentation
    assert a.mask(0).sum() == 20 * 15 and a.mask(0)[5:20, 5:25].all()
    assert abs(int(b.mask(0).sum()) - np.pi * 25) < 12  # the circle's 64-gon, filled
    assert abs(int(b.mask(1).sum()) - np.pi * 18) < 12 and b.labels.tolist() == [0, 1]
    summary = summarize(ds)
    assert summary["splits"] == {"train": 1, "val": 1} and summary["has_masks"]
    assert "VGG Image Annotator (VIA) JSON, 2 files (train/via_region_data.json, val/via_region_data.json)" in summary["read_as"]


def test_via_project_files_and_via1_region_dicts(tmp_path: Path) -> None:
    _image(tmp_path / "d" / "images" / "a.png")
    regions = {"0": _poly([1, 9, 9], [1, 1, 9]), "1": _rect(2, 2, 4, 4)}  # VIA 1: a dict; no attributes at all
    project = {"_via_settings": {}, "_via_attributes": {"region": {}, "file": {}}, "_via_data_format_version": "2.0.10",
               "_via_img_metadata": {"a.png99": {"filename": "a.png", "size": 99, "regions": regions, "file_attributes": {}}}}
    (tmp_path / "d" / "project.json").write_text(json.dumps(project))
    ds = read_detection(tmp_path / "d" / "project.json")
    assert ds.format == "via" and ds.classes == ["object"] and len(ds.samples[0]) == 2  # the balloon data set's case
    assert "all are of one class, 'object'" in ds.read_as


def test_via_class_attribute_is_the_only_one_or_the_one_chosen(tmp_path: Path) -> None:
    _image(tmp_path / "d" / "a.png")
    _via(tmp_path / "d" / "via.json", {"a.png": [
        _rect(1, 1, 5, 5, type="cat", colour="black"),
        _rect(2, 2, 5, 5, type={"dog": True, "cat": False}, colour="white"),  # a checkbox: its one ticked option
        *[_rect(3, 3, 5, 5, type="cat", colour="black")] * 20,
        _rect(3, 3, 5, 5, type="", colour="white"),  # no class: a bad object (1 of 23)
    ]})
    with pytest.raises(DataError, match=r"have the attributes colour, type: choose the one that names the class with "
                                        r"--label-attribute NAME") as error:
        read_detection(tmp_path / "d")
    assert "\n" not in str(error.value)
    ds = read_detection(tmp_path / "d", label_attribute="type")
    assert ds.classes == ["cat", "dog"] and ds.samples[0].labels.tolist()[:2] == [0, 1] and ds.num_objects == 22
    assert read_detection(tmp_path / "d", label_attribute="colour").classes == ["black", "white"]
    with pytest.raises(DataError, match=r"no region in .*via.json has the attribute 'kind' \(label_attribute\): the "
                                        r"regions' attributes are colour, type"):
        read_detection(tmp_path / "d", label_attribute="kind")
    with pytest.raises(DataError, match="label_attribute is for VIA JSON"):
        read_detection(tmp_path / "d", format="coco", label_attribute="type")


# --- LabelMe -----------------------------------------------------------------------------------------------------------


def _shape(label: str, points: list, kind: str = "polygon", group: int | None = None, **more: object) -> dict:
    return {"label": label, "points": points, "group_id": group, "shape_type": kind, "flags": {}, **more}


def _labelme(path: Path, image_path: str, shapes: list[dict], size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
                                "imageData": None, "imageHeight": size[1], "imageWidth": size[0]}))
    return path


def _png64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8) * 255).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_labelme_shapes_in_a_folder_of_their_own(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "d"
    _image(root / "images" / "train" / "a.png", 40, 30)
    _image(root / "images" / "val" / "b.png", 40, 30)
    brush = np.zeros((4, 6), dtype=bool)
    brush[1:3, 2:5] = True
    _labelme(root / "annotations" / "train" / "a.json", "..\\..\\images\\train\\a.png", [  # as LabelMe saves on Windows
        _shape("person", [[30, 20], [10, 5]], "rectangle"),  # dragged from the bottom right corner
        _shape("car", [[0, 0], [10, 0], [10, 10], [0, 10]], group=1),
        _shape("car", [[20, 20], [30, 20], [30, 25], [20, 25]], group=1),  # the same car, behind a pole: one object
        _shape("car", [[5, 5], [5, 9]], "line"),
        _shape("ball", [[20, 10], [20, 14]], "circle"),
        _shape("ball", [[10, 20], [15, 23]], "mask", mask=_png64(brush)),
    ])
    _labelme(root / "annotations" / "val" / "b.json", "b.png", [_shape("car", [[1, 1], [8, 1], [8, 8]])])
    assert object_format(root) == "labelme"
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_detection(root)
    assert "left out 1 line" in _warnings(caplog)
    assert ds.format == "labelme" and ds.classes == ["ball", "car", "person"]
    a, b = ds.samples
    assert (a.split, b.split) == ("train", "val") and b.path.name == "b.png"  # found by name under DATA
    names = [ds.classes[i] for i in a.labels]
    assert sorted(names) == ["ball", "ball", "car", "person"]
    person, car = names.index("person"), names.index("car")
    np.testing.assert_array_equal(a.boxes[person], [10, 5, 30, 20])
    assert a.masks[person] is None
    np.testing.assert_array_equal(a.boxes[car], [0, 0, 30, 25])  # the extent of both pieces
    assert int(a.mask(car).sum()) == 100 + 50  # the two pieces: 10 x 10 and 10 x 5
    brush_object = next(i for i, n in enumerate(names) if n == "ball" and isinstance(a.masks[i], dict))
    np.testing.assert_array_equal(a.boxes[brush_object], [12, 21, 15, 23])  # the PNG placed at the box's corner
    assert int(a.mask(brush_object).sum()) == 6
    assert "LabelMe JSON, 2 files (annotations/train/a.json, annotations/val/b.json)" in ds.read_as


def test_labelme_files_beside_their_images(tmp_path: Path) -> None:
    _image(tmp_path / "d" / "a.png")
    _labelme(tmp_path / "d" / "a.json", "a.png", [_shape("cat", [[1, 1], [9, 1], [9, 9], [1, 9]])])
    ds = read_detection(tmp_path / "d")
    assert ds.format == "labelme" and ds.classes == ["cat"] and ds.samples[0].mask(0).sum() == 64


# --- CVAT --------------------------------------------------------------------------------------------------------------

CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>t</name><labels><label><name>car</name></label><label><name>tree</name></label></labels></task></meta>
  <image id="0" name="a.png" width="40" height="30" subset="Train">
    <box label="car" source="manual" occluded="1" xtl="2" ytl="3" xbr="12" ybr="9" z_order="0"></box>
    <box label="car" source="manual" occluded="0" xtl="20" ytl="10" xbr="30" ybr="20" rotation="45"></box>
    <polygon label="tree" source="manual" occluded="0" points="5.0,5.0;15.0,5.0;15.0,15.0;5.0,15.0" z_order="0"></polygon>
    <polyline label="tree" source="manual" occluded="0" points="1,1;2,2"></polyline>
    <tag label="car" source="manual"></tag>
  </image>
  <image id="1" name="b.png" width="40" height="30" subset="Validation">
    <ellipse label="tree" source="manual" occluded="0" cx="20" cy="15" rx="8" ry="4" rotation="0"></ellipse>
    <mask label="car" source="manual" occluded="0" rle="1, 2, 2, 2, 1" left="3" top="4" width="4" height="2" z_order="0"></mask>
  </image>
  <image id="2" name="c.png" width="40" height="30"></image>
</annotations>
"""


def _cvat(root: Path, text: str = CVAT) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        _image(root / "images" / name)
    (root / "annotations.xml").write_text(text)
    return root


def test_cvat_boxes_polygons_ellipses_masks_and_subsets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _cvat(tmp_path / "d")
    assert object_format(root) == "cvat" and object_format(root / "annotations.xml") == "cvat"
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_detection(root)
    assert "left out 1 polyline" in _warnings(caplog)
    assert ds.format == "cvat" and ds.classes == ["car", "tree"]
    a, b, c = ds.samples
    assert (a.split, b.split, c.split, len(c)) == ("train", "val", None, 0)
    assert a.labels.tolist() == [0, 0, 1] and a.masks[0] is None
    np.testing.assert_array_equal(a.boxes[0], [2, 3, 12, 9])
    half = 5 * np.sqrt(2)  # a 10 x 10 box turned by 45 degrees about its centre (25, 15): a diamond
    np.testing.assert_allclose(a.boxes[1], [25 - half, 15 - half, 25 + half, 15 + half], atol=1e-4)
    assert abs(int(a.mask(1).sum()) - 100) < 12 and a.mask(2).sum() == 100
    assert abs(int(b.mask(0).sum()) - np.pi * 32) < 12
    # CVAT's runs over the 4 x 2 box at (3, 4), row by row from background: 0 1 1 0 / 0 1 1 0
    expected = np.zeros((30, 40), dtype=bool)
    expected[4:6, 4:6] = True
    np.testing.assert_array_equal(b.mask(1), expected)
    np.testing.assert_array_equal(b.boxes[1], [4, 4, 6, 6])


def test_cvat_video_exports_and_voc_files_are_told_apart(tmp_path: Path) -> None:
    video = CVAT.replace('<image id="2" name="c.png" width="40" height="30"></image>',
                         '<track id="0" label="car"><box frame="0" xtl="1" ytl="1" xbr="5" ybr="5" outside="0"/></track>')
    _cvat(tmp_path / "v", video)
    with pytest.raises(DataError, match=r"is a 'CVAT for video' export \(tracks\): export the task as 'CVAT for "
                                        r"images 1.1'") as error:
        read_detection(tmp_path / "v")
    assert "\n" not in str(error.value)
    voc = tmp_path / "voc"  # Pascal VOC's Annotations/ of <annotation> files stays VOC
    _image(voc / "JPEGImages" / "a.jpg")
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / "a.xml").write_text("<annotation><filename>a.jpg</filename><object><name>cat</name><bndbox>"
                                               "<xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
                                               "</annotation>")
    assert object_format(voc) == "voc"


# --- telling the JSON formats apart ------------------------------------------------------------------------------------


def test_json_formats_are_told_by_their_keys_not_their_values(tmp_path: Path) -> None:
    _image(tmp_path / "v" / "a.png")
    _via(tmp_path / "v" / "via.json", {"a.png": [_rect(1, 1, 5, 5, categories="images")]})  # COCO's key names as values
    assert object_format(tmp_path / "v") == "via" and read_detection(tmp_path / "v").classes == ["images"]
    _image(tmp_path / "l" / "a.png")
    _labelme(tmp_path / "l" / "a.json", "a.png", [_shape("annotations", [[1, 1], [5, 1], [5, 5]])],)
    assert object_format(tmp_path / "l") == "labelme"
    _image(tmp_path / "c" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "categories": [{"id": 1, "name": "shapes"}, {"id": 2, "name": "regions"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]}
    (tmp_path / "c" / "annotations.json").write_text(json.dumps(coco))
    assert object_format(tmp_path / "c") == "coco" and object_format(tmp_path / "c" / "annotations.json") == "coco"


# --- bad input ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["via", "labelme", "cvat"])
def test_a_malformed_file_is_a_one_line_error_naming_it(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    _image(root / "a.png")
    if fmt == "via":
        bad = root / "via.json"
        bad.write_text('{"a.png1": {"filename": "a.png", "regions": [{"shape_attributes": ')  # cut off
    elif fmt == "labelme":
        bad = root / "a.json"
        bad.write_text('{"version": "5.0", "shapes": [{"label": "cat", "points": [[1, 1], ')
    else:
        bad = root / "annotations.xml"
        bad.write_text("<annotations><image id='0' name='a.png'><box label='x'</image></annotations>")
    assert object_format(root) == fmt
    with pytest.raises(DataError, match=f"cannot (read|parse) .*{bad.name}") as error:
        read_detection(root)
    assert "\n" not in str(error.value) and str(bad) in str(error.value)
    assert main(["data", "check", str(root), "--task", "detect"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot") and "\n" not in err and "Traceback" not in err


def test_missing_images_and_bad_shapes_are_bad_annotations(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "d"
    images = {}
    for i in range(30):
        _image(root / f"{i}.png")
        images[f"{i}.png"] = [_rect(1, 1, 5, 5, type="cat")] * 2
    images["gone.png"] = [_rect(1, 1, 5, 5, type="cat")]  # not on disk: its region is bad, the rest are read
    images["0.png"] = [_rect(1, 1, 5, 5, type="cat"), _poly([1, 2], [1, 2], type="cat")]  # a polygon of 2 points
    _image(root / "photos" / "web.png")
    images["https://example.com/photos/web.png"] = [_rect(1, 1, 5, 5, type="cat")]  # downloaded: found by its name
    _via(root / "via.json", images)
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        ds = read_detection(root)
    warned = _warnings(caplog)
    assert "image gone.png" in warned and "image file gone.png not found" in warned
    assert "region 2: polygon has 2 point(s)" in warned
    assert len(ds.samples) == 31 and ds.num_objects == 60
    images.update({f"gone{i}.png": [_rect(1, 1, 5, 5, type="cat")] * 2 for i in range(3)})  # 8 of 68: too many
    _via(root / "via.json", images)
    with pytest.raises(DataError, match=r"8 of 68 annotations in .*via.json are bad \(more than 5%\)"):
        read_detection(root)


# --- semantic segmentation ---------------------------------------------------------------------------------------------


def _tool_data(fmt: str, root: Path) -> Path:
    """One 40 x 30 image labelled in `fmt`: a "big" 20 x 15 polygon at (5, 5) and a "small" 4 x 4 one inside it."""
    _image(root / "images" / "a.png")
    big, small = [(5, 5), (25, 5), (25, 20), (5, 20)], [(10, 10), (14, 10), (14, 14), (10, 14)]
    if fmt == "via":
        _via(root / "via.json", {"a.png": [_poly([x for x, _ in p], [y for _, y in p], type=name)
                                           for name, p in (("small", small), ("big", big))]})
    elif fmt == "labelme":
        _labelme(root / "a.json", "images/a.png", [_shape("small", [list(q) for q in small]),
                                                   _shape("big", [list(q) for q in big])])
    else:
        points = [";".join(f"{x},{y}" for x, y in p) for p in (small, big)]
        (root / "annotations.xml").write_text(
            f'<annotations><version>1.1</version><image id="0" name="a.png" width="40" height="30">'
            f'<polygon label="small" points="{points[0]}"/><polygon label="big" points="{points[1]}"/></image></annotations>')
    return root


@pytest.mark.parametrize("fmt", ["via", "labelme", "cvat"])
def test_semantic_segmentation_paints_the_polygons(fmt: str, tmp_path: Path) -> None:
    root = _tool_data(fmt, tmp_path / "d")
    ds = read_segmentation(root)
    assert (ds.format, ds.kind) == (fmt, fmt) and ds.classes == ["background", "big", "small"] and ds.values == [0, 1, 2]
    expected = np.zeros((30, 40), dtype=np.uint8)
    expected[5:20, 5:25] = 1
    expected[10:14, 10:14] = 2  # the small one on top, though the file lists it first
    np.testing.assert_array_equal(ds.read_mask(ds.samples[0]), expected)
    assert ds.samples[0].counts.tolist() == [1200 - 300, 300 - 16, 16]
    assert "objects painted largest first" in ds.read_as
    again = read_segmentation(root, class_map=json.loads(json.dumps(ds.class_map())))  # as evaluate reads a run's data
    np.testing.assert_array_equal(again.read_mask(again.samples[0]), expected)
    with pytest.raises(DataError, match=r"classes small not in the class map"):
        read_segmentation(root, class_map={**ds.class_map(), "classes": ["background", "big"], "values": [0, 1],
                                           "colors": [[0, 0, 0], [1, 2, 3]]})
    with pytest.raises(DataError, match="names the classes: classes= and colors= are for mask files"):
        read_segmentation(root, classes=["a", "b"])


def test_data_check_says_how_it_read_the_tools_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tool_data("cvat", tmp_path / "d")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"cvat labels in {root}: 1 images, 2 objects in 2 classes (with masks)" in out
    assert "read as: CVAT for images XML, 1 file (annotations.xml)" in out
    assert main(["data", "check", str(root), "--task", "segment"]) == 0
    out = capsys.readouterr().out
    assert f"cvat objects painted into class masks in {root}: 1 images" in out
    assert "read as: CVAT for images XML, 1 file (annotations.xml); objects painted largest first" in out
    via = _tool_data("via", tmp_path / "v")
    assert main(["data", "check", str(via), "--label-attribute", "type"]) == 0
    assert "the class is the region attribute 'type'" in capsys.readouterr().out


# --- end to end --------------------------------------------------------------------------------------------------------


def _draw_via(root: Path, counts: dict[str, int], size: int = 64) -> Path:
    """Images of a red square (labelled as a polygon) and a blue one (as a rectangle) in split folders, one VIA
    export each, whose regions carry two attributes: `shape` names the class, `note` is free text."""
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        images = {}
        for i in range(n):
            array = np.full((size, size, 3), 128, np.uint8)
            regions = []
            for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
                side = int(rng.integers(14, 24))
                x, y = (int(v) for v in rng.integers(0, size - side, 2))
                array[y:y + side, x:x + side] = colour
                if name == "red":
                    regions.append(_poly([x, x + side, x + side, x], [y, y, y + side, y + side], shape=name, note="hi"))
                else:
                    regions.append(_rect(x, y, side, side, shape=name, note="there"))
            _image(root / split / f"{split}{i}.png", array=array)
            images[f"{split}{i}.png"] = regions
        _via(root / split / "via_region_data.json", images)
    return root


def test_cli_trains_and_evaluates_on_via_files(tmp_path: Path) -> None:
    """Instance segmentation and semantic segmentation trained through the CLI on a VIA export, then evaluated
    (which reads the data again with the run's label attribute)."""
    data = _draw_via(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "runs"
    common = ["--epochs", "1", "--batch-size", "2", "--workers", "0", "--output", str(out), "--label-attribute", "shape"]
    assert main(["train", str(data), "--task", "segment-instances", "--image-size", "64", "--name", "inst", *common]) == 0
    config = json.loads((out / "inst" / "config.json").read_text())
    assert config["label_format"] == "via" and config["label_attribute"] == "shape" and config["classes"] == ["blue", "red"]
    assert json.loads((out / "inst" / "evaluation.json").read_text())["mask"] is not None
    assert main(["train", str(data), "--task", "segment", "--image-size", "32", "--name", "sem", *common]) == 0
    config = json.loads((out / "sem" / "config.json").read_text())
    assert config["class_map"]["kind"] == "via" and config["classes"] == ["background", "blue", "red"]
    assert main(["evaluate", str(out / "sem")]) == 0
