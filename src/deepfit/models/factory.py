"""One factory: a name -> a classification network, its preprocessing, and the spec to rebuild it.

Names resolve in this order: deepfit's own small networks (`cnn`, `fastnet`), then timm, then
torchvision. A prefix forces the source: `timm/resnet18`, `tv/resnet18` (or `torchvision/resnet18`).
Models stay the library's own modules (no wrapper), so official state dicts load into them unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepfit.errors import ConfigError, WeightsError
from deepfit.log import logger
from deepfit.models.features import FeatureClassifier, FeatureExtractor, KNNHead, RBFHead
from deepfit.models.handmade import HandmadeFeatures
from deepfit.models.small import OWN_MODELS
from deepfit.models.weights import check_official_weights_reachable, load_state_dict_into, read_weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocessing:
    """How pixels must be prepared for a model: part of its weights, never the user's memory."""

    image_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 1.0  # evaluation: resize the short side to image_size / crop_pct, then centre-crop

    @property
    def resize_size(self) -> int:
        return max(self.image_size, int(round(self.image_size / self.crop_pct)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(image_size=int(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]), crop_pct=float(d["crop_pct"]))


@dataclass
class ModelSpec:
    """Everything needed to rebuild the architecture (weights come separately)."""

    source: str  # "deepfit" | "timm" | "torchvision" | "features" (a feature extractor + classical head)
    name: str
    num_classes: int
    drop_rate: float = 0.0
    model_args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def resolve_name(name: str) -> tuple[str, str]:
    """'resnet18' -> ('timm', 'resnet18'); 'tv/resnet18' -> ('torchvision', 'resnet18')."""
    prefix, _, arch = name.partition("/")
    if arch:
        source = {"timm": "timm", "tv": "torchvision", "torchvision": "torchvision", "deepfit": "deepfit"}.get(prefix)
        if source is None:
            raise ConfigError(f"unknown model source {prefix!r} in {name!r}; use timm/NAME, tv/NAME or deepfit/NAME")
        names = {"timm": _timm_names, "torchvision": _torchvision_names, "deepfit": lambda: list(OWN_MODELS)}[source]()
        if arch not in names:
            raise ConfigError(f"{source} has no model {arch!r}{_suggest(arch, names)}")
        return source, arch
    if name in OWN_MODELS:
        return "deepfit", name
    timm_names = _timm_names()
    if name in timm_names:
        return "timm", name
    tv_names = _torchvision_names()
    if name in tv_names:
        return "torchvision", name
    raise ConfigError(f"unknown model {name!r}{_suggest(name, [*OWN_MODELS, *timm_names, *tv_names])}")


def _suggest(name: str, names: list[str]) -> str:
    # dict.fromkeys: a name in both timm and torchvision (resnet18) is suggested once
    close = difflib.get_close_matches(name, list(dict.fromkeys(names)), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else "; run `deepfit models` to list the names"


def build_model(spec: ModelSpec) -> nn.Module:
    """The architecture with random weights: used for scratch training and to reload a checkpoint."""
    if spec.source == "features":
        return build_feature_classifier(spec)
    if spec.source == "deepfit":
        cls, _ = OWN_MODELS[spec.name]
        check_model_args(cls, spec.model_args, spec.name)
        return cls(num_classes=spec.num_classes, drop_rate=spec.drop_rate, **spec.model_args)
    if spec.source == "timm":
        import timm

        # timm reports unknown kwargs as a TypeError deep in a constructor; catch it and name the model.
        try:
            return timm.create_model(spec.name, num_classes=spec.num_classes, drop_rate=spec.drop_rate, **spec.model_args)
        except TypeError as e:
            raise ConfigError(f"model {spec.name!r} does not take these --model-args {spec.model_args}: {e}") from e
    import torchvision

    builder = torchvision.models.get_model_builder(spec.name)
    kwargs = dict(spec.model_args)
    if spec.name in ("googlenet", "inception_v3"):  # one output, not a tuple with auxiliary logits
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    if spec.drop_rate:
        try:
            return builder(weights=None, num_classes=spec.num_classes, dropout=spec.drop_rate, **kwargs)
        except TypeError:
            logger.warning(f"torchvision's {spec.name} has no dropout option; --dropout {spec.drop_rate} is not used")
    try:
        return builder(weights=None, num_classes=spec.num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {spec.name!r} does not take these --model-args {spec.model_args}: {e}") from e


def feature_module(backbone: dict[str, Any], layer: str | None) -> nn.Module:
    """What turns images into feature vectors: hand-made features, or a network cut at `layer`.

    `backbone` is a ModelSpec dict, or {"source": "handmade", "args": {...}} for the classical baseline.
    """
    if backbone["source"] == "handmade":
        return HandmadeFeatures(**backbone.get("args", {}))
    return FeatureExtractor(build_model(ModelSpec(**backbone)), layer)


def build_feature_classifier(spec: ModelSpec, features: nn.Module | None = None) -> nn.Module:
    """A `deepfit features` model: spec.model_args holds the backbone spec, the layer and the head's shape. `features`:
    the feature extractor when the caller builds it (a sound network, which this layer does not know)."""
    args = spec.model_args
    features = features if features is not None else feature_module(args["backbone"], args.get("layer"))
    if args["head"] == "knn":
        head: nn.Module = KNNHead(args["dim"], spec.num_classes, args["bank_size"], args["k"])
    elif args["head"] == "rbf":
        head = RBFHead(args["dim"], spec.num_classes, args["bank_size"])
    else:
        head = nn.Linear(args["dim"], spec.num_classes)
    return FeatureClassifier(features, head)


def check_model_args(cls: type, kwargs: dict[str, Any], name: str) -> None:
    """`--model-args` for the network class `cls` (called `name`): an unknown key is an error naming the nearest."""
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_classes", "drop_rate")]
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"model {name!r} has no option {key!r}{hint}; options: {', '.join(valid)}")


def default_preprocessing(spec: ModelSpec) -> Preprocessing:
    """The preprocessing the architecture's official pretrained weights expect (known offline)."""
    if spec.source == "deepfit":
        return Preprocessing(image_size=OWN_MODELS[spec.name][1], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    if spec.source == "timm":
        import timm
        import timm.data

        cfg = timm.models.get_pretrained_cfg(spec.name)
        data_cfg = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {}, use_test_size=False)
        return Preprocessing(
            image_size=int(data_cfg["input_size"][-1]),
            mean=tuple(data_cfg["mean"]),
            std=tuple(data_cfg["std"]),
            crop_pct=float(data_cfg.get("crop_pct", 0.875)),
        )
    import torchvision

    try:
        w = torchvision.models.get_model_weights(spec.name).DEFAULT
    except (ValueError, AttributeError):
        return Preprocessing(image_size=224)
    t = w.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return Preprocessing(image_size=crop, mean=tuple(t.mean), std=tuple(t.std), crop_pct=crop / resize)


@dataclass
class CreatedModel:
    model: nn.Module
    spec: ModelSpec
    preprocessing: Preprocessing
    pretrained_source: str | None  # where the starting weights came from, for the log and the sidecar


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    model_args: dict[str, Any] | None = None,
    image_size: int | None = None,
) -> CreatedModel:
    """Build `name` for `num_classes` classes, optionally starting from pretrained weights."""
    source, arch = resolve_name(name)
    spec = ModelSpec(source=source, name=arch, num_classes=num_classes, drop_rate=drop_rate, model_args=dict(model_args or {}))
    model = build_model(spec)
    prep = default_preprocessing(spec)
    origin = None
    if pretrained:
        state = _official_state_dict(spec)
        load_state_dict_into(model, state, origin=f"{source} pretrained {arch}")
        origin = f"{source}:{arch}:pretrained"
    elif weights:
        state, meta = read_weights_file(Path(weights))
        load_state_dict_into(model, state, origin=str(weights))
        prep = _preprocessing_from_metadata(meta, prep)
        origin = str(Path(weights).resolve())
    if image_size:
        prep = dataclasses.replace(prep, image_size=int(image_size))
    return CreatedModel(model, spec, prep, origin)


def _official_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Download (once, into the library's cache) the official weights for an architecture."""
    if spec.source in ("timm", "torchvision"):
        check_official_weights_reachable(spec.name)  # offline: the error at once, not after a minute of retries
    try:
        if spec.source == "timm":
            import timm

            # timm drops and re-initialises a classifier whose size differs; we only need its state dict.
            ref = timm.create_model(spec.name, pretrained=True)
            return ref.state_dict()
        if spec.source == "torchvision":
            import torchvision

            return torchvision.models.get_model_weights(spec.name).DEFAULT.get_state_dict(progress=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise WeightsError(
            f"could not fetch the official weights of {spec.source} {spec.name!r} ({type(e).__name__}: {str(e)[:200]}); "
            "without internet, download them elsewhere and pass --weights FILE"
        ) from e
    raise WeightsError(f"deepfit's own model {spec.name!r} has no official pretrained weights; use --weights FILE")


def _preprocessing_from_metadata(meta: dict[str, str], default: Preprocessing) -> Preprocessing:
    """safetensors metadata may carry mean/std/image_size/crop_pct (deepfit writes them); they win."""
    prep = dataclasses.replace(default)
    for key in ("mean", "std"):
        if key in meta:
            setattr(prep, key, tuple(json.loads(meta[key])))
    if "image_size" in meta:
        prep.image_size = int(json.loads(meta["image_size"]))
    if "crop_pct" in meta:
        prep.crop_pct = float(json.loads(meta["crop_pct"]))
    return prep


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def list_models(pattern: str = "") -> dict[str, list[str]]:
    return {
        "deepfit": [n for n in OWN_MODELS if pattern in n],
        "timm": [n for n in _timm_names() if pattern in n],
        "torchvision": [f"tv/{n}" for n in _torchvision_names() if pattern in f"tv/{n}"],  # chosen as tv/NAME
    }
