"""Boxes and masks move with the image: a box drawn on a synthetic image lands on the same pixels after
every transform, and degenerate boxes leave together with their labels and masks."""

from __future__ import annotations

import pytest
import torch

from deepfit.tasks.detect.transforms import Letterbox, detection_transform, make_sample

H, W = 120, 160
BOXES = torch.tensor([[30.0, 20.0, 70.0, 60.0], [100.0, 70.0, 150.0, 110.0]])  # xyxy, pixel edges
COLOURS = [(255, 0, 0), (0, 255, 0)]  # one colour channel per object: each is found again in the image


def _sample() -> dict:
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    masks = torch.zeros(2, H, W, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(BOXES.int().tolist()):
        image[:, y1:y2, x1:x2] = torch.tensor(COLOURS[i], dtype=torch.uint8)[:, None, None]
        masks[i, y1:y2, x1:x2] = 1
    return make_sample(image, BOXES.clone(), torch.tensor([3, 7]), masks)


def _extent(on: torch.Tensor) -> list[float]:
    """xyxy pixel-edge box of the True pixels of an (H, W) map."""
    ys, xs = torch.nonzero(on, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


def _check(out: dict, tolerance: float = 1.5) -> None:
    labels = out["labels"].tolist()
    assert len(out["boxes"]) == len(labels) == len(out["masks"])
    for box, label, mask in zip(out["boxes"], labels, out["masks"], strict=True):
        obj = [3, 7].index(label)
        channel = out["image"][obj].float()
        others = out["image"][1 - obj].float()
        assert torch.allclose(torch.tensor(_extent(mask.bool())), box, atol=tolerance), (box, _extent(mask.bool()))
        # the object's colour, where the box says (brightness may have been jittered, so relative to the maximum)
        painted = (channel > 0.5 * channel.max()) & (others < 0.5 * channel.max())
        assert torch.allclose(torch.tensor(_extent(painted)), box, atol=tolerance + 1)


@pytest.mark.parametrize("resize", ["letterbox", "resize"])
def test_evaluation_resize_moves_boxes_and_masks(resize: str) -> None:
    out = detection_transform(96, train=False, resize=resize)(_sample())
    assert tuple(out["image"].shape) == (3, 96, 96) and tuple(out["masks"].shape[-2:]) == (96, 96)
    _check(out)
    if resize == "letterbox":  # one scale for both axes (96 / 160), padding right and bottom only
        torch.testing.assert_close(out["boxes"], BOXES * 0.6, atol=0.01, rtol=0)
        assert int(out["image"][:, 80:, :].float().mean()) == 114  # the grey letterbox band below the image


@pytest.mark.parametrize("seed", range(12))
def test_random_training_geometry_keeps_every_box_on_its_pixels(seed: int) -> None:
    torch.manual_seed(seed)
    out = detection_transform(128, train=True, colour=0.0)(_sample())
    assert tuple(out["image"].shape) == (3, 128, 128)
    _check(out, tolerance=2.0)  # an affine resampling moves an edge by up to a pixel on each side


def test_flip_mirrors_the_boxes() -> None:
    from torchvision.transforms import v2

    out = v2.RandomHorizontalFlip(1.0)(_sample())
    torch.testing.assert_close(out["boxes"][0], torch.tensor([W - 70.0, 20.0, W - 30.0, 60.0]))
    _check(out, tolerance=0.0)


def test_degenerate_boxes_leave_with_their_labels_and_masks() -> None:
    sample = _sample()
    sample["boxes"][1] = torch.tensor([100.0, 70.0, 100.5, 110.0])  # half a pixel wide
    sample["iscrowd"] = torch.tensor([False, True])
    out = detection_transform(96, train=False)(sample)
    assert out["labels"].tolist() == [3] and len(out["boxes"]) == 1 and len(out["masks"]) == 1
    assert out["iscrowd"].tolist() == [False]  # the crowd flag leaves with its box too


def test_letterbox_of_a_tall_image() -> None:
    sample = make_sample(torch.zeros(3, 200, 100, dtype=torch.uint8), torch.tensor([[10.0, 20.0, 50.0, 180.0]]), torch.tensor([0]))
    out = Letterbox(100)(sample)
    assert tuple(out["image"].shape) == (3, 100, 100)
    torch.testing.assert_close(out["boxes"], torch.tensor([[5.0, 10.0, 25.0, 90.0]]))
    assert tuple(out["boxes"].canvas_size) == (100, 100)
