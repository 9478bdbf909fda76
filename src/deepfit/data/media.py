"""Kinds of labelled files a data source may hold: the suffixes that mark them and the words messages use."""

from __future__ import annotations

import os
from dataclasses import dataclass

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class Media:
    """What kind of file a data source holds: the suffixes that mark them and the words messages use."""

    extensions: frozenset[str]
    noun: str = "images"  # "images", "sound files"
    one: str = "image"

    def holds(self, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in self.extensions

    def looked_for(self) -> str:
        return ", ".join(sorted(self.extensions))


IMAGES = Media(IMAGE_EXTENSIONS)
