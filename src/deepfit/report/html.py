"""The self-contained HTML page every deepfit report is: styles, escaping, tables, cards, figures, notes.

A report is one file: styles are inline and every picture is embedded as a ``data:`` URI, so it can be
mailed, attached to a ticket or opened offline and still look complete. The page is assembled from
sections, each an HTML string built by the functions here or by a task's own report module; a task adds
its own styles with a ``<style>`` block passed to :func:`write_page`.

All user-provided text (class names, file paths, titles) goes through :func:`esc`, since it comes from
arbitrary folders and files. Functions taking ``*_html`` arguments expect HTML already escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deepfit.fileio import atomic_write_bytes
from deepfit.log import logger
from deepfit.report.text import clamp, fixed, to_float

__all__ = [
    "IMAGE_MIME",
    "PAGE_CSS",
    "WEAKEST_BADGE",
    "data_table",
    "data_uri",
    "embedded_figures",
    "empty_note",
    "esc",
    "metric_cards",
    "notes_list",
    "score_bar",
    "score_cells",
    "summary_table",
    "table_row",
    "write_page",
]

# The page's styles; a task's report adds its own rules after these in a <style> block of its own.
PAGE_CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --accent:#2563eb; --bad:#b42318;
        --bad-bg:#fef3f2; --warn-bg:#fffaeb; --warn-line:#f79009; --card:#f8fafc; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 26px; margin: 0 0 14px; }
h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
table { border-collapse: collapse; }
.summary td { padding: 2px 18px 2px 0; vertical-align: top; }
.summary td:first-child { color: var(--muted); white-space: nowrap; }
.notes { list-style: none; padding: 0; margin: 18px 0 0; }
.notes li { background: var(--warn-bg); border-left: 4px solid var(--warn-line); padding: 8px 12px;
            margin-bottom: 8px; border-radius: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; margin-top: 22px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 20px;
        min-width: 190px; }
.card .label { color: var(--muted); font-size: 13px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 34px; font-weight: 650; line-height: 1.2; }
.card .hint { color: var(--muted); font-size: 13px; }
.per-class { width: 100%; font-variant-numeric: tabular-nums; }
.per-class th, .per-class td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right; }
.per-class th:first-child, .per-class td:first-child { text-align: left; }
.per-class th { font-size: 13px; color: var(--muted); font-weight: 600; }
.per-class tr.weak td { background: var(--bad-bg); }
.per-class tr.weak td:first-child { border-left: 4px solid var(--bad); }
.badge { display: inline-block; margin-left: 8px; padding: 0 7px; border-radius: 9px; font-size: 12px;
         background: var(--bad); color: #fff; }
.bar { display: inline-block; width: 70px; height: 7px; background: var(--line); border-radius: 4px;
       margin-left: 8px; vertical-align: middle; overflow: hidden; }
.bar span { display: block; height: 100%; background: var(--accent); }
figure { margin: 0 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 14px; margin-top: 6px; }
.missing { padding: 24px; background: var(--card); border: 1px dashed var(--line); color: var(--muted); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 14px; }
.shot { border: 1px solid var(--line); border-radius: 8px; padding: 10px; background: var(--card); }
.shot .thumb { height: 164px; display: flex; align-items: center; justify-content: center; }
.shot img { max-width: 160px; max-height: 160px; border-radius: 4px; }
.placeholder { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center;
               background: repeating-linear-gradient(45deg, #eef1f4, #eef1f4 8px, #f8fafc 8px, #f8fafc 16px);
               color: var(--muted); font-size: 13px; border-radius: 4px; text-align: center; }
.shot .path { font: 12px/1.35 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all;
              color: var(--muted); margin: 8px 0 4px; }
.shot .row { font-size: 13.5px; }
.shot .wrong { color: var(--bad); font-weight: 600; }
.empty { color: var(--muted); }
.card .ci { font-size: 13px; margin-top: 2px; font-variant-numeric: tabular-nums; }
.legend, .per-class td.none { color: var(--muted); }
.large .shot img { display: block; max-width: 100%; max-height: none; height: auto; }
.examples { display: flex; align-items: center; gap: 12px; margin-bottom: 10px; }
.examples .name { flex: 0 0 150px; font-weight: 600; word-break: break-word; }
.examples .pictures { display: flex; flex-wrap: wrap; gap: 8px; }
.examples img { max-width: 128px; max-height: 128px; border: 1px solid var(--line); border-radius: 4px; }
.examples .placeholder { width: 128px; height: 128px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

# Marks the weakest class in a per-class table: the first place to look for what to improve.
WEAKEST_BADGE = '<span class="badge">weakest</span>'

# The summary table lists at most this many class names; a 1000-class list would push everything else down.
_MAX_SUMMARY_CLASSES = 40


# control characters (but tab and line breaks) are not allowed in HTML: each is shown as its Unicode picture (BEL -> ␇)
_CONTROL = {c: chr(0x2400 + c) for c in range(32) if chr(c) not in "\t\n\r"} | {0x7F: "\u2421"}


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and attribute values; control characters made visible."""
    return html.escape(str(value), quote=True).translate(_CONTROL)


def data_uri(data: bytes, mime: str) -> str:
    """``data:`` URI of ``data``: pictures live inside the page instead of beside it."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def summary_table(summary: Mapping[str, Any], class_names: Sequence[str]) -> str:
    """Key/value table of what was evaluated, ending with the class names; empty when there is nothing."""
    rows = [f"<tr><td>{esc(key)}</td><td>{esc(value)}</td></tr>" for key, value in summary.items()]
    if class_names:
        shown = ", ".join(str(name) for name in class_names[:_MAX_SUMMARY_CLASSES])
        extra = len(class_names) - _MAX_SUMMARY_CLASSES
        more = f" … and {extra} more" if extra > 0 else ""
        rows.append(f"<tr><td>classes ({len(class_names)})</td><td>{esc(shown + more)}</td></tr>")
    return f'<table class="summary">{"".join(rows)}</table>' if rows else ""


def notes_list(notes: Sequence[str]) -> str:
    """Warnings the reader must see before the numbers (e.g. "measured on the validation set")."""
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{esc(note)}</li>" for note in notes) + "</ul>"


def metric_cards(cards: Iterable[tuple[str, str, str]]) -> str:
    """The headline numbers as big cards: (label text, value HTML, hint HTML) each."""
    parts = [
        f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{value_html}</div>'
        f'<div class="hint">{hint_html}</div></div>'
        for label, value_html, hint_html in cards
    ]
    return f'<div class="cards">{"".join(parts)}</div>'


def score_bar(fraction: Any) -> str:
    """A small horizontal bar showing a score in [0, 1], so weak rows of a long table stand out by eye.

    A missing or unparseable score draws an empty bar.
    """
    value = to_float(fraction)
    width = 0.0 if math.isnan(value) else clamp(100.0 * value, 0.0, 100.0)
    return f'<span class="bar"><span style="width:{width:.0f}%"></span></span>'


def table_row(cells_html: str, *, weak: bool = False) -> str:
    """One ``<tr>`` of ``<td>`` cells; ``weak`` tints it as the weakest class (see :data:`WEAKEST_BADGE`)."""
    attribute = ' class="weak"' if weak else ""
    return f"<tr{attribute}>{cells_html}</tr>"


def data_table(columns: Sequence[str], rows_html: Iterable[str], *, empty_html: str | None = None) -> str:
    """A results table: ``columns`` as header text, then rows made with :func:`table_row`.

    Numbers are right-aligned in tabular figures and the first column (the name) left-aligned. With no
    rows and an ``empty_html``, that note stands in for the table.
    """
    rows = list(rows_html)
    if not rows and empty_html is not None:
        return empty_note(empty_html)
    head = "".join(f"<th>{esc(column)}</th>" for column in columns)
    return f'<table class="per-class"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def score_cells(row: Mapping[str, Any], keys: Sequence[str], *, missing_html: str) -> str:
    """The ``<td>`` cells of one class's scores: ``row[key]`` for each of ``keys``, a bar after the first.

    When the first score is missing (``None``: the class was not measured, which is not a score of
    zero) one muted cell spanning all of them says why, in ``missing_html``.
    """
    if row.get(keys[0]) is None:
        return f'<td class="none" colspan="{len(keys)}">{missing_html}</td>'
    bar = score_bar(row[keys[0]])
    return "".join(f"<td>{fixed(row.get(key))}{bar if i == 0 else ''}</td>" for i, key in enumerate(keys))


def empty_note(text_html: str) -> str:
    """A quiet paragraph: an explanation, or what stands in for a section with nothing to show."""
    return f'<p class="empty">{text_html}</p>'


def embedded_figures(images: Mapping[str, Path]) -> str:
    """Each picture file embedded as a figure with its caption (the mapping's key), in the mapping's order.

    A picture that cannot be read becomes a "not available" box with a warning, rather than costing the
    whole report.
    """
    parts = []
    for caption, image_path in images.items():
        image_path = Path(image_path)
        try:
            data = image_path.read_bytes()
        except OSError as error:
            logger.warning("report: picture %r not embedded, cannot read %s (%s)", caption, image_path, error)
            parts.append(
                f'<figure><div class="missing">picture not available</div><figcaption>{esc(caption)}</figcaption></figure>'
            )
            continue
        mime = IMAGE_MIME.get(image_path.suffix.lower(), "image/png")
        parts.append(
            f'<figure><img src="{data_uri(data, mime)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    return "".join(parts)


def write_page(path: Path, title: str, sections: Sequence[str], *, styles: str = "", what: str = "report") -> Path:
    """Write one self-contained page, atomically, and return its path.

    The page is ``styles`` (a task's extra ``<style>`` block), the title as a heading, the ``sections`` in
    order and a footer. ``what`` names the page in the log line ("detection report written to ...").
    """
    body = [styles, f"<h1>{esc(title)}</h1>", *sections, "<footer>Generated by deepfit.</footer>"]
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{PAGE_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
    saved = atomic_write_bytes(Path(path), document.encode())
    logger.info("%s written to %s", what, saved)
    return saved

