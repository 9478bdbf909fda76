"""The evaluation page every task writes: one layout, most important first, assembled from the kit.

A task's report module builds what only it knows (its headline cards, its per-class table, its pictures and
its gallery of the worst predictions); :class:`RunDetails` carries what every evaluation page shows about the
run itself (warnings, training options, training curves, examples of every class), so a page written for a
detector reads like one written for a classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepfit.report.gallery import ClassExamples, class_examples
from deepfit.report.html import embedded_figures, empty_note, esc, notes_list, summary_table, write_page
from deepfit.report.trust import options_table

__all__ = ["RunDetails", "write_results_page"]


@dataclass
class RunDetails:
    """What an evaluation page shows about the run beyond the scores of the task.

    notes     warnings the reader must see before the numbers (the validation split stood in for the test
              split; the model answers one class for everything)
    options   the training options, option -> value, in the order shown
    curves    the training-curves picture (loss and validation score per epoch), when the run has epochs
    lr_find   the learning-rate range test's picture, when the run chose its rate with --lr find
    examples  a few pictures of every class from the evaluated images (see :func:`~deepfit.report.gallery.class_examples`)
    classes   how many classes there are, when ``examples`` covers only some of them
    """

    notes: Sequence[str] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    curves: Path | None = None
    lr_find: Path | None = None
    examples: Sequence[ClassExamples] = ()
    classes: int | None = None


def write_results_page(
    path: Path, title: str, *, summary: Mapping[str, Any], class_names: Sequence[str], cards_html: str,
    per_class_html: str, images: Mapping[str, Path], gallery_title: str, gallery_html: Sequence[str],
    details: RunDetails | None = None, styles: str = "", what: str = "report",
) -> Path:
    """Write the evaluation page every task shares, most important first, and return its path.

    What was evaluated (``summary`` and the class names), warnings, the headline numbers, the per-class
    table, the pictures (the task's ``images``, then the training curves), examples of every class, the
    gallery under ``gallery_title`` (``gallery_html`` is its explanation and cards, meant worst first, as
    the pictures to look at), and last the training options, for reference.
    """
    details = details or RunDetails()
    pictures = dict(images)
    if details.curves is not None:
        pictures["Training curves (loss and validation score per epoch)"] = details.curves
    if details.lr_find is not None:
        pictures["Learning-rate range test (--lr find): training loss against the rate, and the rate chosen"] = details.lr_find
    sections = [
        summary_table(summary, class_names),
        notes_list(details.notes),
        cards_html,
        "<h2>Per-class results</h2>",
        per_class_html,
    ]
    if pictures:
        sections += ["<h2>Pictures</h2>", embedded_figures(pictures)]
    if details.examples:
        sections += [
            "<h2>Examples of every class</h2>",
            empty_note("A few evaluated images of each class, as the truth labels them (correctly predicted ones "
                       "first): a quick check that every class holds what its name says."),
            class_examples(details.examples, classes_total=details.classes),
        ]
    sections += [f"<h2>{esc(gallery_title)}</h2>", *gallery_html]
    if details.options:
        sections += ["<h2>Training options</h2>", options_table(details.options)]
    return write_page(path, title, sections, styles=styles, what=what)
