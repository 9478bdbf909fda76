"""Reading weight files safely and fitting them into a model.

A weights file from the internet is untrusted: `.safetensors` holds only tensors, and `.pth`/`.pt`
files are read with `torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers. A file that needs arbitrary unpickling is refused with an error that says why.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from deepfit.errors import ConfigError, WeightsError
from deepfit.log import logger

# Keys under which training scripts commonly nest the state dict inside a checkpoint.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema")


def read_weights_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (state_dict, metadata) from a .safetensors or .pth/.pt/.bin file, without running its code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(f"{path} is not a readable safetensors file ({e})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" not in str(e).lower():  # not a refusal: the bytes are no checkpoint at all
                raise WeightsError(f"{path} is not a readable PyTorch weights file ({str(e)[:200]})") from e
            raise WeightsError(
                f"refused to load {path}: it contains pickled Python objects, and unpickling can run arbitrary code. "
                "Re-save only the tensors (torch.save(model.state_dict(), ...)) or convert it to .safetensors"
            ) from e
        except (RuntimeError, EOFError, OSError) as e:
            raise WeightsError(f"{path} is not a readable PyTorch weights file ({e})") from e
        meta = {}
        for key in _NESTED_KEYS:
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(f"{path} does not hold a state dict (name -> tensor)")
        state = obj
    return strip_prefixes(state), meta


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the `module.` of DataParallel/DDP and the `_orig_mod.` of torch.compile."""
    out = {}
    for key, value in state.items():
        # in any order and nesting: torch.compile(DDP(m)) saves "_orig_mod.module.", DDP(torch.compile(m)) the reverse
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load pretrained weights; a classifier whose shape differs is left freshly initialised.

    Only tensors whose shape differs *and* that belong to the classifier are dropped; any other
    mismatch, missing or unexpected key means the file is for another architecture, which is an error.
    """
    own = model.state_dict()
    head_keys = _classifier_keys(model)
    replaced, wrong = [], []
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            (replaced if key in head_keys else wrong).append(key)
    if wrong:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
        raise WeightsError(f"{origin} does not fit this architecture: {details}")
    state = {k: v for k, v in state.items() if k not in replaced}
    missing = [k for k in own if k not in state and k not in head_keys]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise WeightsError(
            f"{origin} does not match this architecture: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); is it for another model?"
        )
    model.load_state_dict(state, strict=False)
    folded = freeze_folded_norms(model)
    if folded:
        logger.warning(
            f"{origin}: {folded} batch-norm layers have identity statistics (mean 0, variance 1: the normalisation was "
            "folded into the convolutions, as in weights converted from TFLite/ONNX); their statistics stay frozen "
            "during training, since batch statistics would change what the pretrained layers compute"
        )
    if replaced:
        # A zero classifier predicts the uniform distribution: fine-tuning then starts from a small, stable
        # loss instead of random logits whose large gradients would disturb the pretrained features.
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key in replaced:
                if key in params:
                    params[key].zero_()
        shapes = ", ".join(f"{k} {tuple(own[k].shape)}" for k in replaced)
        logger.info(f"loaded {origin}; classifier replaced for the new classes ({shapes}), zero-initialised")
    else:
        logger.info(f"loaded {origin}")


# Set on norm layers whose running statistics must not change in training (the Trainer keeps them in eval mode).
FROZEN_STATS = "deepfit_frozen_stats"


def freeze_folded_norms(model: nn.Module) -> int:
    """Mark batch-norm layers whose statistics are mean 0 / variance 1 (folded into the preceding
    convolution): in train mode they would normalise by batch statistics and undo the folding."""
    count = 0
    for m in model.modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_mean is None or m.running_var is None:
            continue
        # converters write variance 1 or 1 - eps (so that variance + eps is exactly 1)
        if bool((m.running_mean == 0).all() and ((m.running_var - 1).abs() <= m.eps * 1.01).all()):
            setattr(m, FROZEN_STATS, True)
            count += 1
    return count


def _classifier_keys(model: nn.Module) -> set[str]:
    head = classifier_module(model)
    names = {id(p): n for n, p in model.named_parameters()} | {id(b): n for n, b in model.named_buffers()}
    return {names[id(t)] for t in [*head.parameters(), *head.buffers()] if id(t) in names}


def classifier_module(model: nn.Module) -> nn.Module:
    """The final classification layer(s): what transfer learning trains first."""
    if hasattr(model, "get_classifier"):  # timm and deepfit models
        return model.get_classifier()
    for attr in ("fc", "classifier", "heads", "head"):  # torchvision's conventions
        if isinstance(getattr(model, attr, None), nn.Module):
            return getattr(model, attr)
    raise ConfigError(f"cannot find the classifier of {type(model).__name__} to fine-tune it")


# --- official weights: fail at once when they are neither cached nor reachable -----------------------------

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TIMM_OFFLINE", "DEEPFIT_OFFLINE")


def network_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """Whether the download hosts can be reached at all: False at once under an offline variable, else a short
    connection attempt (a few seconds at most) instead of minutes of hub retries."""
    import os
    import socket

    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def official_weights_cached(name: str) -> bool:
    """Whether timm's or torchvision's official weights for `name` are already in their usual cache folders."""
    import os

    places: list[Path] = []
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hf = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None and cfg.hf_hub_id:
            places.append(hf / ("models--" + cfg.hf_hub_id.split("@")[0].replace("/", "--")) / "snapshots")
        if cfg is not None and cfg.url:
            places.append(hub / cfg.url.rsplit("/", 1)[-1])
    except (ImportError, RuntimeError, ValueError, AttributeError):
        pass
    try:
        import torchvision

        places.append(hub / torchvision.models.get_model_weights(name).DEFAULT.url.rsplit("/", 1)[-1])
    except (ImportError, RuntimeError, ValueError, AttributeError, KeyError):
        pass
    return any(p.exists() and (p.is_file() or any(p.iterdir())) for p in places)


def check_official_weights_reachable(name: str) -> None:
    """Raise the one-line WeightsError at once when `name`'s official weights are not cached and there is no network."""
    if not official_weights_cached(name) and not network_reachable():
        raise WeightsError(
            f"could not fetch the official weights of {name!r}: no network and not in the cache; without internet, "
            "download them elsewhere and pass --weights FILE"
        )
