"""Reading labelled text as people keep it: a CSV, TSV or JSONL table with text and label columns, or class folders of
.txt files. Every row keeps where it came from ("file:line"), so a problem is named where it is.

Columns are found by name (text, sentence, message, review, ... and label, class, category, ...) or chosen; several
text columns are joined with a newline (a headline and a body). An optional `split` column says train, val or test.
A row whose text is empty is skipped and listed; bytes that are not in the encoding are an error naming the line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from deepfit.data.catalog import SPLIT_ALIASES, Catalog, LabeledText, make_catalog, natural_key
from deepfit.errors import DataError
from deepfit.log import logger

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
TEXT_COLUMNS = ("text", "texts", "sentence", "message", "sms", "review", "content", "body", "document", "comment", "tweet")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "sentiment", "y")


def decode(raw: bytes, path: Path, encoding: str) -> str:
    """The file's text; bytes that are not `encoding` are an error naming the line they are on."""
    try:
        return raw.decode(encoding).removeprefix("\ufeff")  # a byte-order mark, as Excel writes
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes that are not {encoding} ({raw[e.start:e.start + 4]!r}); save the file as "
                        f"{encoding} or pass --encoding (e.g. latin-1, cp1252)") from e
    except LookupError as e:
        raise DataError(f"--encoding {encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252)") from e


def _pick(header: list[str], wanted: list[str] | None, usual: tuple[str, ...], what: str, path: Path) -> list[int]:
    lowered = [h.strip().lower() for h in header]
    if wanted:
        missing = [w for w in wanted if w.strip().lower() not in lowered]
        if missing:
            raise DataError(f"{path} has no column {missing[0]!r} for the {what}; its columns are {', '.join(header)}")
        return [lowered.index(w.strip().lower()) for w in wanted]
    for name in usual:
        if name in lowered:
            return [lowered.index(name)]
    flag = "--text-column" if what == "texts" else "--label-column"
    raise DataError(f"{path}: no column for the {what} found by name ({', '.join(usual[:6])}, ...); its columns are "
                    f"{', '.join(header)}: name one with {flag}")


def _rows(path: Path, encoding: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, cells)]) of a CSV/TSV, or of a JSONL file (keys of its first object as the header)."""
    text = decode(path.read_bytes(), path, encoding)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        header: list[str] = []
        rows = []
        for line, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line}: not a JSON object ({e.msg}); each line of a .jsonl file is one object") from e
            if not isinstance(item, dict):
                raise DataError(f"{path}:{line}: a JSON {type(item).__name__}, not an object with text and label keys")
            for key in item:
                if key not in header:
                    header.append(key)
            rows.append((line, item))
        return header, [(line, ["" if item.get(k) is None else str(item.get(k)) for k in header]) for line, item in rows]
    if not text.strip():
        raise DataError(f"{path} is empty: expected a header like 'text,label' and a row per text")
    tsv = path.suffix.lower() == ".tsv" or text.split("\n", 1)[0].count("\t") > text.split("\n", 1)[0].count(",")
    # a TSV has no quoting (a field holds no tab or newline): a text that starts with a quote mark is text, not a quoted
    # field that runs on over the next lines (SMS spam has two such messages, which quoting merged into others)
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(io.StringIO(text))
    header = next(reader)
    rows = []
    while True:
        line = reader.line_num + 1  # the line this row starts on (a quoted text may span several)
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{path}:{line}: {e}; check the quoting of that row") from e
        if any(c.strip() for c in cells):
            rows.append((line, cells))
    return header, rows


def _cells(cells: list[str]):  # noqa: ANN202 - a small accessor
    """cells -> (column index or None -> its stripped value, "" when absent)."""
    return lambda i: cells[i].strip() if i is not None and i < len(cells) else ""


def _joined(cells: list[str], columns: list[int]) -> str:
    """The text of a row: its text columns' non-empty cells, one a line."""
    return "\n".join(cells[i] for i in columns if i < len(cells) and cells[i].strip()).strip()


def read_table_texts(path: Path, text_columns: list[str] | None = None, encoding: str = "utf-8") -> list[tuple[str, str]]:
    """(where, text) of every row of a CSV/TSV/JSONL table that has a text, for prediction: no label is needed;
    `where` is "file:line". Empty texts are skipped and listed, as in training data."""
    header, rows = _rows(path, encoding)
    columns = _pick(header, text_columns, TEXT_COLUMNS, "texts", path)
    found, empty = [], []
    for line, cells in rows:
        text = _joined(cells, columns)
        if text:
            found.append((f"{path}:{line}", text))
        else:
            empty.append(Path(f"{path}:{line}"))
    warn_empty(empty)
    return found


def read_text_table(path: Path, text_columns: list[str] | None = None, label_column: str | None = None,
                    encoding: str = "utf-8") -> Catalog:
    """The labelled texts of one CSV/TSV/JSONL file."""
    header, rows = _rows(path, encoding)
    texts = _pick(header, text_columns, TEXT_COLUMNS, "texts", path)
    label = _pick(header, [label_column] if label_column else None, LABEL_COLUMNS, "labels", path)[0]
    if label in texts:
        raise DataError(f"{path}: the text and the label are the same column ({header[label]!r}): name two columns")
    lowered = [h.strip().lower() for h in header]
    split_i = lowered.index("split") if "split" in lowered and lowered.index("split") not in (*texts, label) else None
    group_i = lowered.index("group") if "group" in lowered and lowered.index("group") not in (*texts, label) else None
    items, empty = [], []
    for line, cells in rows:
        cell = _cells(cells)
        text = _joined(cells, texts)
        where = Path(f"{path}:{line}")
        if not cell(label):
            raise DataError(f"{path}:{line}: the row has no label (column {header[label]!r}); fill it in or remove the row")
        if not text:
            empty.append(where)
            continue
        split = cell(split_i)
        if split and split.lower() not in SPLIT_ALIASES:
            raise DataError(f"{path}:{line}: split {split!r} is not train, val or test")
        items.append(LabeledText(where, cell(label), SPLIT_ALIASES.get(split.lower()) if split else None,
                                 cell(group_i) or None, text=text))
    warn_empty(empty)
    if not items:
        raise DataError(f"{path}: no row has both a text and a label")
    return make_catalog(items, path.parent, "table", path)


def read_text_folders(root: Path, encoding: str = "utf-8") -> Catalog:
    """Class folders of .txt files (DATA/<class>/*.txt, or DATA/{train,val,test}/<class>/*.txt): one text per file."""
    items, empty = [], []
    for path in sorted(root.rglob("*.txt"), key=lambda p: natural_key(p.as_posix())):
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            continue
        split = SPLIT_ALIASES.get(parts[0].lower()) if len(parts) >= 3 else None
        label = parts[1] if split else parts[0]
        text = decode(path.read_bytes(), path, encoding).strip()
        if not text:
            empty.append(path)
            continue
        items.append(LabeledText(path.resolve(), label, split, text=text))
    warn_empty(empty)
    if not items:
        raise DataError(f"no .txt files in class folders found in {root}: expected {root}/<class>/*.txt, or a CSV/TSV/JSONL "
                        "file with text and label columns")
    return make_catalog(items, root, "class-folders", root)


def read_texts(source: str | Path, text_columns: list[str] | None = None, label_column: str | None = None,
               encoding: str | None = None) -> Catalog:
    """A table file or a folder of class folders of .txt files, in `encoding` (default: UTF-8)."""
    encoding = encoding or "utf-8"
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(f"text data not found: {path} — check the path")
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise DataError(f"{path}: text data is a .csv, .tsv or .jsonl file, or a folder of class folders of .txt files")
        catalog = read_text_table(path, text_columns, label_column, encoding)
    else:
        catalog = read_text_folders(path, encoding)
    logger.info(f"found {len(catalog.files)} texts in {len(catalog.classes)} classes in {path}")
    return catalog


def warn_empty(where: list[Path]) -> None:
    if where:
        shown = ", ".join(str(p) for p in where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
        logger.warning(f"skipped {len(where)} empty texts: {shown}")


def is_text_data(source: str | Path) -> bool:
    """Whether DATA looks like text: a .jsonl file, a CSV/TSV whose header names a text column, or .txt class folders."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            return True
        if path.suffix.lower() not in (".csv", ".tsv"):
            return False
        try:
            first = path.open(encoding="utf-8-sig", errors="replace").readline()
        except OSError:
            return False
        names = {c.strip().strip('"').lower() for c in first.replace("\t", ",").split(",")}
        return bool(names & set(TEXT_COLUMNS))
    if path.is_dir():
        for file in path.rglob("*"):
            if file.is_file() and not file.name.startswith("."):
                return file.suffix.lower() == ".txt"
    return False
