"""deepfit's own networks for small images, where ImageNet architectures waste compute.

Both follow timm's interface (`forward_features` -> `forward_head`, `num_classes`, `get_classifier`,
`reset_classifier`) so the rest of deepfit treats them like any timm model.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
}


def make_activation(name: str) -> nn.Module:
    from deepfit.errors import ConfigError

    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class _TimmLikeHead:
    """The classifier plumbing shared by the two networks (a pooled vector -> dropout -> linear)."""

    num_classes: int
    num_features: int
    head_drop: nn.Dropout
    fc: nn.Linear

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]


class ConvNet(_TimmLikeHead, nn.Module):
    """A plain configurable CNN: `depth` stages of [conv-BN-act] x `convs_per_stage`, each halving the size.

    Every choice a from-scratch user wants to try is a hyperparameter: depth, width (doubling per stage
    unless `widths` is given), activation, dropout, and batch norm on/off.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        depth: int = 3,
        width: int = 32,
        widths: list[int] | None = None,
        convs_per_stage: int = 2,
        activation: str = "relu",
        batch_norm: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        widths = list(widths) if widths else [width * 2**i for i in range(depth)]
        layers: list[nn.Module] = []
        c_in = in_chans
        for stage, c_out in enumerate(widths):
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(c_out)] if batch_norm else []
                layers += [make_activation(activation)]
                c_in = c_out
            if stage < len(widths) - 1:  # the last stage is pooled globally instead
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.num_features = c_in
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)  # (B, C)


class _ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, pool: bool, activation: str) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
        if pool:  # pooling before BN halves the work of the norm and activation
            layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(c_out), make_activation(activation)]
        super().__init__(*layers)


class _Residual(nn.Module):
    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(_ConvBlock(width, width, False, activation), _ConvBlock(width, width, False, activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FastNet(_TimmLikeHead, nn.Module):
    """A ResNet-style network for 32x32 images, built to reach high CIFAR-10 accuracy on little compute.

    The shape follows the small residual nets that win fast-CIFAR training races: a stem, three stages
    that each downsample once (32 -> 16 -> 8 -> 4), a residual pair after the first and last stage,
    global max pooling, and a scaled linear classifier (a small logit scale keeps early training
    stable at high learning rates).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: list[int] | None = None,
        activation: str = "gelu",
        drop_rate: float = 0.0,
        logit_scale: float = 0.125,
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths or [32, 64, 128]
        self.stem = _ConvBlock(in_chans, w1 // 2 if w1 >= 32 else w1, False, activation)
        self.stage1 = nn.Sequential(_ConvBlock(self.stem[0].out_channels, w1, True, activation), _Residual(w1, activation))
        self.stage2 = _ConvBlock(w1, w2, True, activation)
        self.stage3 = nn.Sequential(_ConvBlock(w2, w3, True, activation), _Residual(w3, activation))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.num_classes = num_classes
        self.num_features = w3
        self.logit_scale = logit_scale
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(w3, num_classes, bias=False)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, max_patches: int = 200_000) -> None:
        """Patch-whitening initialisation of the stem from a sample of normalised training images (N, C, H, W).

        The stem's filters become the principal directions of the data's 3x3 patches, scaled to unit
        variance, each paired with its negative. The network then starts from decorrelated edges and
        colours instead of noise, which is worth an epoch or more on short schedules (the trick behind
        the fast CIFAR-10 training records).
        """
        conv = self.stem[0]
        k = conv.kernel_size[0]
        patches = torch.nn.functional.unfold(images.float(), k, padding=k // 2)  # (N, C*k*k, H*W)
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()  # (N*H*W, C*k*k)
        if len(patches) > max_patches:
            patches = patches[torch.randperm(len(patches), generator=torch.Generator().manual_seed(0))[:max_patches]]
        patches -= patches.mean(0)
        eigval, eigvec = torch.linalg.eigh(patches.T @ patches / len(patches))  # ascending order
        half = min(conv.out_channels // 2, eigvec.shape[1])
        top_val, top_vec = eigval.flip(0)[:half], eigvec.flip(1)[:, :half]
        filters = (top_vec / (top_val.clamp(min=0) + 1e-2).sqrt()).T.reshape(half, -1, k, k)
        conv.weight[: 2 * half] = torch.cat([filters, -filters]).to(conv.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32)
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))  # (B, w3, 4, 4)
        return self.pool(x).flatten(1)  # (B, w3)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x) * self.logit_scale

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, bias=False)


# name -> (class, default input size). The default size is used when the user gives none.
OWN_MODELS: dict[str, tuple[type[nn.Module], int]] = {
    "cnn": (ConvNet, 32),
    "fastnet": (FastNet, 32),
}
