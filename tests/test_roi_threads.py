"""RoIAlign over every CPU core (tasks/detect/roi.py): the same pooling as torchvision's, its gradient, every time."""

from __future__ import annotations

import pytest
import torch
import torchvision

from deepfit.tasks.detect import roi
from deepfit.tasks.detect.model import DetectorSpec, build_detector


def _regions(k: int, images: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(k, 2, generator=g) * 200
    boxes = torch.cat([corner, corner + torch.rand(k, 2, generator=g) * 80 + 1], 1)
    return torch.cat([torch.randint(0, images, (k, 1), generator=g).float(), boxes], 1)  # (K, 5)


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the split needs at least two; the same on any machine
    yield
    torch.set_num_threads(threads)


def test_pooling_and_gradient_match_torchvision() -> None:
    features = torch.randn(3, 16, 30, 30, requires_grad=True)
    rois = _regions(300)
    weights = torch.randn(300, 16, 7, 7)
    theirs = torchvision.ops.roi_align(features, rois, (7, 7), 1 / 8, 2)
    (their_grad,) = torch.autograd.grad((theirs * weights).sum(), features)
    ours = roi.roi_align(features, rois, (7, 7), 1 / 8, 2)
    assert type(ours.grad_fn).__name__ == "_ThreadedRoIAlignBackward"  # the threaded path ran
    (our_grad,) = torch.autograd.grad((ours * weights).sum(), features)
    assert torch.equal(ours, theirs)  # each region is pooled by the same kernel
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-5)  # sums in another order
    (again,) = torch.autograd.grad((roi.roi_align(features, rois, (7, 7), 1 / 8, 2) * weights).sum(), features)
    assert torch.equal(again, our_grad)  # the same shares every time: a run repeats bit for bit


def test_gradcheck_in_double_precision() -> None:
    features = torch.randn(2, 2, 12, 12, dtype=torch.float64, requires_grad=True)
    rois = _regions(70, images=2).double() / 4
    assert torch.autograd.gradcheck(lambda f: roi.roi_align(f, rois, (2, 2), 1.0, 2), (features,))


def test_few_regions_or_one_thread_use_torchvision_directly() -> None:
    features = torch.randn(1, 4, 10, 10, requires_grad=True)
    assert type(roi.roi_align(features, _regions(10, 1), (3, 3), 1 / 8, 2).grad_fn).__name__ != "_ThreadedRoIAlignBackward"
    torch.set_num_threads(1)
    assert type(roi.roi_align(features, _regions(300, 1), (3, 3), 1 / 8, 2).grad_fn).__name__ != "_ThreadedRoIAlignBackward"


def test_detectors_pool_over_threads_with_unchanged_weights() -> None:
    model = build_detector(DetectorSpec("maskrcnn:tv/mobilenet_v2", 2, 64, 64))
    poolers = [m for m in model.modules() if isinstance(m, torchvision.ops.MultiScaleRoIAlign)]
    assert len(poolers) == 2 and all(type(m) is roi.ThreadedRoIAlign for m in poolers)
    assert not any(k.startswith(("roi_heads.box_roi_pool", "roi_heads.mask_roi_pool")) for k in model.state_dict())
    model.train()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
                "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)} for _ in images]
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert torchvision.ops.poolers.roi_align is torchvision.ops.roi_align  # the swap lasts one call only
