"""How close an exported graph's outputs are to the PyTorch model's, for the kinds of outputs tasks have.

Each `*_agreement` takes the reference outputs and the other outputs of the same samples (a list of per-call output
tuples) and returns figures for export.json; each `*_accepted` says whether the figures pass, or what does not.
"""

from __future__ import annotations

import torch

from deepfit.deploy.graph import Outputs

# fp32 ONNX Runtime against fp32 PyTorch differs by float rounding in a different order of operations: ~1e-5 of
# the logits' scale. 1e-3 leaves room for deep networks and still catches a wrong operator (differences of ~1).
RELATIVE_TOLERANCE = 1e-3
MIN_TOP1 = 0.99  # an argmax may flip where two classes' scores tie within rounding
MIN_PIXELS = 0.995


def _diff(ref: list[Outputs], other: list[Outputs], k: int = 0) -> tuple[float, float]:
    """(max absolute difference, the reference's largest magnitude) of output `k` over every sample."""
    diff = max((float((a[k].float() - b[k].float()).abs().max()) for a, b in zip(ref, other, strict=True) if a[k].numel()),
               default=0.0)
    scale = max((float(a[k].float().abs().max()) for a in ref if a[k].numel()), default=0.0)
    return diff, scale


def logit_agreement(ref: list[Outputs], other: list[Outputs]) -> dict[str, float]:
    """Class scores (B, C): the largest difference, and the fraction of samples whose top class is the same."""
    diff, scale = _diff(ref, other)
    same = torch.cat([(a[0].argmax(-1) == b[0].argmax(-1)).flatten() for a, b in zip(ref, other, strict=True)])
    return {"samples": int(same.numel()), "max_abs_diff": diff, "relative_diff": diff / max(scale, 1.0),
            "top1_agreement": float(same.float().mean()) if same.numel() else 1.0}


def logit_accepted(figures: dict[str, float]) -> str | None:
    if figures["relative_diff"] > RELATIVE_TOLERANCE:
        return f"the scores differ by {figures['max_abs_diff']:.3g} (over {RELATIVE_TOLERANCE:g} of their scale)"
    if figures["top1_agreement"] < MIN_TOP1:
        return f"the top class agrees on only {figures['top1_agreement']:.1%} of the samples"
    return None


def pixel_agreement(ref: list[Outputs], other: list[Outputs]) -> dict[str, float]:
    """Per-pixel class probabilities (B, K, H, W): the largest difference, and the fraction of pixels given the same
    class."""
    diff, _ = _diff(ref, other)
    same = torch.cat([(a[0].argmax(1) == b[0].argmax(1)).flatten() for a, b in zip(ref, other, strict=True)])
    return {"samples": len(ref), "pixels": int(same.numel()), "max_abs_diff": diff,
            "pixel_agreement": float(same.float().mean()) if same.numel() else 1.0}


def pixel_accepted(figures: dict[str, float]) -> str | None:
    if figures["pixel_agreement"] < MIN_PIXELS:
        return f"only {figures['pixel_agreement']:.2%} of the pixels get the same class"
    return None


def agreement_words(figures: dict[str, float]) -> str:
    """The figures of any kind of output in one phrase: what agreed, and the largest difference."""
    if "top1_agreement" in figures:
        head = f"top1 agreement {figures['top1_agreement']:.2%}"
    elif "pixel_agreement" in figures:
        head = f"pixel agreement {figures['pixel_agreement']:.2%}"
    else:
        head = f"box mAP against PyTorch {figures['box_map']:.3f} ({figures['reference_boxes']} boxes)"
    return f"{head}, max abs difference {figures['max_abs_diff']:.2g}"
