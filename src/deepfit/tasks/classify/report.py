"""The classification reports: the evaluation page of one run, and the comparison page of `deepfit compare`.

What is specific to classification lives here: headline accuracy cards, the per-class precision /
recall / F1 table with the weakest class marked, the gallery of the worst predictions, and the
learning curves of several approaches. The page itself, the confusion matrix and the training curves
come from the shared report kit, :mod:`deepfit.report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from deepfit.report.gallery import gallery, shot_card, thumbnail_data_uri
from deepfit.report.html import (
    WEAKEST_BADGE,
    data_table,
    embedded_figures,
    empty_note,
    esc,
    metric_cards,
    notes_list,
    score_bar,
    table_row,
    write_page,
)
from deepfit.report.page import RunDetails, write_results_page
from deepfit.report.plots import save_figure
from deepfit.report.stats import standard_error
from deepfit.report.text import fixed, percent, to_float
from deepfit.report.trust import interval_hint
from deepfit.tasks.balance import imbalance_note

__all__ = [
    "WorstPrediction",
    "plot_learning_curves",
    "write_comparison_report",
    "write_html_report",
]


# --------------------------------------------------------------------------------------------------
# Evaluation report (`deepfit evaluate`)
# --------------------------------------------------------------------------------------------------


@dataclass
class WorstPrediction:
    """One wrong prediction (or, when there is none, a barely right one), shown as a card in the report."""

    path: str  # file path as shown to the user
    true_label: str
    predicted_label: str
    confidence: float  # probability of the predicted class
    true_prob: float  # probability given to the true class


def _weakest_index(per_class: Sequence[Mapping[str, Any]]) -> int | None:
    """The class with the lowest F1 (ties broken by recall), ignoring classes with no test samples."""
    candidates = []
    for index, row in enumerate(per_class):
        support = to_float(row.get("support"))
        f1 = to_float(row.get("f1"))
        if math.isnan(f1) or (not math.isnan(support) and support <= 0):
            continue
        recall = to_float(row.get("recall"))
        candidates.append((f1, -math.inf if math.isnan(recall) else recall, index))
    if len(candidates) < 2:
        return None  # with a single class "weakest" means nothing
    return min(candidates)[2]


def _cards_html(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    num_samples = metrics.get("num_samples")
    ci = metrics.get("intervals") or {}
    cards = [("Accuracy", percent(metrics.get("accuracy")),
              (f"of {esc(num_samples)} images" if num_samples else "") + interval_hint(ci.get("accuracy"), percent))]
    # Chance level gives the balanced accuracy a scale a non-specialist can judge it against.
    chance = f"mean recall per class; chance ≈ {100.0 / len(class_names):.1f}%" if class_names else ""
    cards.append(("Balanced accuracy", percent(metrics.get("balanced_accuracy")),
                  chance + interval_hint(ci.get("balanced_accuracy"), percent)))
    if "macro_f1" in metrics:
        cards.append(("Macro F1", fixed(metrics.get("macro_f1")), "mean F1 over classes" + interval_hint(ci.get("macro_f1"))))
    note = imbalance_note(float(metrics.get("imbalance") or 1.0), "balanced accuracy and macro F1", "examples")
    if note:  # accuracy goes last, and the page says why
        return notes_list([note[0].upper() + note[1:] + "."]) + metric_cards([*cards[1:], cards[0]])
    return metric_cards(cards)


def _per_class_html(per_class: Sequence[Mapping[str, Any]]) -> str:
    weakest = _weakest_index(per_class)
    rows = []
    for index, row in enumerate(per_class):
        f1 = row.get("f1")
        badge = WEAKEST_BADGE if index == weakest else ""
        support = row.get("support")
        support_text = "–" if support is None or support == "" else esc(support)
        rows.append(table_row(
            f"<td>{esc(row.get('class', ''))}{badge}</td>"
            f"<td>{fixed(row.get('precision'))}</td>"
            f"<td>{fixed(row.get('recall'))}</td>"
            f"<td>{fixed(f1)}{score_bar(f1)}</td>"
            f"<td>{support_text}</td>",
            weak=index == weakest,
        ))
    columns = ["class", "precision", "recall", "F1", "support"]
    return data_table(columns, rows, empty_html="No per-class measures were given.")


def _worst_html(worst: Sequence[WorstPrediction], picture: Callable[[str], str | None] | None = None,
                explanations: Mapping[str, str] | None = None) -> str:
    """The cards of the worst predictions; `picture` draws a card's picture from its path (default: the image's
    thumbnail; a sound classifier's report gives the clip's spectrogram and a player); `explanations` holds the HTML
    of a card's explanation (explain_report.py), shown under its picture, by path."""
    cards = []
    for item in worst:
        if picture is None:
            uri = thumbnail_data_uri(item.path)
            thumb = f'<img src="{uri}" alt="{esc(item.path)}">' if uri else None
        else:
            thumb = picture(item.path)
        thumb = thumb or '<div class="placeholder">not<br>available</div>'
        wrong = item.predicted_label != item.true_label
        rows = (
            f'<div class="row">true: <b>{esc(item.true_label)}</b> ({percent(item.true_prob)})</div>'
            f'<div class="row">predicted: <span class="{"wrong" if wrong else ""}">'
            f"{esc(item.predicted_label)}</span> ({percent(item.confidence)})</div>"
        )
        why = (explanations or {}).get(item.path, "")
        cards.append(shot_card(f'<div class="thumb">{thumb}</div>{why}', item.path, rows))
    return gallery(cards, empty_html="No mistakes to show.")


def _worst_title(worst: Sequence[WorstPrediction]) -> tuple[str, str]:
    """The gallery's title and explanation: mistakes when there are any, else the least sure right answers."""
    if not worst or any(item.predicted_label != item.true_label for item in worst):
        return "Worst predictions", ("The images the model got wrong, the lowest probability for the true class first: "
                                     "a good place to look for mislabelled or unusual data.")
    return "No mistakes: the least sure correct predictions", (
        "Every evaluated image was classified correctly; these are the ones the model was least sure of "
        "(the lowest probability for the true class first).")


def write_html_report(
    path: Path,
    *,
    title: str,
    summary: dict[str, str],
    metrics: dict[str, Any],
    class_names: list[str],
    images: dict[str, Path],
    worst: list[WorstPrediction],
    notes: Sequence[str] = (),
    details: RunDetails | None = None,
    picture: Callable[[str], str | None] | None = None,
    explanations: Mapping[str, str] | None = None,
) -> Path:
    """Write the evaluation report as a single self-contained HTML file and return its path.

    Layout, most important first: summary table, warnings (``notes``, then those of ``details``),
    headline numbers with their confidence intervals, per-class table (weakest class marked), pictures,
    examples of every class, the gallery of the worst predictions (``worst``, meant mistakes only, worst
    first, each with its explanation from ``explanations`` where it has one), then the training options. All
    user-provided text is escaped, since class names and file paths come from arbitrary folders and files.
    """
    details = details or RunDetails()
    details = replace(details, notes=[*notes, *details.notes])
    gallery_title, intro = _worst_title(worst)
    if explanations:
        intro += (" Under each, why the model predicted what it did: where it looked (red: the most) or, in a text, "
                  "the words that spoke for its class (red) and against it (blue).")
    return write_results_page(
        path, title, summary=summary, class_names=class_names, cards_html=_cards_html(metrics, class_names),
        per_class_html=_per_class_html(metrics.get("per_class") or []), images=images,
        gallery_title=gallery_title, gallery_html=[empty_note(intro), _worst_html(worst, picture, explanations)],
        details=details,
    )


# --------------------------------------------------------------------------------------------------
# Comparison of approaches (`deepfit compare`)
# --------------------------------------------------------------------------------------------------


def plot_learning_curves(rows: Sequence[Mapping[str, Any]], n_test: int, size_path: Path, time_path: Path) -> tuple[Path, Path]:
    """Test accuracy of each approach against training-set size, and against wall time (both log axes).

    Error bars are one binomial standard error of an accuracy measured on ``n_test`` images: they
    show which gaps between curves are larger than the test set can resolve.
    """
    approaches = list(dict.fromkeys(r["approach"] for r in rows))
    paths = []
    for x_key, x_label, path in (
        ("train_images", "training images", size_path),
        ("seconds", "wall time to train (s)", time_path),
    ):
        fig = Figure(figsize=(7.5, 5.0), layout="constrained")
        ax = fig.subplots()
        for i, name in enumerate(approaches):
            points = sorted((r for r in rows if r["approach"] == name), key=lambda r: r[x_key])
            x = [max(float(r[x_key]), 1e-2) for r in points]
            y = [float(r["accuracy"]) for r in points]
            err = [standard_error(v, n_test) for v in y]
            # distinct markers and dash patterns: curves that coincide stay visible
            ax.errorbar(x, y, yerr=err, marker="osD^v"[i % 5], linestyle=("-", "--", "-.", ":")[i % 4], capsize=3,
                        label=name, alpha=0.85)
        ax.set_xscale("log")
        if x_key == "train_images":  # tick the sizes actually used, as plain numbers
            sizes = sorted({int(r["train_images"]) for r in rows})
            ax.set_xticks(sizes, [str(v) for v in sizes])
            ax.minorticks_off()
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"test accuracy ({n_test} images)")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        paths.append(save_figure(fig, Path(path)))
    return paths[0], paths[1]


def write_comparison_report(
    path: Path,
    *,
    title: str,
    verdict: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    images: Mapping[str, Path],
    notes: Sequence[str] = (),
) -> Path:
    """One self-contained HTML page: the verdict in words first, then the curves and the full table."""
    table = data_table(
        ["approach", "training images", "test accuracy", "balanced accuracy", "wall time"],
        (
            table_row(
                f"<td>{esc(r['approach'])}</td><td>{esc(r['train_images'])} ({percent(r['fraction'], 0)})</td>"
                f"<td>{percent(r['accuracy'])}</td><td>{percent(r['balanced_accuracy'])}</td>"
                f"<td>{float(r['seconds']):.1f} s</td>"
            )
            for r in rows
        ),
    )
    sections = [
        "<h2>Verdict</h2>",
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in verdict) + "</ul>",
        notes_list(notes),
        "<h2>Learning curves</h2>",
        embedded_figures(images),
        "<h2>All results</h2>",
        table,
    ]
    return write_page(path, title, sections, what="comparison report")
