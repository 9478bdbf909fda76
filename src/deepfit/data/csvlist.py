"""CSV and TSV lists of labelled files: path and label columns found by name or chosen, optional split, group and fold
columns."""

from __future__ import annotations

import csv
from pathlib import Path

from deepfit.data.catalog import SPLIT_ALIASES, Catalog, LabeledFile, make_catalog
from deepfit.data.media import IMAGES, Media
from deepfit.errors import DataError
from deepfit.log import logger

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_PATH_COLUMNS = ("path", "file", "filename", "image", "filepath")
_LABEL_COLUMNS = ("label", "class", "category", "target")



def _delimiter(csv_path: Path, header_line: str) -> str:
    """Tab or comma: .tsv is tab, otherwise whichever the header uses more."""
    if csv_path.suffix.lower() == ".tsv":
        return "\t"
    return "\t" if header_line.count("\t") > header_line.count(",") else ","


def _pick_column(
    header: list[str], wanted: str | None, defaults: tuple[str, ...], fallback: int, what: str, csv_path: Path
) -> int:
    """Index of the requested column, else the first default name present, else position `fallback`."""
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        if wanted.strip().lower() in lowered:
            return lowered.index(wanted.strip().lower())
        raise DataError(
            f"{what} column {wanted!r} not found in {csv_path}; columns are: {', '.join(header)} — "
            f"pass one of those as the {what} column"
        )
    for name in defaults:
        if name in lowered:
            return lowered.index(name)
    if fallback >= len(header):
        raise DataError(
            f"{csv_path} needs a {what} column but has only {len(header)} column(s) ({', '.join(header)}): "
            "add a header like 'path,label'"
        )
    return fallback


def read_csv_list(csv_path: Path, path_column: str | None, label_column: str | None, media: Media = IMAGES) -> Catalog:
    """The labelled files a CSV or TSV list names (paths relative to it), with their splits when it has a split column."""
    base = csv_path.parent
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # -sig: Excel writes a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {csv_path} ({exc}): save it as UTF-8 text") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{csv_path} is empty or starts with a blank line: expected a header like 'path,label'")
    reader = csv.reader(lines, delimiter=_delimiter(csv_path, lines[0]))
    header = [h.strip() for h in next(reader)]
    lowered = [h.lower() for h in header]
    known = set(_PATH_COLUMNS) | set(_LABEL_COLUMNS) | {"split", "group", "fold"}
    if path_column is None and label_column is None and not known & set(lowered):
        first = (base / header[0]).expanduser() if header[0] else None
        if media.holds(header[0]) or (first is not None and first.is_file()):
            raise DataError(f"{csv_path} has no header row: add a first line like 'path,label'")
    path_i = _pick_column(header, path_column, _PATH_COLUMNS, 0, "path", csv_path)
    label_i = _pick_column(header, label_column, _LABEL_COLUMNS, 1, "label", csv_path)
    if path_i == label_i:
        raise DataError(f"{csv_path}: path and label are the same column ({header[path_i]!r}): name two columns")
    for what, i, wanted, usual in (("paths", path_i, path_column, "path"), ("labels", label_i, label_column, "label")):
        if wanted is None and lowered[i] != usual:  # found by guessing: say which one, so a wrong guess shows
            logger.info("%s: taking column %r for the %s (name another with the %s column option)", csv_path.name, header[i], what, usual)
    split_i = lowered.index("split") if "split" in lowered else None
    if split_i in (path_i, label_i):
        split_i = None
    # a speaker, a patient, a source recording: its files stay in one split (see split.grouped_split)
    extra = {c: lowered.index(c) for c in ("group", "fold") if c in lowered and lowered.index(c) not in (path_i, label_i)}
    groups: dict[str, dict[Path, str]] = {c: {} for c in extra}  # column -> path -> value

    rows: list[tuple[int, Path, str, str | None]] = []
    missing: list[tuple[int, Path]] = []
    first_line: dict[Path, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        raw_path, label = _cell(row, path_i), _cell(row, label_i)
        if not raw_path:
            raise DataError(f"{csv_path} line {line}: empty path in column {header[path_i]!r}: fill it or delete the row")
        if not label:
            raise DataError(f"{csv_path} line {line}: empty label in column {header[label_i]!r}: fill it or delete the row")
        split = None
        if split_i is not None:
            value = _cell(row, split_i).lower()
            split = SPLIT_ALIASES.get(value)
            if split is None and value:
                raise DataError(
                    f"{csv_path} line {line}: unknown split {_cell(row, split_i)!r}: use train, val or test"
                )
        path = (base / Path(raw_path).expanduser()).resolve()  # absolute paths survive the join
        if not path.is_file():
            missing.append((line, path))
            continue
        if path in first_line:
            raise DataError(
                f"{csv_path} line {line}: {raw_path} is already listed on line {first_line[path]}: "
                "list each file once"
            )
        first_line[path] = line
        rows.append((line, path, label, split))
        for column, i in extra.items():
            if _cell(row, i):
                groups[column][path] = _cell(row, i)
    if missing:
        line, path = missing[0]
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise DataError(
            f"{csv_path} line {line}: file not found: {path}{more} — fix the path "
            f"(relative paths are read from {base})"
        )

    if split_i is not None:
        given = [r for r in rows if r[3] is not None]
        if not given:
            logger.warning("%s has a split column with no values: ignoring it", csv_path)
            rows = [(line, p, label, None) for line, p, label, _ in rows]
        elif len(given) < len(rows):
            line = next(r[0] for r in rows if r[3] is None)
            raise DataError(f"{csv_path} line {line}: empty split: give every row train, val or test, or none")
        else:
            _check_csv_splits(csv_path, rows)
    files = [LabeledFile(p, label, split, groups.get("group", {}).get(p), groups.get("fold", {}).get(p)) for _, p, label, split in rows]
    return make_catalog(files, base, "csv", csv_path)


def _cell(row: list[str], index: int) -> str:
    """A stripped cell; short rows read as empty so the error names the empty value, not an IndexError."""
    return row[index].strip() if index < len(row) else ""


def _check_csv_splits(csv_path: Path, rows: list[tuple[int, Path, str, str | None]]) -> None:
    """The same rule as split folders: every class must have training images."""
    train_classes = {label for _, _, label, split in rows if split == "train"}
    if not train_classes:
        raise DataError(f"{csv_path} has a split column but no train rows: mark some rows as train")
    for line, _, label, split in rows:
        if label not in train_classes:
            raise DataError(
                f"{csv_path} line {line}: class {label!r} appears in {split} but has no train rows: "
                "add training images for it or remove it"
            )
