"""Feature extraction: a classification network cut at one layer, images -> (B, D) feature vectors.

The default cut is the pooled embedding the classifier sees ("pre-logits"). Any named layer
(see `layer_names`) can be used instead: its output is pooled to one vector per image, and the
layers after it are not run. Hooks live only for the duration of a forward pass, so the wrapped
model stays usable on its own and its state dict is unchanged.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from deepfit.errors import ConfigError
from deepfit.models.weights import classifier_module

PRE_LOGITS = "pre_logits"
_MAX_LISTED = 40


def layer_names(model: nn.Module) -> list[str]:
    """Names of the model's submodules (every `named_modules()` entry but the root), in order."""
    return [name for name, _ in model.named_modules() if name]


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """Raised from a hook once the wanted activation is captured, so later layers are skipped."""


def _pool(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> spatial mean; (B, N, C) -> token mean; (B, D) as is; else flattened."""
    if t.dim() == 4:
        return t.mean(dim=(2, 3))
    if t.dim() == 3:
        return t.mean(dim=1)
    if t.dim() == 2:
        return t
    return t.reshape(t.shape[0], -1)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            found = _first_tensor(v)
            if found is not None:
                return found
    if isinstance(value, dict):
        for v in value.values():
            found = _first_tensor(v)
            if found is not None:
                return found
    return None


def _pre_logits_input_module(model: nn.Module) -> nn.Module:
    """The module whose input is the pre-logits feature: the last Linear inside the classifier."""
    head = classifier_module(model)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else head


class FeatureExtractor(nn.Module):
    """A network cut at one layer: images (B, 3, H, W) -> features (B, D), float."""

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.layer = PRE_LOGITS if layer in (None, PRE_LOGITS) else str(layer)
        self._timm_like = hasattr(model, "forward_features") and hasattr(model, "forward_head")
        if self.layer != PRE_LOGITS:
            self._target()  # fail now, not at the first batch
        elif not self._timm_like:
            _pre_logits_input_module(model)  # raises ConfigError when no classifier can be found

    def _target(self) -> nn.Module:
        modules = dict(self.model.named_modules())
        if self.layer in modules and self.layer:
            return modules[self.layer]
        names = layer_names(self.model)
        cls = type(self.model).__name__
        close = difflib.get_close_matches(self.layer, names, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        listed = ", ".join(names[:_MAX_LISTED])
        more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
        raise ConfigError(
            f"{cls} has no layer {self.layer!r}{hint}; use {PRE_LOGITS!r} or a name from "
            f"deepfit.models.features.layer_names(model); available layers: {listed}{more}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == PRE_LOGITS and self._timm_like:
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            return _pool(feats).float()

        captured: list[torch.Tensor] = []
        if self.layer == PRE_LOGITS:
            module = _pre_logits_input_module(self.model)

            def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
                t = _first_tensor(args)
                if t is not None:
                    captured.append(t.reshape(t.shape[0], -1))
                raise _Stop

            handle = module.register_forward_pre_hook(pre_hook)
        else:
            module = self._target()

            def hook(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
                t = _first_tensor(output)
                if t is not None:
                    captured.append(_pool(t))
                raise _Stop

            handle = module.register_forward_hook(hook)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ConfigError(
                f"layer {self.layer!r} of {type(self.model).__name__} produced no tensor during the forward pass; "
                "choose another layer"
            )
        return captured[0].float()


class KNNHead(nn.Module):
    """k-nearest-neighbour vote over a bank of L2-normalised training features, as logits.

    Cosine similarity on unit vectors ranks neighbours exactly as Euclidean distance does, so this
    reproduces scikit-learn's KNeighborsClassifier (uniform weights) fitted on the same unit vectors.
    The logits are log vote shares, so softmax gives the share of the k neighbours in each class.
    """

    def __init__(self, dim: int, num_classes: int, bank_size: int, k: int) -> None:
        super().__init__()
        self.num_classes, self.k = num_classes, k
        self.register_buffer("bank", torch.zeros(bank_size, dim))  # (N, D) unit rows
        self.register_buffer("bank_labels", torch.zeros(bank_size, dtype=torch.long))  # (N,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(x.float(), dim=1)  # (B, D)
        sims = x @ self.bank.T  # (B, N)
        nearest = sims.topk(min(self.k, self.bank.shape[0]), dim=1).indices  # (B, k)
        votes = nn.functional.one_hot(self.bank_labels[nearest], self.num_classes).sum(1).float()  # (B, C)
        return (votes / votes.sum(1, keepdim=True)).clamp_min(1e-4).log()


class RBFHead(nn.Module):
    """A support-vector machine with an RBF kernel, one-vs-rest, as logits: each class's decision is
    sum_i coef[i, c] * exp(-gamma * |x - sv_i|^2) + intercept[c] over the support vectors of every class (a vector
    that supports one class has coefficient 0 in the others), on features standardised by (x - mean) / scale."""

    def __init__(self, dim: int, num_classes: int, bank_size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("support", torch.zeros(bank_size, dim))  # (N, D) standardised support vectors
        self.register_buffer("coef", torch.zeros(bank_size, num_classes))  # (N, C) dual coefficients
        self.register_buffer("intercept", torch.zeros(num_classes))  # (C,)
        self.register_buffer("gamma", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.scale  # (B, D)
        kernel = torch.exp(-self.gamma * torch.cdist(x, self.support).square())  # (B, N)
        return kernel @ self.coef + self.intercept  # (B, C)


class FeatureClassifier(nn.Module):
    """A feature extractor followed by a classical model turned into a torch head: images -> logits.

    The run of `deepfit features` saves this as its checkpoint, so prediction, evaluation and export
    treat it like any trained network: images in, classes out.
    """

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features  # (B, 3, H, W) -> (B, D)
        self.head = head  # (B, D) -> (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
