"""Text: reading labelled texts from tables and folders (io.py), a tokenizer trained on the training split
(tokenizer.py), padded batches of token ids (store.py), and the `TEXT` modality object through which tasks find text
files and take strings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfit.data.media import Media
from deepfit.errors import DataError
from deepfit.modalities.base import expand_paths
from deepfit.modalities.text.io import decode

TEXT_EXTENSIONS = frozenset({".txt"})


@dataclass(frozen=True)
class TextModality:
    name: str = "text"
    noun: str = "text files"
    extensions: frozenset[str] = TEXT_EXTENSIONS

    def load(self, item: Any, encoding: str = "utf-8") -> str:
        """A string as it is, or the text of a .txt file."""
        if isinstance(item, Path):
            return decode(item.read_bytes(), item, encoding).strip()
        if isinstance(item, str):
            return item
        raise DataError(f"a text classifier takes strings (or .txt paths as Path objects), got {type(item).__name__}")

    def expand(self, items: Iterable[str | Path]) -> list[Path]:
        return expand_paths(items, self.extensions, self.noun)

    @property
    def media(self) -> Media:
        return Media(self.extensions, self.noun, "text file")


TEXT = TextModality()
