"""Exact and near duplicates among a data set's items, and which of them cross a split boundary (a leak: the model is
tested on what it trained on, and the test score is optimistic).

Exact copies share a content digest: the file's bytes (images, sound), or the text after folding case and spaces.
Near copies of images share most of a perceptual hash (imagehash's pHash: the low frequencies of a 32x32 DCT, 64
bits, robust to re-encoding, resizing and small edits); near copies in any modality have embeddings whose cosine
similarity, after centring on the data's mean, is above a threshold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfit.log import logger

PHASH_BITS = 64
NEAR_BITS = 6  # pHashes differing in at most this many of 64 bits: the same picture re-encoded, resized or touched up
NEAR_COSINE = 0.97  # centred embeddings this similar: the same content (checked on hymenoptera, see BENCHMARKS.md)
_CHUNK = 1024  # rows compared at once: memory stays ~chunk x N whatever N


@dataclass(frozen=True)
class Pair:
    first: int  # item indexes, first < second
    second: int
    kind: str  # "exact", "near (image hash)", "near (embedding)"
    score: float  # bits apart for hashes; cosine similarity for embeddings; 0 for exact copies


def exact_pairs(digests: Sequence[str | None]) -> list[Pair]:
    """Every pair of items with the same content key (a file's digest, a normalised text; None: unreadable, never
    paired)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(digests):
        if d is not None:
            groups[d].append(i)
    return [Pair(a, b, "exact", 0.0) for members in groups.values() for k, a in enumerate(members) for b in members[k + 1:]]


def image_hashes(paths: Sequence[Path]) -> np.ndarray:
    """(N, 64) bool pHash bits of each image; an unreadable image gets a row of -1 (never near anything)."""
    import imagehash
    from PIL import Image

    bits = np.zeros((len(paths), PHASH_BITS), dtype=np.int8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                bits[i] = imagehash.phash(image.convert("RGB")).hash.reshape(-1)
        except (OSError, ValueError) as e:  # the reader has already named unreadable files; here they are left out
            logger.debug(f"{path}: no perceptual hash ({e})")
            bits[i] = -1
    return bits


def near_hash_pairs(bits: np.ndarray, max_bits: int = NEAR_BITS) -> list[Pair]:
    """Pairs of images whose hashes differ in at most `max_bits` bits (exact copies included; the caller drops them)."""
    valid = np.flatnonzero(bits[:, 0] >= 0)
    packed = bits[valid].astype(np.float32) * 2 - 1  # ±1: the dot product is 64 - 2 x (bits apart)
    pairs = []
    for start in range(0, len(valid), _CHUNK):
        block = packed[start:start + _CHUNK]  # (C, 64)
        apart = (PHASH_BITS - block @ packed.T) / 2  # (C, N)
        rows, cols = np.nonzero(apart <= max_bits)
        for r, c in zip(rows, cols, strict=True):
            a, b = valid[start + r], valid[c]
            if a < b:
                pairs.append(Pair(int(a), int(b), "near (image hash)", float(apart[r, c])))
    return pairs


def near_embedding_pairs(features: np.ndarray, rows: Sequence[int], threshold: float = NEAR_COSINE) -> list[Pair]:
    """Pairs whose centred, unit-length embeddings have cosine similarity >= `threshold`; `rows[i]` is the item of
    features[i]. Sparse features (TF-IDF) are compared as they are (their zero is already meaningful)."""
    from scipy import sparse
    from sklearn.preprocessing import normalize

    x = features
    if not sparse.issparse(x):
        x = np.asarray(x, dtype=np.float32)
        x = x - x.mean(0, keepdims=True)  # centred: what all items share (a histogram's bulk) says nothing of copies
    x = normalize(x)
    pairs = []
    for start in range(0, x.shape[0], _CHUNK):
        sims = x[start:start + _CHUNK] @ x.T  # (C, N)
        sims = sims.toarray() if sparse.issparse(sims) else np.asarray(sims)
        r_idx, c_idx = np.nonzero(sims >= threshold)
        for r, c in zip(r_idx, c_idx, strict=True):
            a, b = rows[start + r], rows[c]
            if a < b:
                pairs.append(Pair(a, b, "near (embedding)", float(sims[r, c])))
    return pairs


def merge_pairs(*groups: Sequence[Pair]) -> list[Pair]:
    """One pair per two items, the strongest evidence first (exact, then image hash, then embedding)."""
    seen: dict[tuple[int, int], Pair] = {}
    for group in groups:
        for p in group:
            seen.setdefault((p.first, p.second), p)
    return sorted(seen.values(), key=lambda p: (p.first, p.second))
