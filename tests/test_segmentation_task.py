"""Semantic segmentation: losses, metrics (against hand-computed values) and tiled inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepfit.data.formats.masks import IGNORE_INDEX as IGNORE
from deepfit.errors import ConfigError
from deepfit.tasks.balance import class_weights
from deepfit.tasks.segment import tiling as seg
from deepfit.tasks.segment.objective import (
    SegmentationLoss,
    SegmentationTask,
    confusion_matrix,
    parse_loss,
    segmentation_metrics,
)
from deepfit.tasks.segment.tiling import predict_image, predict_tiled, predict_whole

X = IGNORE


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_match_a_hand_computed_case() -> None:
    # 4 classes: 0 and 1 ordinary, 2 has true pixels but is never predicted, 3 is in neither truth nor
    # prediction (predicted only at an ignored pixel, which does not count).
    truth = torch.tensor([[0, 0, 1, 1],
                          [0, 2, 1, 1],
                          [X, 2, 0, X]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [0, 0, 1, 0],
                         [1, 0, 0, 3]])
    # Valid pixels (true, pred): (0,0) (0,1) (1,1) (1,1) / (0,0) (2,0) (1,1) (1,0) / (2,0) (0,0) -> 10 pixels.
    # Rows = true class, columns = predicted class:
    #   true 0: predicted 0 three times, 1 once      -> [3, 1, 0, 0]
    #   true 1: predicted 1 three times, 0 once      -> [1, 3, 0, 0]
    #   true 2: predicted 0 twice                    -> [2, 0, 0, 0]
    #   true 3: none                                 -> [0, 0, 0, 0]
    expected_confusion = [[3, 1, 0, 0], [1, 3, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]]
    confusion = confusion_matrix(pred, truth, 4)
    assert confusion.dtype == torch.int64
    assert confusion.tolist() == expected_confusion

    m = segmentation_metrics(confusion.numpy(), ["a", "b", "c", "d"])
    # pixel accuracy = diagonal / valid = (3 + 3) / 10
    assert m["pixel_accuracy"] == pytest.approx(0.6)
    a, b, c, d = m["per_class"]
    # class 0: TP 3, FP = column 0 (3 + 1 + 2) - 3 = 3, FN = row 0 (4) - 3 = 1
    #   IoU = 3 / 7, Dice = 6 / (6 + 3 + 1) = 0.6, precision = 3 / 6, recall = 3 / 4
    assert a == {"class": "a", "iou": pytest.approx(3 / 7), "dice": pytest.approx(0.6), "precision": pytest.approx(0.5),
                 "recall": pytest.approx(0.75), "pixels": 4, "predicted": 6}
    # class 1: TP 3, FP = (1 + 3) - 3 = 1, FN = 4 - 3 = 1: IoU = 3 / 5, Dice = 6 / 8, precision = recall = 3 / 4
    assert b == {"class": "b", "iou": pytest.approx(0.6), "dice": pytest.approx(0.75), "precision": pytest.approx(0.75),
                 "recall": pytest.approx(0.75), "pixels": 4, "predicted": 4}
    # class 2: TP 0, FP 0, FN 2: IoU = Dice = 0; never predicted, so precision 0 (zero_division), recall 0 / 2
    assert c == {"class": "c", "iou": 0.0, "dice": 0.0, "precision": 0.0, "recall": 0.0, "pixels": 2, "predicted": 0}
    # class 3: nothing true, nothing predicted: not scored
    assert d == {"class": "d", "iou": None, "dice": None, "precision": None, "recall": None, "pixels": 0, "predicted": 0}
    # means over classes 0-2 only: mIoU = (3/7 + 3/5 + 0) / 3 = 12/35, mean Dice = (0.6 + 0.75 + 0) / 3 = 0.45
    assert m["miou"] == pytest.approx(12 / 35)
    assert m["mean_dice"] == pytest.approx(0.45)
    assert m["confusion"] == expected_confusion


def test_metrics_of_an_empty_confusion_are_zero_not_nan() -> None:
    m = segmentation_metrics(np.zeros((2, 2), dtype=np.int64), ["a", "b"])
    assert (m["pixel_accuracy"], m["miou"], m["mean_dice"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        segmentation_metrics(np.zeros((2, 2), dtype=np.int64), ["a", "b", "c"])


def test_confusion_matrix_equals_a_loop_and_ignores_ignored_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    k = 5
    target = torch.randint(0, k, (2, 17, 23), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = IGNORE
    pred = torch.randint(0, k, (2, 17, 23), generator=g)
    expected = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != IGNORE:
            expected[t, p] += 1
    got = confusion_matrix(pred, target.to(torch.uint8), k)
    assert got.tolist() == expected.tolist()
    assert int(got.sum()) == int((target != IGNORE).sum()) < target.numel()


# --- losses -----------------------------------------------------------------------------------------


def _random_case(k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 5, 7, generator=g) * 2
    target = torch.randint(0, k, (2, 5, 7), generator=g)
    target[0, 0, :3] = IGNORE
    target[1, 4, 2] = IGNORE
    return logits, target


def test_parse_loss() -> None:
    assert parse_loss("ce") == ("ce",)
    assert parse_loss(" Focal + dice ") == ("focal", "dice")
    assert parse_loss("ce+dice+focal") == ("ce", "dice", "focal")
    with pytest.raises(ConfigError, match=r"'lovasz'.*ce, dice, focal"):
        parse_loss("ce+lovasz")
    with pytest.raises(ConfigError, match="more than once"):
        parse_loss("ce+dice+ce")
    with pytest.raises(ConfigError, match="ce, dice, focal"):
        parse_loss("")


def test_ce_equals_torch_cross_entropy_with_and_without_weights() -> None:
    logits, target = _random_case()
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert float(SegmentationLoss("ce")(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    assert float(SegmentationLoss("ce")(logits, target.to(torch.uint8))) == pytest.approx(float(expected), rel=1e-6)
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    weighted = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    assert float(weighted) != pytest.approx(float(expected), rel=1e-3)  # the weights do change it
    assert float(SegmentationLoss("ce", weight=weight)(logits, target)) == pytest.approx(float(weighted), rel=1e-6)


def test_focal_loss() -> None:
    logits, target = _random_case()
    ce = float(SegmentationLoss("ce")(logits, target))
    assert float(SegmentationLoss("focal", focal_gamma=0.0)(logits, target)) == pytest.approx(ce, rel=1e-6)
    # Hand case, two classes, two pixels (and one ignored): p_t = 0.75 and 0.5.
    # focal = mean((1 - p_t)^2 * -log p_t) = (0.0625 * -log 0.75 + 0.25 * -log 0.5) / 2
    hand = torch.tensor([[[[np.log(3.0), 0.0, 5.0]], [[0.0, 0.0, -5.0]]]], dtype=torch.float32)  # (1, 2, 1, 3)
    hand_target = torch.tensor([[[0, 1, X]]])
    expected = (0.0625 * -np.log(0.75) + 0.25 * -np.log(0.5)) / 2
    assert float(SegmentationLoss("focal")(hand, hand_target)) == pytest.approx(expected, rel=1e-6)
    # Weighted: w_{y_i} multiplies each pixel, the mean stays over the 2 valid pixels.
    weighted = SegmentationLoss("focal", weight=torch.tensor([2.0, 3.0]))(hand, hand_target)
    assert float(weighted) == pytest.approx((2 * 0.0625 * -np.log(0.75) + 3 * 0.25 * -np.log(0.5)) / 2, rel=1e-6)


def test_dice_loss() -> None:
    _, target = _random_case()
    perfect = torch.where(target == IGNORE, 0, target)
    logits = F.one_hot(perfect, 4).permute(0, 3, 1, 2).float() * 100  # ~one-hot probabilities
    logits[0, :, 0, 0] = torch.tensor([0.0, 50.0, -50.0, 7.0])  # an ignored pixel: whatever is there does not count
    assert float(SegmentationLoss("dice")(logits, target)) == pytest.approx(0.0, abs=1e-6)
    # Hand case (smooth s = 1): pixel a has p = (0.75, 0.25) and truth 0, pixel b p = (0.5, 0.5) and truth 1,
    # a third pixel is ignored.
    #   class 0: sum p*y = 0.75, sum p = 1.25, sum y = 1 -> (2 * 0.75 + 1) / (1.25 + 1 + 1) = 10/13
    #   class 1: sum p*y = 0.5,  sum p = 0.75, sum y = 1 -> (2 * 0.5 + 1) / (0.75 + 1 + 1)  = 8/11
    hand = torch.tensor([[[[np.log(3.0), 0.0, 5.0]], [[0.0, 0.0, -5.0]]]], dtype=torch.float32)  # (1, 2, 1, 3)
    hand_target = torch.tensor([[[0, 1, X]]])
    assert float(SegmentationLoss("dice")(hand, hand_target)) == pytest.approx(1 - (10 / 13 + 8 / 11) / 2, rel=1e-6)
    weighted = SegmentationLoss("dice", weight=torch.tensor([1.0, 3.0]))(hand, hand_target)
    assert float(weighted) == pytest.approx(1 - (10 / 13 + 3 * 8 / 11) / 4, rel=1e-6)


def _dice_by_one_hot(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The textbook soft Dice loss with a one-hot truth, to check the loss's per-class sums against."""
    valid = (target != IGNORE).float().unsqueeze(1)  # (B, 1, H, W)
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(torch.where(target == IGNORE, 0, target).long(), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dice = (2 * (probs * onehot).sum((0, 2, 3)) + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    return 1 - (dice * weight).sum() / weight.sum()


@pytest.mark.parametrize("channels_last", [False, True])
def test_dice_matches_the_one_hot_formula_in_value_and_gradient(channels_last: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 6, 7, generator=generator) * 3
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 5, (2, 6, 7), generator=generator)
    target[0, :2] = IGNORE
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.5])
    ours = logits.clone().requires_grad_()
    reference = logits.clone().requires_grad_()
    loss = SegmentationLoss("dice", weight=weight)(ours, target)
    expected = _dice_by_one_hot(reference, target, weight)
    loss.backward()
    expected.backward()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    torch.testing.assert_close(ours.grad, reference.grad, rtol=1e-5, atol=1e-7)


def test_sum_of_terms_and_fp32_under_autocast() -> None:
    logits, target = _random_case()
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    parts = {name: SegmentationLoss(name, weight=weight)(logits, target) for name in ("ce", "dice", "focal")}
    assert float(SegmentationLoss("ce+dice", weight=weight)(logits, target)) == pytest.approx(
        float(parts["ce"] + parts["dice"]), rel=1e-6)
    assert float(SegmentationLoss("focal+dice+ce", weight=weight)(logits, target)) == pytest.approx(
        float(parts["ce"] + parts["dice"] + parts["focal"]), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = SegmentationLoss("ce+dice")(logits.bfloat16(), target)
    assert loss.dtype == torch.float32


def test_all_ignored_batch_gives_zero_and_backward_works() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE, dtype=torch.uint8)
    for spec in ("ce", "dice", "focal", "ce+dice+focal"):
        loss = SegmentationLoss(spec, weight=torch.tensor([1.0, 2.0, 3.0]))(logits, target)
        assert loss.grad_fn is not None and float(loss.detach()) == 0.0
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
        logits.grad = None


def test_class_weights() -> None:
    # frequencies 0.1, 0.3, (absent), 0.6 -> median 0.3 -> weights 3, 1, 1 (absent), 0.5
    w = class_weights([100, 300, 0, 600])
    assert w.dtype == np.float32 and w.tolist() == pytest.approx([3.0, 1.0, 1.0, 0.5])
    # an even number of classes: median of 0.05, 0.15, 0.3, 0.5 is 0.225
    assert class_weights(np.array([10, 30, 60, 100])).tolist() == pytest.approx([4.5, 1.5, 0.75, 0.45])
    assert class_weights([5, 0, 7], "none").tolist() == [1.0, 1.0, 1.0]
    assert class_weights([0, 0]).tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError):
        class_weights([1, 2], "inverse")
    with pytest.raises(ConfigError):
        class_weights([1, -2])


# --- the task ---------------------------------------------------------------------------------------


def test_task_training_and_validation_parts_add_up() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 3, padding=1)
    task = SegmentationTask(3, loss="ce")
    assert (task.name, task.monitor) == ("segment", "val_miou")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (5, 8, 8), generator=g).to(torch.uint8)
    y[0, :4] = IGNORE
    loss, correct = task.training_loss(model, x, y)
    assert correct is None
    loss.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0

    with torch.inference_mode():
        parts = [task.validation_batch(model, x[:2], y[:2]), task.validation_batch(model, x[2:], y[2:])]
        whole = task.validation_batch(model, x, y)
        pred = model(x).argmax(1)
    valid = y != IGNORE
    assert whole[1] == int(valid.sum()) == parts[0][1] + parts[1][1]
    result = task.validation_result(parts)
    expected = task.validation_result([whole])
    assert set(result) == {"val_loss", "val_miou", "val_pixel_acc"}
    assert result["val_miou"] == expected["val_miou"]
    assert result["val_pixel_acc"] == expected["val_pixel_acc"] == pytest.approx(
        float((pred == y.long())[valid].float().mean()))
    # an unweighted cross-entropy's pixel-weighted mean over batches is the mean over all pixels
    assert result["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    assert result["val_miou"] == pytest.approx(segmentation_metrics(whole[2], ["a", "b", "c"])["miou"])


# --- inference --------------------------------------------------------------------------------------


def _zero_biases(model: nn.Module) -> nn.Module:
    """Random biases outweigh what a random network reads from the image (it then predicts one class
    everywhere, which any tiling would "agree" with): without them, the prediction follows the image."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.zero_()
    return model.eval()


class SmallField(nn.Module):
    """Three 3x3 convolutions, no stride: each output pixel sees the 3 pixels around it, no further."""

    def __init__(self, k: int, width: int = 8) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1),
                                    nn.Conv2d(width, k, 3, padding=1)])
        for conv in self.convs:  # He init keeps the image's signal from fading through the layers
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        _zero_biases(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - 0.5  # centred, so features follow the image's colours rather than its brightness
        for conv in self.convs[:-1]:
            x = F.relu(conv(x))  # (B, width, H, W)
        return self.convs[-1](x)  # (B, K, H, W)


def _small_field_model(k: int, width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return SmallField(k, width).eval()


class TinyUNet(nn.Module):
    """Two stride-2 downsamplings and skip connections: a receptive field far larger than 3 pixels."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.down1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.up2 = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU())
        self.up1 = nn.Sequential(nn.Conv2d(24, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, k, 1)
        _zero_biases(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x - 0.5)  # (B, 8, H, W); centred so that features follow the image's colours
        s1 = self.down1(s0)  # (B, 16, H/2, W/2)
        s2 = self.down2(s1)  # (B, 16, H/4, W/4)
        u1 = self.up2(torch.cat([F.interpolate(s2, scale_factor=2.0), s1], 1))  # (B, 16, H/2, W/2)
        u0 = self.up1(torch.cat([F.interpolate(u1, scale_factor=2.0), s0], 1))  # (B, 8, H, W)
        return self.head(u0)  # (B, K, H, W)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour regions plus a little noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 16 + 2, w // 16 + 2, generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (smooth + 0.1 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


def _exact_mask(h: int, w: int, tile: int, overlap: int, reach: int) -> torch.Tensor:
    """(H, W) True where every tile covering a pixel saw all of its receptive field (`reach` pixels each way),
    and, on a side that is not a multiple of 32, away from the bottom/right edge, where predict_whole's own
    zero padding (explicit, not the convolutions') changes what the deeper layers see."""

    def side(length: int) -> torch.Tensor:
        ok = torch.ones(length, dtype=torch.bool)
        for start in seg._tile_starts(length, tile, overlap):
            if start > 0:
                ok[start : start + reach] = False
            if start + tile < length:
                ok[start + tile - reach : start + tile] = False
        if length % 32:
            ok[length - reach :] = False
        return ok

    return side(h)[:, None] & side(w)[None, :]


def test_tile_starts_and_window() -> None:
    assert seg._tile_starts(150, 64, 16) == [0, 48, 86]  # stride 48; the last one flush with the edge
    assert seg._tile_starts(230, 64, 16) == [0, 48, 96, 144, 166]
    assert seg._tile_starts(112, 64, 16) == [0, 48]  # 48 is already flush: no duplicate
    assert seg._tile_starts(64, 64, 16) == [0] and seg._tile_starts(40, 64, 16) == [0]
    window = seg._blend_window(8, 3, torch.device("cpu"))
    # ramp ((min(i + 1, 8 - i) capped at 4) / 4)^2 = 1/16, 4/16, 9/16, 1, 1, 9/16, 4/16, 1/16: never 0;
    # row 0 is that times ramp[0] = 1/16
    assert window[0].tolist() == pytest.approx([x / 256 for x in (1, 4, 9, 16, 16, 9, 4, 1)])
    assert window[3, 4] == 1.0 and window[2, 3] == 9 / 16


def test_tiled_equals_whole_for_a_small_receptive_field() -> None:
    # 160 x 224, multiples of 32: predict_whole adds no padding of its own, so tiling is all that differs.
    # (On 150 x 230 its bottom/right padding alone changes the border pixels; see test_image_smaller_than_a_tile.)
    k, tile, overlap, h, w = 5, 64, 16, 160, 224
    model = _small_field_model(k)
    image = _image(h, w)
    whole = predict_whole(model, image)  # (K, H, W)
    tiled = seg._predict_tiled_probs(model, image, num_classes=k, tile=tile, overlap=overlap, batch_size=3)
    assert whole.shape == tiled.shape == (k, h, w)
    assert torch.allclose(tiled.sum(0), torch.ones(h, w), atol=1e-5)  # blended probabilities still sum to 1
    exact = _exact_mask(h, w, tile, overlap, reach=3)
    assert exact.float().mean() > 0.75
    assert (tiled - whole).abs()[:, exact].max() < 1e-4  # measured: 6e-8
    labels = predict_tiled(model, image, num_classes=k, tile=tile, overlap=overlap, batch_size=3)
    assert labels.dtype == torch.int64 and labels.device.type == "cpu" and labels.shape == (h, w)
    assert torch.equal(labels, tiled.argmax(0))
    # measured: 0.9995 (the rest at seams, where a tile's border pixels, which saw its zero padding,
    # still get a little weight)
    assert float((labels == whole.argmax(0)).float().mean()) >= 0.995
    # several classes really are predicted: agreement is not that of a near-constant output
    counts = torch.bincount(whole.argmax(0).flatten(), minlength=k)
    assert int((counts > 0.1 * h * w).sum()) >= 2


def test_tiled_agrees_with_whole_for_a_strided_unet() -> None:
    k = 4
    torch.manual_seed(0)
    model = TinyUNet(k).eval()
    image = _image(150, 230, seed=1)
    whole = predict_whole(model, image).argmax(0)
    tiled = predict_tiled(model, image, num_classes=k, tile=64, overlap=16, batch_size=4)
    agreement = float((tiled == whole).float().mean())
    # measured: 0.980 of the pixels agree (torch 2.15, CPU; the whole prediction is 76% class 0, 21% class 2).
    # Less than for 3x3 convolutions: the receptive field is far wider than the 16-pixel overlap, tiles
    # starting at 86 and 166 are off the stride-4 grid of the whole image, and predict_whole pads to 160 x 256.
    assert agreement >= 0.95
    counts = torch.bincount(whole.flatten(), minlength=k)
    assert int((counts > 0.1 * whole.numel()).sum()) >= 2  # not a constant prediction


def test_image_smaller_than_a_tile() -> None:
    k, tile, overlap = 5, 64, 16
    model = _small_field_model(k)
    image = _image(40, 160)  # shorter than a tile: one tile row, padded to 64 rows and cropped back
    whole = predict_whole(model, image)  # pads 40 to 64 rows too, and 160 columns not at all
    tiled = seg._predict_tiled_probs(model, image, num_classes=k, tile=tile, overlap=overlap)
    assert tiled.shape == (k, 40, 160)
    # Both see the same 64 padded rows, so the mask is that of a 64-row image, whose bottom edge is exact.
    exact = _exact_mask(64, 160, tile, overlap, reach=3)[:40]
    assert exact[-1].sum() > 100
    assert (tiled - whole).abs()[:, exact].max() < 1e-4
    labels = predict_tiled(model, image, num_classes=k, tile=tile, overlap=overlap)
    assert labels.shape == (40, 160) and float((labels == whole.argmax(0)).float().mean()) >= 0.995
    small = _image(20, 30)  # smaller than a tile both ways
    assert predict_tiled(model, small, num_classes=k, tile=tile, overlap=overlap).shape == (20, 30)


def test_predict_image_picks_whole_or_tiled() -> None:
    k = 5
    model = _small_field_model(k)
    small, large = _image(50, 60), _image(100, 130)
    assert torch.equal(predict_image(model, small, num_classes=k, tile=64, overlap=16),
                       predict_whole(model, small).argmax(0))
    assert torch.equal(predict_image(model, large, num_classes=k, tile=64, overlap=16),
                       predict_tiled(model, large, num_classes=k, tile=64, overlap=16))
    with pytest.raises(ValueError, match="expected"):
        predict_tiled(model, large, num_classes=k + 1, tile=64, overlap=16)
    with pytest.raises(ConfigError):
        predict_tiled(model, large, num_classes=k, tile=64, overlap=64)


class _Recorder(nn.Module):
    """Wraps a model and records the shape of every batch it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.model(x)


def test_tiled_prediction_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tall image: 2400 x 96 with 8 classes, tiles of 64 (2 tiles per row, 50 tile rows). Whole-image
    # probabilities would be K * H * W = 1.8M floats; the band accumulator is K * tile * W = 49k.
    k, tile, h, w = 8, 64, 2400, 96
    model = _Recorder(_small_field_model(k))
    image = _image(h, w)
    accumulators = []
    original = seg._accumulator

    def recording(num_classes: int, rows: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        acc, weights = original(num_classes, rows, width, device)
        accumulators.append((tuple(acc.shape), tuple(weights.shape)))
        return acc, weights

    monkeypatch.setattr(seg, "_accumulator", recording)
    labels = predict_tiled(model, image, num_classes=k, tile=tile, overlap=16, batch_size=3)
    assert accumulators == [((k, tile, w), (tile, w))]  # one band accumulator, allocated once
    # the model only ever sees one tile row's tiles (2 here, under the batch size of 3), each tile x tile
    assert len(model.shapes) == len(seg._tile_starts(h, tile, 16)) == 50
    assert set(model.shapes) == {(2, 3, tile, tile)}
    assert labels.shape == (h, w) and labels.dtype == torch.int64
    assert float((labels == predict_whole(model.model, image).argmax(0)).float().mean()) >= 0.995


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tiled_prediction_peak_gpu_memory() -> None:
    # 4000 x 3000 with 80 classes: whole-image probabilities alone would take K * H * W * 4 bytes = 3.84 GB.
    k, tile, h, w = 80, 1024, 3000, 4000
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Conv2d(3, k, 1).to(device).eval()  # cheap: the memory is what is measured
    image = torch.rand(3, h, w)  # on the CPU: tiles travel to the GPU one batch at a time
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    labels = predict_tiled(model, image, num_classes=k, tile=tile, overlap=128, batch_size=1)
    peak = torch.cuda.max_memory_allocated() - base
    # the (K, tile, W) accumulator is 1.31 GB; a tile's logits and softmax 0.34 GB each; the rest (window,
    # weights, a band's argmax, the convolution's workspace) is given another 2 tiles' worth: 2.65 GB in all,
    # against the 3.84 GB whole-image probabilities alone would take.
    bound = 4 * (k * tile * w + 4 * k * tile * tile)
    assert peak <= bound < 0.7 * 4 * k * h * w, (peak, bound)
    assert labels.shape == (h, w) and labels.device.type == "cpu"
    # a 1x1 convolution has no context: tiling changes nothing but rounding (TF32 convolutions on some GPUs)
    whole = predict_whole(model, image[:, :512, :512]).argmax(0).cpu()
    assert float((labels[:512, :512] == whole).float().mean()) >= 0.99
