"""Which values of semantic masks are which classes: saved class maps, colour files, and what the masks say.

Encodings (the data set's ``kind``, decided over all masks by `decide_classes`):

* ``palette``: "P" PNGs; the palette index is the class value and the palette gives the display colours.
* ``index``: single-channel masks (8 or 16 bit); the grey value is the class value. RGB masks whose
  colours are all grey (r = g = b) are read the same way, as tools often save index masks as RGB.
* ``binary``: no class names given and every value within {0, 255} (or within {0, 1}): classes
  background and foreground; 255 is then foreground, not ignored.
* ``rgb``: 3-channel masks (an alpha channel is dropped), or any masks when colours are given. Colours map
  to classes through a colours dict or file (name -> (r, g, b); an entry named ``ignore`` is the ignored
  colour) or, without one, every distinct colour is a class named ``#rrggbb`` (sorted by r, g, b; the map
  is logged so that it can be saved as a colours file and named).
* ``coco``, ``via``, ``labelme``, ``cvat``: painted from those formats' objects (`PAINTED_KINDS`).

Masks are read as uint8 class indexes with IGNORE_INDEX (255) for ignored pixels, so at most 255 classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.data.formats.masks import (
    IGNORE_INDEX,
    ClassValue,
    MaskScan,
    ValueMap,
    to_value_space,
    unpack_color,
)
from deepfit.errors import DataError
from deepfit.log import logger

PAINTED_KINDS = ("coco", "via", "labelme", "cvat")  # masks painted from object labels: the kind is their format
KINDS = ("index", "binary", "palette", "rgb", *PAINTED_KINDS)
MAX_CLASSES = 255  # indexes 0..254; 255 is IGNORE_INDEX

ColorClasses = tuple[list[str], list[tuple[int, int, int]], tuple[int, int, int] | None]  # names, colours, ignored


def fixed_colors(n: int) -> np.ndarray:
    """n distinct colours, black first: the bits of the index spread over r, g, b from the high bit down."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << bit
            c >>= 3
        out[i] = rgb
    return out


def display_colors(kind: str, values: list[ClassValue], palette: np.ndarray | None) -> np.ndarray:
    """(K, 3) uint8 colours to show the classes in: rgb masks' own colours, else the masks' palette (as their
    authors chose it), else `fixed_colors`."""
    if kind == "rgb":
        return np.asarray(values, dtype=np.uint8).reshape(-1, 3)
    if palette is not None:
        return np.array([palette[v] if 0 <= v < 256 else fixed_colors(i + 1)[i]
                         for i, v in enumerate(values)], dtype=np.uint8).reshape(-1, 3)
    return fixed_colors(len(values))


def check_class_count(n: int, where: str) -> None:
    """A DataError when `where` gives more classes than uint8 class indexes hold."""
    if n > MAX_CLASSES:
        raise DataError(
            f"{where} gives {n} classes, more than {MAX_CLASSES}: masks are read as uint8 class indexes "
            f"with {IGNORE_INDEX} = ignored — merge classes, or set ignore_value / classes= to the ones to learn"
        )


# --- given mappings --------------------------------------------------------------------------------


@dataclass
class ClassMap:
    """A parsed class map (what `SegmentationDataset.class_map()` wrote)."""

    kind: str
    classes: list[str]
    values: list[ClassValue]
    ignore: ClassValue | None
    colors: np.ndarray


def parse_class_map(data: dict) -> ClassMap:
    """The class map in `data`; a DataError when it is not one a data set wrote."""
    def value(v: Any, rgb: bool) -> ClassValue:
        if rgb:
            if not (isinstance(v, (list, tuple)) and len(v) == 3):
                raise ValueError(f"{v!r} is not an [r, g, b] colour")
            return tuple(int(c) for c in v)  # type: ignore[return-value]
        return int(v)

    try:
        kind = str(data["kind"])
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        classes = [str(c) for c in data["classes"]]
        values = [value(v, kind == "rgb") for v in data["values"]]
        ignore = data.get("ignore_value")
        ignore = None if ignore is None else value(ignore, kind == "rgb")
        given = data.get("colors")
        colors = (fixed_colors(len(classes)) if given is None or len(given) == 0
                  else np.asarray(given, dtype=np.uint8).reshape(-1, 3))
        if not (len(classes) == len(values) == len(colors)):
            raise ValueError(f"{len(classes)} classes, {len(values)} values and {len(colors)} colours")
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"class_map is not one that SegmentationDataset.class_map() wrote: {e}") from e
    check_class_count(len(classes), "the class map")
    return ClassMap(kind, classes, values, ignore, colors)


def parse_colors(colors: dict | str | Path, classes: list[str] | None) -> ColorClasses:
    """(class names, their colours, the ignored colour or None) from a dict or a JSON file of one."""
    where = "colors="
    if isinstance(colors, (str, Path)):
        where = str(Path(colors).expanduser())
        try:
            colors = json.loads(Path(where).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read the colors file {where}: {e}") from e
    if not isinstance(colors, dict) or not colors:
        raise DataError(f'{where} must map class names to mask colours: {{"road": [128, 64, 128], ...}}')
    parsed: dict[str, tuple[int, int, int]] = {}
    for name, c in colors.items():
        try:
            if isinstance(c, str) and c.startswith("#") and len(c) == 7:
                rgb = unpack_color(int(c[1:], 16))
            else:
                rgb = tuple(int(v) for v in c)  # type: ignore[assignment]
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"{where}: the colour of {name!r} is {c!r}, not [r, g, b] in 0-255 or #rrggbb") from None
        parsed[str(name)] = rgb  # type: ignore[assignment]
    ignore = next((rgb for name, rgb in parsed.items() if name.lower() == "ignore"), None)
    named = {name: rgb for name, rgb in parsed.items() if name.lower() != "ignore"}
    if classes is not None:
        missing = [c for c in classes if c not in named]
        extra = [n for n in named if n not in classes]
        if missing or extra:
            raise DataError(f"{where} and classes= disagree: no colour for {missing}, no class for {extra}")
        named = {c: named[c] for c in classes}
    seen: dict[tuple[int, int, int], str] = {}
    for name, rgb in [*named.items(), *([("ignore", ignore)] if ignore is not None else [])]:
        if rgb in seen:
            raise DataError(f"{where}: {seen[rgb]!r} and {name!r} have the same colour {list(rgb)}")
        seen[rgb] = name  # type: ignore[index]
    return list(named), list(named.values()), ignore


# --- what the masks say ----------------------------------------------------------------------------


def decide_classes(
    scans: list[MaskScan], names: tuple[list[str], list[int]] | None, named_by: str,
    colors: ColorClasses | None, ignore_value: int | None, saved: ClassMap | None,
) -> tuple[str, list[str], list[ClassValue], ClassValue | None, np.ndarray | None]:
    """(kind, classes, values, ignore value, first palette or None) over all readable masks."""
    palette = next((s.palette for s in scans if s.palette is not None), None)
    if saved is not None:
        return saved.kind, saved.classes, saved.values, saved.ignore, palette
    if colors is not None:
        names_, rgbs, ignore_rgb = colors
        check_class_count(len(names_), "colors=")
        return "rgb", names_, list(rgbs), ignore_rgb, palette
    colourful = sum(s.family == "rgb" for s in scans)
    if colourful > len(scans) - colourful:  # most masks are colour masks: read every mask as colours
        if names is not None:
            raise DataError(f"the masks are RGB colours, and {named_by} names class values: pass colors= "
                            "(class name -> [r, g, b]) to say which colour is which class")
        # every colour of every mask (grey and palette masks too, as colours); 16-bit masks cannot be
        found = np.unique(np.concatenate([
            to_value_space(s.stored, s.values, s.palette, rgb=True)  # type: ignore[arg-type]
            for s in scans if s.family != "index" or s.values.max() < 256]))  # type: ignore[union-attr]
        check_class_count(len(found), "the RGB masks' distinct colours (anti-aliased or JPEG-saved masks?)")
        rgbs = [unpack_color(int(p)) for p in found]
        classes = ["#{:02x}{:02x}{:02x}".format(*c) for c in rgbs]
        logger.info("inferred %d classes from the masks' colours; to name them, save this as a JSON file, "
                    "rename the classes and pass it as --colors FILE (colors= in Python):", len(rgbs))
        for i, (name, c) in enumerate(zip(classes, rgbs, strict=True)):
            logger.info('%s"%s": [%d, %d, %d]%s', "{" if i == 0 else " ", name, *c,
                        "}" if i == len(rgbs) - 1 else ",")
        return "rgb", classes, list(rgbs), None, palette

    single = [s for s in scans if s.family != "rgb"]
    kind = "palette" if single and all(s.family == "palette" for s in single) else "index"
    present = (np.unique(np.concatenate([to_value_space(s.stored, s.values, s.palette, rgb=False)  # type: ignore[arg-type]
                                         for s in single])) if single else np.zeros(0, dtype=np.int64))
    present_set = {int(v) for v in present}
    if names is None and present_set and (present_set <= {0, 255} or present_set <= {0, 1}):
        top = 1 if 1 in present_set else 255  # all-zero masks read as the common 0 / 255 convention
        return "binary", ["background", "foreground"], [0, top], None, palette
    if names is not None:
        class_names, class_values = names
        where = named_by
    else:
        class_values = sorted(v for v in present_set if v != ignore_value)
        class_names = [str(v) for v in class_values]
        where = "the mask values found"
    kept = [(n, v) for n, v in zip(class_names, class_values, strict=True) if v != ignore_value]
    check_class_count(len(kept), where)
    return kind, [n for n, _ in kept], [v for _, v in kept], ignore_value, palette


def count_classes(scan: MaskScan, kind: str, vmap: ValueMap, k: int, explicit: bool
                  ) -> tuple[np.ndarray | None, str | None]:
    """(pixels of each of the `k` classes, None), or (None, why the mask's values do not fit the class map)."""
    rgb = kind == "rgb"
    family = scan.stored
    if rgb and family == "index" and scan.values.max() > 255:  # type: ignore[union-attr]
        return None, "16-bit grey values in a dataset of RGB colour masks"
    if not rgb and scan.family == "rgb":
        return None, "RGB colours in a dataset of single-channel masks (save it as 8-bit grey or palette)"
    values = to_value_space(family, scan.values, scan.palette, rgb)  # type: ignore[arg-type]
    index = vmap.lookup(values)
    unknown = index < 0
    if unknown.any() and explicit:
        shown = values[unknown][:10]
        text = ", ".join("#{:02x}{:02x}{:02x}".format(*unpack_color(int(v))) if rgb else str(int(v)) for v in shown)
        more = f" and {int(unknown.sum()) - len(shown)} more" if unknown.sum() > len(shown) else ""
        return None, f"{text}{more} not in the class map ({k} classes)"
    counts = np.zeros(k, dtype=np.int64)
    use = (index >= 0) & (index != IGNORE_INDEX)
    np.add.at(counts, index[use], scan.counts[use])  # type: ignore[index]
    return counts, None
