"""Batched augmentation (BatchTransform): exact centre crop and normalisation without augmentation, per-image
random variation with it, reproducible from a seed, and exact pixel shifts for small images."""

from __future__ import annotations

import pytest
import torch

from deepfit.modalities.image.augment import SMALL_IMAGE, BatchTransform, center_crop

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def random_batch(b: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_policy_none_is_centre_crop_and_normalisation() -> None:
    images = random_batch(2, 20)
    out = BatchTransform(16, MEAN, STD, "none")(images)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    crop = images[:, :, 2:18, 2:18].double() / 255.0
    for c in range(3):
        expected = (crop[:, c] - MEAN[c]) / STD[c]
        torch.testing.assert_close(out[:, c].double(), expected, atol=1e-5, rtol=0)
    # a pixel by hand: value v in channel 1 becomes (v / 255 - 0.4) / 0.25
    v = int(images[1, 1, 2, 2])
    assert float(out[1, 1, 0, 0]) == pytest.approx((v / 255 - 0.4) / 0.25, abs=1e-5)


def test_policy_none_is_deterministic_and_ignores_the_generator() -> None:
    images = random_batch(4, 16)
    tf = BatchTransform(16, MEAN, STD, "none")
    a = tf(images, torch.Generator().manual_seed(1))
    b = tf(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(a, tf(images))


def test_centre_crop_resizes_smaller_storage() -> None:
    images = random_batch(1, 8).float()
    assert center_crop(images, 16).shape == (1, 3, 16, 16)
    assert torch.equal(center_crop(images, 8), images)


@pytest.mark.parametrize("policy", ["light", "strong"])
@pytest.mark.parametrize(("storage", "size"), [(16, 16), (40, 32), (110, 96)])
def test_random_policies_shape_variation_and_seed(policy: str, storage: int, size: int) -> None:
    one = random_batch(1, storage)
    images = one.repeat(8, 1, 1, 1)  # eight copies of the same image
    tf = BatchTransform(size, MEAN, STD, policy)
    out = tf(images, torch.Generator().manual_seed(7))
    assert out.shape == (8, 3, size, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    distinct = {tuple(x.flatten()[:64].tolist()) for x in out}
    assert len(distinct) > 1, "every image of a batch must get its own random augmentation"
    again = tf(images, torch.Generator().manual_seed(7))
    assert torch.equal(out, again)
    other = tf(images, torch.Generator().manual_seed(8))
    assert not torch.equal(out, other)


def test_channels_last_output() -> None:
    out = BatchTransform(16, MEAN, STD, "light", channels_last=True)(random_batch(2, 16), torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("policy", ["light", "strong"])
def test_small_image_translation_is_an_exact_pixel_shift(policy: str) -> None:
    size = 16
    assert size <= SMALL_IMAGE
    pad = size // 8 if policy == "light" else size // 4
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    image[0, :, 8, 7] = 255  # one bright pixel
    batch = image.repeat(64, 1, 1, 1)
    tf = BatchTransform(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), policy, hflip=False)
    if policy == "strong":  # the shift alone, without the strong policy's colour jitter and erasing
        out = tf._random_crop(batch.float(), torch.Generator().manual_seed(3)) / 255
    else:
        out = tf(batch, torch.Generator().manual_seed(3))
    shifts = set()
    for x in out:
        bright = (x > 0).nonzero()
        # exactly one pixel (in all three channels) lit, at full brightness: no blur, no interpolation
        assert len(bright) == 3 and {int(c) for c in bright[:, 0]} == {0, 1, 2}
        y, xx = int(bright[0, 1]), int(bright[0, 2])
        torch.testing.assert_close(x[:, y, xx], torch.ones(3), atol=1e-5, rtol=0)
        assert abs(x.sum().item() - 3.0) < 1e-4
        dy, dx = y - 8, xx - 7
        assert abs(dy) <= pad and abs(dx) <= pad
        shifts.add((dy, dx))
    assert len(shifts) > 3  # the shifts vary from image to image


def test_small_image_translation_fills_with_zeros_at_the_border() -> None:
    """A pixel on the edge moves in or drops out; it is never repeated into the padding."""
    image = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    image[0, :, :, 0] = 255  # the left column
    tf = BatchTransform(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "light", hflip=False)
    out = tf(image.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0))
    seen = set()
    for x in out:
        columns = (x[0] > 0.5).any(dim=0).nonzero().flatten().tolist()
        assert len(columns) <= 1, f"the bright column was repeated: {columns}"
        seen.add(columns[0] if columns else None)
        if columns:  # the column, less the 0-2 pixels a vertical shift moves out, all at full brightness
            values = x[0, :, columns[0]]
            assert 14 <= int((values > 0.5).sum()) <= 16
            torch.testing.assert_close(values[values > 0], torch.ones(int((values > 0).sum())), atol=1e-5, rtol=0)
    assert seen == {None, 0, 1, 2}  # shifted out (left), kept, or moved right by 1 or 2 pixels


def test_flip_is_a_mirror() -> None:
    """With flips on and no shift possible to tell apart, every output is the image or its mirror."""
    image = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    image[0, :, 8, 2] = 255
    tf = BatchTransform(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "light", hflip=True)
    out = tf(image.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0))
    columns = {int((x[0] > 0).nonzero()[0, 1]) for x in out}
    # x = 2 shifted by at most 2 -> columns 0..4; mirrored x = 13 -> columns 11..15
    assert columns & set(range(0, 5)) and columns & set(range(11, 16))
    assert columns <= set(range(0, 5)) | set(range(11, 16))


def test_strong_policy_erases_and_jitters() -> None:
    images = random_batch(1, 16).repeat(64, 1, 1, 1)
    out = BatchTransform(16, MEAN, STD, "strong", hflip=False)(images, torch.Generator().manual_seed(0))
    erased = [(x == 0).all(dim=0).sum().item() for x in out]  # pixels set to the mean (0 after normalising)
    assert 0 < sum(e > 3 for e in erased) < 64  # some images, not all, have an erased rectangle
    means = out.mean(dim=(1, 2, 3))
    assert means.std() > 0.01  # brightness and contrast differ per image
