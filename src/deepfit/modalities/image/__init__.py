"""Images: decoding (store.py), the in-memory uint8 store (store.py), batch augmentation (augment.py), and the
`IMAGE` modality object through which tasks find image files and coerce what a user holds into an image tensor."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepfit.data.media import IMAGE_EXTENSIONS, IMAGES, Media
from deepfit.modalities.base import expand_paths


@dataclass(frozen=True)
class ImageModality:
    name: str = "image"
    noun: str = "images"
    extensions: frozenset[str] = IMAGE_EXTENSIONS

    def load(self, item: Any) -> torch.Tensor:
        """A path, PIL image, (H, W[, C]) array or (C, H, W) tensor -> (3, H, W) uint8 RGB."""
        from deepfit.modalities.image.store import image_tensor

        return image_tensor(item)

    def expand(self, items: Iterable[str | Path]) -> list[Path]:
        return expand_paths(items, self.extensions, self.noun)

    @property
    def media(self) -> Media:
        """What data discovery looks for (data/sources.py `discover(media=...)`)."""
        return IMAGES


IMAGE = ImageModality()
