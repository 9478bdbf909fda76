"""Texts as TF-IDF weights of word and character n-grams: the classical baseline of text classification.

Each text becomes, for words (pairs included) and for character n-grams within words (2 to 5 characters, which
catch misspellings, "txt" speak and word endings), the counts of the n-grams the training texts hold (those in 2 or
more of them), damped (1 + log count), weighted by rarity (inverse document frequency) and scaled to unit length,
each block on its own: scikit-learn's `TfidfVectorizer` (sublinear tf, smoothed idf, L2 norm), fitted on the
training split alone.

`TfidfWeights` does the weighting in torch from the raw counts, so a run saved by `deepfit features --model tfidf` is
an ordinary checkpoint: the vocabularies travel in its sidecar, the idf weights and the linear model in its tensors,
and it predicts from strings with no pickled scikit-learn object.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

TFIDF = "tfidf"  # the name of these features (`deepfit features --model tfidf`)
# (analyzer, smallest n, largest n) of each block
BLOCKS = (("word", 1, 2), ("char_wb", 2, 5))
MIN_DOCS = 2  # an n-gram of a single training text teaches nothing general, and there are many of them


@dataclass
class NgramVocabulary:
    """The n-grams of each block in column order, and their idf weights: what fitting on the training texts learned."""

    blocks: list[dict[str, Any]]  # {"analyzer", "ngram_range", "terms": [n-gram, ...]}, one per block
    idf: list[np.ndarray]  # (V_block,) float32 each

    @property
    def sizes(self) -> list[int]:
        return [len(b["terms"]) for b in self.blocks]

    def to_spec(self) -> dict[str, Any]:
        """The JSON part (the idf weights go into the checkpoint's tensors, inside `TfidfWeights`)."""
        return {"source": TFIDF, "name": TFIDF, "blocks": self.blocks}


def _vectorizer(analyzer: str, low: int, high: int, vocabulary: list[str] | None = None) -> Any:
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    if vocabulary is not None:
        return CountVectorizer(analyzer=analyzer, ngram_range=(low, high), vocabulary=vocabulary, dtype=np.float32)
    return TfidfVectorizer(analyzer=analyzer, ngram_range=(low, high), min_df=MIN_DOCS, sublinear_tf=True)


def fit_ngrams(texts: list[str]) -> NgramVocabulary:
    """The n-grams of the training texts (those in MIN_DOCS or more of them) and their idf weights."""
    blocks, idf = [], []
    for analyzer, low, high in BLOCKS:
        vectorizer = _vectorizer(analyzer, low, high).fit(texts)
        blocks.append({"analyzer": analyzer, "ngram_range": [low, high], "terms": vectorizer.get_feature_names_out().tolist()})
        idf.append(vectorizer.idf_.astype(np.float32))
    return NgramVocabulary(blocks, idf)


def tfidf_matrix(vocabulary: NgramVocabulary, texts: list[str]) -> Any:
    """The TF-IDF rows (N, V) of `texts`, a scipy CSR matrix: what `TfidfWeights` computes, kept sparse (N x V dense
    would not fit in memory for a few thousand texts)."""
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    counts = ngram_counts(vocabulary.blocks, texts)
    counts.data = 1 + np.log(counts.data)
    weighted = counts @ sp.diags(np.concatenate(vocabulary.idf))
    edges = np.cumsum([0, *vocabulary.sizes])
    return sp.hstack([normalize(weighted[:, a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)], format="csr",
                     dtype=np.float32)


def ngram_counts(blocks: list[dict[str, Any]], texts: list[str]) -> Any:
    """Raw counts (N, V) of the vocabulary's n-grams in `texts`, as a scipy CSR matrix (columns as in `blocks`)."""
    import scipy.sparse as sp

    parts = [_vectorizer(b["analyzer"], *b["ngram_range"], vocabulary=b["terms"]).transform(texts) for b in blocks]
    return sp.hstack(parts, format="csr", dtype=np.float32)


def dense_batches(matrix: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """A sparse (N, V) matrix as dense (B, V) float tensors, a batch at a time (all at once would not fit in memory)."""
    for start in range(0, matrix.shape[0], batch_size):
        yield torch.from_numpy(matrix[start : start + batch_size].toarray())


class TfidfWeights(nn.Module):
    """{"counts": (B, V)} raw n-gram counts -> (B, V) TF-IDF: 1 + log(count) where present, times idf, each block
    scaled to unit length, as scikit-learn's TfidfVectorizer(sublinear_tf=True) weighs them."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.register_buffer("idf", torch.ones(sum(sizes)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        counts = batch["counts"].float()
        tf = torch.where(counts > 0, 1 + torch.log(counts.clamp_min(1)), torch.zeros_like(counts))
        blocks = (tf * self.idf).split(self.sizes, dim=1)
        return torch.cat([nn.functional.normalize(b, dim=1) for b in blocks], dim=1)


def tfidf_module(vocabulary: NgramVocabulary) -> TfidfWeights:
    module = TfidfWeights(vocabulary.sizes)
    module.idf.copy_(torch.from_numpy(np.concatenate(vocabulary.idf)))
    return module
