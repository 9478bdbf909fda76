"""The audit's page (audit.html: each finding with its pictures, audio players or texts) and CSVs (every finding)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfit.report.gallery import gallery, shot_card, thumbnail_data_uri
from deepfit.report.html import (
    data_table,
    data_uri,
    empty_note,
    esc,
    metric_cards,
    notes_list,
    table_row,
    write_page,
)
from deepfit.tasks.balance import IMBALANCED

if TYPE_CHECKING:
    from deepfit.workflows.audit import Audit, Item

SHOWN = 40  # cards a section shows; the CSVs hold everything
TEXT_SHOWN = 280  # characters of a text on its card
AUDIO_EMBEDDED = 2_000_000  # bytes: longer recordings get their path only
_AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}
STYLES = ("<style>.gallery.pairs{grid-template-columns:repeat(auto-fill,minmax(400px,1fr))}.pair{display:flex;gap:8px}"
          ".pair .shot{flex:1;min-width:0}.text{font-size:13px;white-space:pre-wrap;word-break:break-word}"
          "audio{width:100%}</style>")


def media(item: Item, modality: str) -> str:
    """The HTML that shows an item: a thumbnail, an audio player, or the start of its text."""
    if item.text is not None or modality == "text":
        text = item.text or ""
        return f'<div class="text">{esc(text[:TEXT_SHOWN])}{"…" if len(text) > TEXT_SHOWN else ""}</div>'
    if modality == "sound":
        try:
            size = item.path.stat().st_size
            if size <= AUDIO_EMBEDDED:
                mime = _AUDIO_MIME.get(item.path.suffix.lower(), "audio/wav")
                return f'<audio controls preload="none" src="{data_uri(item.path.read_bytes(), mime)}"></audio>'
        except OSError:
            pass
        return '<div class="placeholder">no player</div>'
    uri = thumbnail_data_uri(str(item.path))
    return f'<div class="thumb"><img src="{uri}" alt=""></div>' if uri else '<div class="placeholder">unreadable</div>'


def _card(found: Audit, index: int, rows: Iterable[str]) -> str:
    item = found.items[index]
    return shot_card(media(item, found.modality), item.path.name, "".join(f'<div class="row">{r}</div>' for r in rows))


def write_audit(found: Audit, folder: Path) -> Path:
    """audit.html and the CSVs in `folder`."""
    _write_csvs(found, folder)
    sections = [STYLES, _cards(found), notes_list(found.read_warnings[:50]), _classes(found), _duplicates(found),
                _labels(found), _judged(found), _outliers(found), _objects(found)]
    return write_page(folder / "audit.html", f"deepfit data audit: {found.task}, {len(found.items)} {found.modality} items",
                      sections, what="audit page")


def _cards(found: Audit) -> str:
    ratio = found.imbalance()
    cards = [("Items", f"{len(found.items):,}", ", ".join(f"{s} {sum(i.split == s for i in found.items)}" for s in ("train", "val", "test"))),
             ("Duplicates across splits", str(len(found.cross_split())), f"of {len(found.pairs)} duplicate pairs")]
    if found.issues is not None:
        cards.append(("Likely label errors", str(len(found.issues.ranked)), f"confident learning, {found.issues.folds}-fold"))
    if found.findings:
        cards.append(("Object findings", str(len(found.findings)), "boxes and masks to look at"))
    cards.append(("Imbalance", f"{ratio:.1f}:1", "largest class / smallest" + (" — imbalanced" if ratio >= IMBALANCED else "")))
    explained = f"Embeddings: {esc(found.features)}." if found.features else ""
    return metric_cards(cards) + (f"<p>{explained}</p>" if explained else "")


def _classes(found: Audit) -> str:
    tiny = set(found.tiny_classes())
    rows = []
    for k, name in enumerate(found.classes):
        cells = [f"<td>{esc(name)}{' <b>tiny</b>' if name in tiny else ''}</td>"]
        cells += [f"<td>{int(found.counts[s][k]):,}</td>" for s in ("train", "val", "test")]
        cells.append(f"<td>{int(sum(found.holding[s][k] for s in found.holding)):,}</td>")
        rows.append(table_row("".join(cells), weak=name in tiny))
    intro = (f"<p>Per split: the examples of each class (objects for detection, pixels for segmentation) and the items "
             f"holding it. A class held by fewer than {10} training items is too small to learn or to score reliably.</p>")
    return "<h2>Classes</h2>" + intro + data_table(["class", "train", "val", "test", "items holding it"], rows)


def _duplicates(found: Audit) -> str:
    pairs = sorted(found.pairs, key=lambda p: (found.items[p.first].split == found.items[p.second].split, p.first))
    cards = []
    for p in pairs[:SHOWN]:
        a, b = found.items[p.first], found.items[p.second]
        where = f"{a.split} / {b.split}" + (" — <b>across splits</b>" if a.split != b.split else "")
        score = "" if p.kind == "exact" else f", {p.score:.3f}" if "embedding" in p.kind else f", {p.score:.0f} bits apart"
        cards.append(f'<div class="pair">{_card(found, p.first, [where])}{_card(found, p.second, [esc(p.kind) + score])}</div>')
    intro = ("<p>Exact copies (same content), and near copies: perceptual image hashes a few bits apart, or embeddings "
             "almost the same. A copy across splits makes the validation or test score optimistic.</p>")
    return "<h2>Duplicates</h2>" + intro + gallery(cards, empty_html="No duplicates found.", extra_class="pairs")


def _labels(found: Audit) -> str:
    if found.issues is None:
        return ""
    issues, flagged = found.issues, set(found.issues.ranked.tolist())
    cards = [_card(found, int(found.embedded[k]), [f"labelled <b>{esc(found.items[found.embedded[k]].label)}</b>",
                                                  f"looks like <b>{esc(found.classes[issues.suggested[k]])}</b>",
                                                  f"quality {issues.quality[k]:.2f}" + (" — <b>flagged</b>" if k in flagged else "")])
             for k in issues.candidates[:max(SHOWN // 2, len(flagged))][:SHOWN]]
    intro = (f"<p>Examples whose label a model that never saw them contradicts, the lowest label quality (the out-of-fold "
             f"probability of the label) first, with the class the model suggests. The out-of-fold model's balanced "
             f"accuracy is {issues.balanced_accuracy:.0%}. Confident learning (cleanlab) flags {len(flagged)} as likely "
             f"wrong; the next ones are worth a look too (label_issues.csv ranks every example).</p>")
    intro += notes_list([issues.note[0].upper() + issues.note[1:] + "."] if issues.note else [])
    return "<h2>Likely label errors</h2>" + intro + gallery(cards, empty_html="No likely label errors.")


def _judged(found: Audit) -> str:
    if found.judged_quality is None:
        return ""
    order = np.argsort(found.judged_quality, kind="stable")[:SHOWN]
    cards = [_card(found, found.judged[k], [f"{found.items[found.judged[k]].split}",
                                            f"label quality {found.judged_quality[k]:.2f}"
                                            + (" — <b>flagged</b>" if found.judged[k] in found.judged_flagged else "")])
             for k in order]
    intro = (f"<p>The boxes of the {len(found.judged)} images the trained run (--run) never trained on, judged by its "
             f"predictions (cleanlab's object-detection label quality: overlooked objects, wrong classes, misplaced boxes), "
             f"lowest first; {len(found.judged_flagged)} flagged as likely wrong.</p>")
    return "<h2>Likely label errors (boxes)</h2>" + intro + gallery(cards, empty_html="No held-out image to judge.")


def _outliers(found: Audit) -> str:
    shown = found.outlier_items()
    if not shown:
        return ""
    cards = [_card(found, i, [f"{esc(found.items[i].label)}, {found.items[i].split}", f"typicality {score:.3f}"])
             for i, score in shown[:SHOWN]]
    intro = "<p>The most atypical examples: far from everything else in the embeddings (cleanlab's out-of-distribution score).</p>"
    return "<h2>Outliers</h2>" + intro + gallery(cards, empty_html="No outliers.")


def _objects(found: Audit) -> str:
    if found.task == "classify":
        return ""
    rows = [table_row(f"<td>{esc(found.items[f.item].path.name)}</td><td>{esc(found.items[f.item].split)}</td>"
                      f"<td>{'' if f.obj is None else f.obj}</td><td>{esc(f.label)}</td><td>{esc(f.kind)}</td>"
                      f"<td>{esc(f.detail)}</td>") for f in found.findings[:200]]
    return ("<h2>Boxes and masks</h2>" + data_table(["image", "split", "object", "class", "finding", "detail"], rows,
                                                    empty_html="No degenerate, doubled or oddly sized objects found.")
            + (empty_note(f"{len(found.findings) - 200} more in objects.csv.") if len(found.findings) > 200 else ""))


def _write(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_csvs(found: Audit, folder: Path) -> None:
    items = found.items
    _write(folder / "classes.csv", ["class", "train", "val", "test", "items_holding"],
           [[c, *(int(found.counts[s][k]) for s in ("train", "val", "test")), int(sum(found.holding[s][k] for s in found.holding))]
            for k, c in enumerate(found.classes)])
    _write(folder / "duplicates.csv", ["path_a", "split_a", "path_b", "split_b", "kind", "score", "across_splits"],
           [[items[p.first].path, items[p.first].split, items[p.second].path, items[p.second].split, p.kind, f"{p.score:.4g}",
             items[p.first].split != items[p.second].split] for p in found.pairs])
    if found.issues is not None and found.embedded is not None:
        issues, flagged = found.issues, set(found.issues.ranked.tolist())
        _write(folder / "label_issues.csv", ["rank", "path", "split", "label", "suggested", "quality", "flagged"],
               [[r + 1, items[found.embedded[k]].path, items[found.embedded[k]].split, items[found.embedded[k]].label,
                 found.classes[issues.suggested[k]], f"{issues.quality[k]:.4f}", k in flagged]
                for r, k in enumerate(issues.candidates)])
    if found.judged_quality is not None:
        order = np.argsort(found.judged_quality, kind="stable")
        _write(folder / "label_issues.csv", ["rank", "path", "split", "quality", "flagged"],
               [[r + 1, items[found.judged[k]].path, items[found.judged[k]].split, f"{found.judged_quality[k]:.4f}",
                 found.judged[k] in found.judged_flagged] for r, k in enumerate(order)])
    if found.outliers is not None and found.embedded is not None:
        order = np.argsort(found.outliers, kind="stable")
        _write(folder / "outliers.csv", ["rank", "path", "split", "label", "typicality"],
               [[r + 1, items[found.embedded[k]].path, items[found.embedded[k]].split, items[found.embedded[k]].label,
                 f"{found.outliers[k]:.4f}"] for r, k in enumerate(order)])
    if found.task != "classify":
        _write(folder / "objects.csv", ["path", "split", "object", "class", "finding", "detail"],
               [[items[f.item].path, items[f.item].split, "" if f.obj is None else f.obj, f.label, f.kind, f.detail]
                for f in found.findings])
