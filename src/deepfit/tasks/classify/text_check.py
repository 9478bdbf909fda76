"""`deepfit data check` for text: how long the texts are in tokens, and what would make scores wrong or optimistic
(the same text in two splits, labels that differ only by case or spaces)."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepfit.data.catalog import Catalog
from deepfit.modalities.text.tokenizer import train_tokenizer
from deepfit.tasks.classify.text import DEFAULT_MAX_LENGTH, cross_split_texts, normalised, repeated_texts


def describe_texts(catalog: Catalog, sample: int = 20000) -> list[Any]:
    """Lines about the texts of `catalog` (lengths from a BPE tokenizer learned on up to `sample` of them, as
    training would learn one)."""
    texts = [f.text for f in catalog.files]
    tokenizer = train_tokenizer(texts[:sample])
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(texts[:sample])])
    q = np.percentile(lengths, [0, 50, 90, 100])
    longer = float((lengths > DEFAULT_MAX_LENGTH).mean())
    lines: list[Any] = [
        f"lengths in tokens ({len(lengths)} texts, a BPE tokenizer learned from them): shortest {q[0]:.0f}, median {q[1]:.0f}, "
        f"90% within {q[2]:.0f}, longest {q[3]:.0f}; {longer:.1%} are longer than {DEFAULT_MAX_LENGTH} (the default "
        "--max-length) and would be cut"]
    by_split: dict[str, list] = {}
    for f in catalog.files:
        by_split.setdefault(f.split or "unsplit", []).append(f)
    spellings: dict[str, set[str]] = {}
    for label in catalog.classes:
        spellings.setdefault(normalised(label), set()).add(label)
    repeated = repeated_texts(catalog.files)
    lines.append(f"texts that occur more than once (case and spaces aside): {len(repeated)}, {sum(map(len, repeated))} rows; "
                 "a random split may put copies on both sides (deepfit train lists those it does)")
    problems = {
        "the same text under two labels": [" / ".join(f"{f.label}:{f.path}" for f in g) for g in repeated
                                           if len({f.label for f in g}) > 1],
        "the same text in two splits (case and spaces aside)": [" = ".join(f"{f.split}:{f.path}" for f in g)
                                                                for g in cross_split_texts(by_split)],
        "labels that differ only by case or spaces": [" / ".join(repr(s) for s in sorted(v)) for v in spellings.values() if len(v) > 1],
    }
    for kind, found in problems.items():
        lines.append(f"{kind}: {len(found)}")
        lines += [f"  {entry}" for entry in found[:50]] + ([f"  ... and {len(found) - 50} more"] if len(found) > 50 else [])
    return lines
