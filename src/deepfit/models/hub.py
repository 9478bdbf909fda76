"""Networks of Hugging Face `transformers`, named `hf:NAME_OR_FOLDER` on every modality: what audio encoders
(audio_encoders.py) and text encoders (text_encoders.py) share. A name is downloaded once into the Hugging Face cache,
as `transformers` does; a folder is what `save_pretrained` wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import nn

from deepfit.data.split import file_digest
from deepfit.errors import ConfigError

HF_PREFIX = "hf:"


def is_hf(model: str | None) -> bool:
    """Whether `--model` names a transformers network (`hf:NAME_OR_FOLDER`)."""
    return bool(model) and model.startswith(HF_PREFIX)


def encoder_source(model: str) -> str:
    """`hf:NAME_OR_FOLDER` -> what transformers loads: the hub name or the folder."""
    source = model.removeprefix(HF_PREFIX)
    if not source:
        raise ConfigError("--model hf: needs a name or a folder after it, e.g. hf:facebook/wav2vec2-base or hf:./my-encoder")
    return source


def unreachable(source: str, error: Exception, what: str) -> ConfigError:
    """The error for a transformers network (`what`: audio or text) that could not be loaded, with what to do."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(f"cannot load the {what} network {source!r} with transformers ({reason}): give a folder that "
                       "save_pretrained wrote (hf:/path/to/folder), or a Hugging Face name on a machine with internet "
                       "once (it is cached after)")


def build_encoder(config: dict[str, Any], *, add_pooling_layer: bool | None = None) -> nn.Module:
    """The encoder's architecture from its stored configuration, with random weights (a checkpoint's are loaded after).
    `add_pooling_layer=False` leaves out a text encoder's pooler, where its kind has one."""
    from transformers import AutoConfig, AutoModel

    values = dict(config)
    built = AutoConfig.for_model(values.pop("model_type"), **values)
    if add_pooling_layer is not None:
        try:
            return AutoModel.from_config(built, add_pooling_layer=add_pooling_layer)
        except TypeError:  # a kind with no pooler
            pass
    return AutoModel.from_config(built)


def hf_weights_identity(model: str) -> str:
    """What the feature cache knows of a transformers network's weights: a folder by the content of its files (hashed
    only where features are cached, not whenever the network is used), a hub name by its name and the library's
    version."""
    import transformers

    source = encoder_source(model)
    folder = Path(source)
    if not folder.is_dir():
        return f"hub:{source}:{transformers.__version__}"
    digest = hashlib.blake2b(digest_size=12)
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f"{file.name}:{file_digest(file)};".encode())
    return "folder:" + digest.hexdigest()
