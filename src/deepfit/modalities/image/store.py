"""Decoding images once into uint8 tensors, and serving them in batches.

Every image is decoded, converted to RGB and resized to one square *storage size* (the model's
evaluation resize, e.g. 256 px for a 224 px model). When the whole set fits in memory it is kept
there as one uint8 tensor (N, 3, S, S), so later epochs only do augmentation and compute; otherwise
it is decoded again each epoch by DataLoader workers. Augmentation runs on whole batches on the
training device (see `augment.py`), the same way in both cases.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from deepfit.errors import DataError
from deepfit.log import logger
from deepfit.modalities.base import MAX_BAD_FRACTION, BadFile, check_unreadable

# Share of unreadable files above which a data set is considered broken rather than a bit dirty.


def open_rgb(path: str | Path) -> Image.Image:
    """Open any image PIL reads, as RGB."""
    with warnings.catch_warnings():
        # PIL warns on palette images with transparency; to_rgb converts them through RGBA.
        warnings.simplefilter("ignore", UserWarning)
        img = Image.open(path)
        img.load()
        return to_rgb(upright(img))


def upright(img: Image.Image) -> Image.Image:
    """The image as viewers show it: turned by its EXIF orientation tag, if it has one."""
    return upright_like(img, img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Grey, palette, 16-bit and alpha images to RGB (transparent areas over white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("P", "PA", "LA", "RGBA", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float greys: rescale to 8 bit
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        img = Image.fromarray(arr.astype(np.uint8))
    return img.convert("RGB")


def pil_to_storage(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to `size` and centre-crop a square: (3, size, size) uint8."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        # BICUBIC with PIL's built-in antialiasing, reducing_gap for speed on large photos.
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None if scale > 0.5 else 3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def decode_file(path: Path, size: int) -> torch.Tensor:
    """Decode one file into storage format; raises on anything unreadable."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is corrupt: report it, don't pad it with grey
    with Image.open(path) as probe:
        if probe.format == "JPEG":
            probe.draft("RGB", (size, size))  # let libjpeg decode at a reduced scale: 2-8x faster for big photos
            probe.load()
            img = upright_like(probe.convert("RGB") if probe.mode != "RGB" else probe.copy(), probe)
        else:
            img = open_rgb(path)
    return pil_to_storage(img, size)


def upright_like(img: Image.Image, source: Image.Image) -> Image.Image:
    """`img` (the pixels of `source`) turned by the EXIF orientation tag of `source`, as viewers show it."""
    try:
        method = _TURNS.get(source.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):  # a broken EXIF block: pixels as stored
        method = None
    return img.transpose(method) if method is not None else img


_T = Image.Transpose
_TURNS = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE, 6: _T.ROTATE_270,
          7: _T.TRANSVERSE, 8: _T.ROTATE_90}


class _DecodeDataset(torch.utils.data.Dataset):
    """Decodes file i; returns (i, tensor or None, error text) so one bad file never stops a worker."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, decode_file(self.paths[i], self.size), ""
        except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable", reported by name
            return i, None, f"{type(e).__name__}: {e}"


@dataclass
class _DecodedBatch:
    indices: list[int]  # of the images that decoded, in the order of `images`
    images: torch.Tensor  # (k, 3, S, S) uint8
    errors: list[tuple[int, str]]  # (index, reason) of those that did not

    def pin_memory(self) -> _DecodedBatch:
        """Page-locked images copy to a GPU asynchronously (DataLoader calls this with pin_memory=True)."""
        self.images = self.images.pin_memory()
        return self


class _Chunks:
    """A batch sampler whose batches are replaced before each pass: with it, one DataLoader with
    persistent workers serves every epoch of a streamed store instead of starting processes each time."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> _DecodedBatch:
    """Stack in the worker: one shared-memory tensor per batch, not one per image.

    Sending each image as its own tensor keeps a file descriptor open per image in the main process,
    which exhausts the limit on data sets of tens of thousands of images.
    """
    good = [(i, t) for i, t, _ in items if t is not None]
    size = good[0][1].shape[-1] if good else 0
    images = torch.stack([t for _, t in good]) if good else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return _DecodedBatch([i for i, _ in good], images, [(i, e) for i, _, e in items if e])


def decode_batches(
    paths: Sequence[Path], size: int, chunks: list[list[int]], workers: int
) -> Iterator[_DecodedBatch]:
    """Decode the files of each chunk of indices, in parallel processes when there are enough of them."""
    dataset = _DecodeDataset(paths, size)
    if workers == 0 or len(paths) < 256:  # starting processes costs more than it saves
        for chunk in chunks:
            yield _collate([dataset[i] for i in chunk])
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=chunks, num_workers=workers, collate_fn=_collate, pin_memory=torch.cuda.is_available(),
        generator=_worker_seeds(),
    )
    yield from loader


def _worker_seeds() -> torch.Generator:
    """The DataLoader seeds its workers from this instead of drawing from torch's global generator, which
    dropout uses: starting workers must not shift the training's random numbers (decoding uses none)."""
    return torch.Generator().manual_seed(0)


def _persistent_loader(paths: Sequence[Path], size: int, workers: int) -> tuple[torch.utils.data.DataLoader, _Chunks]:
    sampler = _Chunks()
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(paths, size), batch_sampler=sampler, num_workers=workers, collate_fn=_collate,
        pin_memory=torch.cuda.is_available(), persistent_workers=True, generator=_worker_seeds(),
    )
    return loader, sampler


def default_workers() -> int:
    """Decoding processes: all cores but one for the main process, at most 8 (more rarely helps)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def available_memory() -> int:
    """Bytes of RAM available now (Linux/macOS); a conservative guess elsewhere."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 * 1024**3


def fits_in_memory(n: int, size: int) -> bool:
    """Keep decoded images in memory when they take under a third of the free RAM."""
    return n * 3 * size * size < available_memory() / 3


class ImageStore:
    """Labelled images in storage format, in memory (one uint8 tensor) or decoded from disk on demand."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], size: int, images: torch.Tensor | None) -> None:
        self.paths = list(paths)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.size = size
        self.images = images  # (N, 3, S, S) uint8, or None when streamed from disk
        self._loader: tuple[torch.utils.data.DataLoader, _Chunks] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @classmethod
    def load(
        cls,
        paths: Sequence[Path],
        labels: Sequence[int],
        size: int,
        *,
        cache: str = "auto",
        workers: int | None = None,
        what: str = "images",
        max_bad_fraction: float = MAX_BAD_FRACTION,
    ) -> tuple[ImageStore, list[BadFile]]:
        """Check (and, in memory mode, decode) every file; unreadable ones are dropped and returned.

        More than `max_bad_fraction` unreadable files is an error listing them: that is a broken
        data set, and training on what is left would hide it.
        """
        paths = [Path(p) for p in paths]
        in_memory = cache == "memory" or (cache == "auto" and fits_in_memory(len(paths), size))
        workers = default_workers() if workers is None else workers
        bad: list[BadFile] = []
        images: torch.Tensor | None = None
        if in_memory:
            # decoded straight into one preallocated tensor: no list of N small tensors, no copy at the end
            images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
            chunks = [list(range(s, min(s + 64, len(paths)))) for s in range(0, len(paths), 64)]
            for batch in decode_batches(paths, size, chunks, workers):
                images[batch.indices] = batch.images
                bad += [BadFile(paths[i], reason) for i, reason in batch.errors]
        else:
            bad = [BadFile(p, reason) for p in paths if (reason := _verify(p))]
        if max_bad_fraction < 1.0:  # 1.0: the caller checks (and warns) once over everything it loads
            check_unreadable(bad, len(paths), what, "image", max_bad_fraction)
        if bad:
            skipped = {b.path for b in bad}
            keep = [i for i, p in enumerate(paths) if p not in skipped]
            images = images[keep] if images is not None else None
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        return cls(paths, labels, size, images), bad

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
        workers: int | None = None, order: torch.Tensor | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (images (B,3,S,S) uint8, labels (B,), indices (B,)) over the whole store once, or over
        `order` (indices into the store) when given: the trainer passes its own shuffled order, so that a
        resumed epoch can continue exactly where it stopped."""
        if order is None:
            order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        n = len(order)
        if self.images is not None:
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield self.images[idx], self.labels[idx], idx
            return
        workers = default_workers() if workers is None else workers
        chunks = [order[s : s + batch_size].tolist() for s in range(0, n, batch_size)]
        if workers and len(self.paths) >= 256:  # decoding processes started once, kept for every epoch
            if self._loader is None:
                self._loader = _persistent_loader(self.paths, self.size, workers)
            loader, sampler = self._loader
            sampler.chunks = chunks
            source: Iterable[_DecodedBatch] = loader
        else:
            source = decode_batches(self.paths, self.size, chunks, 0)
        for batch in source:
            if batch.errors:  # readable at the start, unreadable now: the file changed under us
                i, reason = batch.errors[0]
                raise DataError(f"image became unreadable during training: {self.paths[i]} ({reason})")
            idx = torch.tensor(batch.indices)
            yield batch.images, self.labels[idx], idx

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)


def _verify(path: Path) -> str:
    """Cheap readability check for streamed data (full decoding happens each epoch)."""
    try:
        with Image.open(path) as img:
            img.verify()
        return ""
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


# --- whole images at their own size (detection, segmentation) ---------------------------------------------


def decode_rgb(path: str) -> torch.Tensor:
    """(3, H, W) uint8 RGB of an image file; an unreadable file is an error that names it.

    Decoded by Pillow, not torchvision.io (deprecated there since 0.29), turned upright by its EXIF
    orientation tag as viewers show it (and as annotation tools label it)."""
    try:
        with Image.open(path) as image:
            array = np.array(upright_like(image.convert("RGB"), image))  # (H, W, 3)
        return torch.from_numpy(array).permute(2, 0, 1)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode {path} ({type(e).__name__}: {str(e)[:120]}): replace or remove the file") from e


_warned_255 = False


def as_hwc(array: np.ndarray) -> np.ndarray:
    """An array image as (H, W[, C]) uint8: (C, H, W) with C in 1, 3, 4 is moved to channels-last; floats in
    [0, 1] are scaled by 255, floats above 1 are taken as 0-255 values (with a warning, once)."""
    global _warned_255
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint8:
        return array
    arr = array.astype(np.float32)
    scale = 1.0 if arr.size and float(np.nanmax(arr)) > 1.0 else 255.0
    if scale == 1.0 and not _warned_255:
        logger.warning("image arrays with values above 1 are taken as 0-255 pixel values (floats in [0, 1] as 0-1)")
        _warned_255 = True
    return (np.clip(arr * scale, 0, 255) + 0.5).astype(np.uint8)


# what prediction accepts as one image: a path, a PIL image, an (H, W, 3) or (H, W) uint8 array, a (3, H, W) tensor
ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


def image_tensor(item: ImageInput) -> torch.Tensor:
    """(3, H, W) uint8 RGB of an image given as a path, a PIL image, an (H, W[, 3|4]) array or a (3, H, W) tensor."""
    if isinstance(item, str | Path):
        return decode_rgb(str(item))
    if isinstance(item, torch.Tensor):
        t = item if item.dtype == torch.uint8 else (item.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return t if t.shape[0] == 3 else t.expand(3, *t.shape[-2:])
    array = as_hwc(np.asarray(upright(item).convert("RGB") if isinstance(item, Image.Image) else item))
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DataError(f"an image must be (H, W, 3), (3, H, W) or (H, W) pixels, not an array of shape {array.shape}")
    return torch.from_numpy(np.array(array[..., :3])).permute(2, 0, 1)  # a copy: the input may be read-only


def to_storage(item: ImageInput, size: int) -> torch.Tensor:
    """Any supported input -> (3, S, S) uint8, through the same resize as training and evaluation."""
    if isinstance(item, str | Path):
        return decode_file(Path(item), size)
    if isinstance(item, Image.Image):
        return pil_to_storage(to_rgb(upright(item)), size)
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        if item.ndim == 3 and item.shape[0] in (1, 3, 4):  # (C, H, W) -> (H, W, C)
            item = item.permute(1, 2, 0)
        item = item.numpy()
    if isinstance(item, np.ndarray):
        arr = as_hwc(item)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise DataError(f"cannot read an image from an array of shape {item.shape}: expected (H, W), (H, W, 3) or (3, H, W)")
        return pil_to_storage(to_rgb(Image.fromarray(arr)), size)
    raise DataError(f"cannot predict on a {type(item).__name__}: give a path, a PIL image, an array or a tensor")
