"""What a request may carry and what an answer holds: uploads decoded by their content (never by their name or
Content-Type), within limits of bytes, pixels, seconds and characters; results as JSON (masks as COCO RLE, the
picture drawn as a PNG data URI)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from deepfit.errors import DataError


class TooLarge(DataError):
    """An upload over a limit (answered 413)."""


@dataclass(frozen=True)
class Limits:
    bytes: int = 20_000_000  # a request's body
    pixels: int = 40_000_000  # an image's width x height
    seconds: float = 600.0  # a sound's length
    characters: int = 100_000  # a text's length

    def check_bytes(self, size: int) -> None:
        if size > self.bytes:
            raise TooLarge(f"the request has {size:,} bytes, over the limit of {self.bytes:,} (deepfit serve --max-bytes)")


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file's bytes; anything else (or a truncated file) is a DataError."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > limits.pixels:
                raise TooLarge(f"the image is {width} x {height} pixels, over the limit of {limits.pixels:,} "
                               "(deepfit serve --max-pixels)")
            return np.asarray(probe.convert("RGB"))  # decodes every pixel: a truncated file fails here
    except TooLarge:
        raise
    except Image.UnidentifiedImageError:
        raise DataError("the upload is not an image: its bytes are in no image format Pillow reads") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means "not an image we can read"
        raise DataError(f"the upload is not a readable image ({type(e).__name__}: {e})") from None


def decode_sound(data: bytes, limits: Limits) -> tuple[np.ndarray, int]:
    """((C, T) float32 samples, sample rate) of a sound file's bytes (WAV, FLAC, OGG, MP3: what soundfile reads)."""
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(data))
        if info.duration > limits.seconds:
            raise TooLarge(f"the sound lasts {info.duration:.1f} s, over the limit of {limits.seconds:g} s "
                           "(deepfit serve --max-seconds)")
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (T, C)
    except TooLarge:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means "not a sound we can read"
        raise DataError(f"the upload is not a readable sound file ({type(e).__name__}: {e})") from None
    if not len(samples):
        raise DataError("the sound file holds no samples")
    return np.ascontiguousarray(samples.T), int(rate)


def check_text(text: Any, limits: Limits) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DataError('send a JSON object {"text": "..."} with a non-empty text')
    if len(text) > limits.characters:
        raise TooLarge(f"the text has {len(text):,} characters, over the limit of {limits.characters:,} "
                       "(deepfit serve --max-characters)")
    return text


def png_uri(picture: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding of an (H, W) bool mask, as pycocotools writes it (counts as a string)."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode()}


def masks_record(result: Any, classes: list[str]) -> dict[str, Any]:
    """The masks of a result as RLE: a semantic segmentation's (H, W) class map, one per class present; an instance
    segmenter's (N, H, W) masks, one per object; nothing for other results."""
    if isinstance(result, np.ndarray) and result.ndim == 2:
        return {"masks": {classes[k]: rle(result == k) for k in np.unique(result) if k < len(classes)}}
    if isinstance(result, dict) and "masks" in result:
        return {"masks": [rle(m) for m in result["masks"]]}
    return {}
