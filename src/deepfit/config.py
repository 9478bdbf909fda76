"""The training configuration: every hyperparameter in one typed place, with its default and its help.

The CLI builds its `train` options from these fields and the Python API takes them as keyword
arguments, so the two can never disagree. Unknown names are errors that suggest the nearest
valid one; the resolved config is saved as JSON in every run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ALIASES, OptionError, field_type and suggest_name are re-exported: the CLI and workflows import them from here
from deepfit.config_checks import ALIASES as ALIASES
from deepfit.config_checks import FEATURES_LIMITS, TRAIN_LIMITS, check_names, check_values
from deepfit.config_checks import OptionError as OptionError
from deepfit.config_checks import field_type as field_type
from deepfit.config_checks import suggest_name as suggest_name
from deepfit.errors import ConfigError


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, words: tuple[str, ...] = ()) -> Any:
    meta = {"help": help, "choices": choices, "words": words}  # words: what a number option takes instead of a number
    if isinstance(default, dict):  # a mutable default needs a factory, one dict per config
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    task: str = _opt("classify", "what to learn: classify (image classes), detect (object boxes), segment-instances (object "
                     "boxes and masks), segment (a class for every pixel), or a task registered from outside deepfit")
    # --- model -----------------------------------------------------------------------------------
    model: str | None = _opt(None, "architecture: deepfit's own (cnn, fastnet), any timm name, or tv/NAME for torchvision's; detection: "
                             "a torchvision detector or KIND:BACKBONE; segment: KIND:ENCODER with KIND unet, deeplabv3, fcn or "
                             "lraspp, or a torchvision segmentation model (`deepfit models` lists them)")
    pretrained: bool = _opt(False, "load the architecture's official pretrained weights by name (needs internet once)")
    weights: str | None = _opt(None, "local .safetensors/.pth weights to start from (transfer learning offline)")
    model_args: dict = _opt({}, "architecture options as key=value,... (e.g. depth=4,width=32,activation=gelu)")
    dropout: float = _opt(0.0, "dropout before the classifier")
    freeze_backbone: bool = _opt(False, "detection and segmentation: keep the pretrained backbone (encoder) fixed and train "
                                 "only the rest (the feature-extraction workflow)")
    # --- data ------------------------------------------------------------------------------------
    image_size: int | None = _opt(None, "input size in pixels; default: the model's pretrained config, or the data's; "
                                  "at least 16; detection: images are letterboxed to this square; segmentation: the side of "
                                  "the random training crops, at the images' own resolution")
    val_fraction: float = _opt(0.15, "share of each class held out for validation when the data has no split")
    test_fraction: float = _opt(0.15, "share of each class held out for the final test when the data has no split")
    modality: str = _opt("auto", "what the inputs are: auto (found from DATA's files), image, sound or text (classification)",
                         ("auto", "image", "sound", "text"))
    sample_rate: int | None = _opt(None, "sound: samples per second the model hears; default: the training clips' most "
                                   "common rate, at most 16000")
    clip_seconds: float | None = _opt(None, "sound: every clip is cut (from its middle) or padded to this length; default: "
                                      "long enough for 9 clips in 10 (printed)")
    channels: int = _opt(1, "sound: 1 mixes every recording to mono; N keeps N channels")
    frontend: dict = _opt({}, "sound: log-mel settings n_mels (64), n_mfcc (0: log-mel itself), window_ms (25), "
                          "hop_ms (10), fmin, fmax, top_db (80), e.g. n_mels=40,n_mfcc=20")
    max_length: int | None = _opt(None, "text: tokens per text, longer ones cut (and counted); default 256")
    tokenizer: str = _opt("bpe", "text: the tokenizer trained on the training texts; bpe is the same from run to run, "
                          "wordpiece and unigram are not (the tokenizers library breaks ties in frequency at random)",
                          ("bpe", "wordpiece", "unigram"))
    vocab_size: int = _opt(8000, "text: pieces in the tokenizer's vocabulary")
    noise: str | None = _opt(None, "sound: a folder of background recordings mixed into training clips at 5-30 dB SNR")
    augment: str = _opt("light", "augmentation policy", ("none", "light", "strong"))
    hflip: bool = _opt(True, "random horizontal flips in augmentation (turn off for text, digits, ...)")
    cache: str = _opt("auto", "keep decoded images in memory as uint8", ("auto", "memory", "disk"))
    workers: int | None = _opt(None, "data-loading processes; default: chosen for the machine")
    # --- optimisation ----------------------------------------------------------------------------
    epochs: int = _opt(10, "passes over the training split")
    time_budget: float | None = _opt(None, "minutes of training: the schedule runs over this time, measured while training, "
                                     "and the run stops on time with its learning rate decayed (epochs then only divide "
                                     "the time between phases); default: no budget, train --epochs")
    batch_size: int | None = _opt(None, "images per optimisation step")
    optimizer: str = _opt("adamw", "optimizer", ("adamw", "sgd"))
    lr: float | str | None = _opt(None, "peak learning rate, or find: a learning-rate range test before training chooses it "
                                  "(lr_find.png in the run); default 1e-3 for adamw, 0.05 for sgd (0.01 for detection)",
                                  words=("find",))
    momentum: float = _opt(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = _opt(0.05, "decoupled weight decay; never applied to norm layers and biases")
    schedule: str = _opt("cosine", "learning-rate schedule after warm-up", ("cosine", "onecycle", "constant"))
    warmup_epochs: float = _opt(1.0, "linear warm-up length in epochs (may be fractional)")
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy loss (classification)")
    mixup: float = _opt(0.0, "mixup (classification): train on blends of two examples and their labels, Beta(MIXUP, MIXUP)")
    loss: str = _opt("ce", "segmentation loss: ce, dice, focal or a sum such as ce+dice")
    class_weights: str = _opt("none", "weight the loss per class: balanced = median-frequency weights from the training split's "
                              "examples (classification), objects (detection: fasterrcnn, maskrcnn) or pixels (segmentation)",
                              ("none", "balanced"))
    sampler: str = _opt("random", "how each epoch draws the training items: random (a shuffle), or balanced (with replacement, "
                        "an item as likely as the rarest class it holds is rare, so every class is seen about equally often)",
                        ("random", "balanced"))
    ignore_index: int = _opt(255, "segmentation: mask value excluded from loss and metrics, -1 for none (indexed masks; "
                             "binary 0/255 masks keep 255 as foreground)")
    tile_size: int = _opt(1024, "segmentation: images larger than this (either side) are predicted in overlapping tiles of "
                          "this size, so memory stays bounded for images of any size")
    cv: int = _opt(0, "cross-validation (classification): train one model per fold, each tested on its fold, and report "
                   "every fold's test accuracy and their mean and std; N folds (the data's own fold column or --label-pattern "
                   "fold when it has one, else by group, else stratified); 0: off")
    early_stopping: int = _opt(0, "stop when the validation score (accuracy; mAP for detection, mIoU for segmentation) has not "
                               "improved for this many epochs (0: off)")
    ema: float = _opt(0.0, "weight averaging: every 5 steps the weights are pulled back to their exponential moving average "
                      "with this decay per step (e.g. 0.95), more as training ends (engine/average.py); 0: off")
    head_epochs: int = _opt(1, "transfer learning: epochs that train only the new head before the whole network")
    backbone_lr_scale: float = _opt(0.1, "transfer learning: learning-rate factor for the pretrained layers")
    tta: bool = _opt(False, "test-time augmentation: average predictions over the image and its mirror")
    accumulate: int = _opt(1, "split each batch into N pieces and accumulate their gradients: the same effective batch "
                           "in about 1/N of the memory")
    skip_nonfinite: bool = _opt(False, "skip a batch whose loss is NaN or infinite instead of stopping the run")
    save_every_steps: int = _opt(0, "save the resumable state every N steps too (default: after every epoch and "
                                 "every 5 minutes)")
    # --- machine ---------------------------------------------------------------------------------
    device: str = _opt("auto", "device: auto (CUDA when present), cpu, cuda, cuda:1 ...")
    precision: str = _opt("auto", "auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32", ("auto", "fp32", "bf16", "fp16"))
    channels_last: bool | None = _opt(None, "channels-last memory format; default: on for convolutional nets")
    compile: bool = _opt(False, "torch.compile the model: faster steps after a compilation pause at the start")
    seed: int = _opt(0, "seed for the split, initialisation and augmentation")
    # --- output ----------------------------------------------------------------------------------
    output: str = _opt("runs", "folder in which run folders are created")
    name: str | None = _opt(None, "run folder name; default: <model>-<date>-<time>")

    def __post_init__(self) -> None:
        # Defaults that depend on the task (a detector's step costs far more than a classifier's) come from the task;
        # found by name in the registry, which also reports an unknown task.
        from deepfit.registry import get_task

        task = get_task(self.task)
        defaults = {**task.defaults, **MODALITY_DEFAULTS.get(self.modality, {})}
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.validate()
        task.check_config(self)

    def validate(self) -> None:
        check_values(self, TRAIN_LIMITS)
        if self.pretrained and self.weights:
            raise ConfigError("give either --pretrained (official weights by name) or --weights FILE, not both")
        if getattr(self, "cv", 0) == 1:  # FeaturesConfig shares this check and has no cv
            raise ConfigError("--cv 1 leaves nothing to test on: use --cv 2 or more folds (5 is usual), or 0 for one run")

    @property
    def transfer(self) -> bool:
        """True when training starts from pretrained weights (fine-tuning), False from scratch. A Hugging Face audio
        or text network (`hf:NAME`, models/audio_encoders.py, text_encoders.py) always comes with its pretrained weights."""
        return self.pretrained or bool(self.weights) or (self.model or "").startswith("hf:")

    @property
    def find_lr(self) -> bool:
        """True when the rate is to be chosen by a range test before training (`--lr find`, runs/lr_find.py)."""
        return self.lr == "find"

    @property
    def resolved_lr(self) -> float:
        if self.find_lr:
            raise ConfigError("the learning rate is found when training starts (lr='find'): no rate to use yet")
        if self.lr is not None:
            return float(self.lr)
        if self.optimizer == "adamw":
            # detection too: on a short fine-tuning run (drawn squares, 96 steps, 320 px) AdamW reached box mAP
            # 0.42 at 1e-3 against 0.21 at 1e-4
            return 1e-3
        from deepfit.registry import get_task

        return get_task(self.task).sgd_lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        check_names(values, field_names(cls), what="option")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        check_names(changes, field_names(type(self)), what="option")
        return dataclasses.replace(self, **changes)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


CLASSIFIERS = ("svm", "rbf", "logreg", "knn", "ridge")


@dataclass
class FeaturesConfig:
    """Options of the feature-extraction workflow (`deepfit features`, `deepfit.fit_features`)."""

    # --- feature extractor -----------------------------------------------------------------------
    model: str = _opt("resnet18", "network to take features from: any timm / torchvision name (on sound: an image network on "
                      "spectrograms), hf:NAME_OR_FOLDER (a transformers audio or text encoder), a trained deepfit run's "
                      "folder, or 'handmade' for the classical baseline (images: colour and gradient histograms; sound: "
                      "MFCC statistics, also called 'mfcc'; text: TF-IDF of word and character n-grams, also 'tfidf')")
    pretrained: bool = _opt(False, "use the architecture's official pretrained weights by name (needs internet once)")
    weights: str | None = _opt(None, "local .safetensors/.pth weights of the network (offline)")
    model_args: dict = _opt({}, "architecture options as key=value,...")
    layer: str | None = _opt(None, "layer whose output (pooled) is the feature; default: the pre-logits embedding (a text "
                             "encoder's layers are numbered: 0 its embeddings, N the states after its N-th layer)")
    image_size: int | None = _opt(None, "input size in pixels; default: the weights' own preprocessing")
    modality: str = _opt("auto", "what the inputs are: auto (found from DATA's files), image, sound or text",
                         ("auto", "image", "sound", "text"))
    max_length: int | None = _opt(None, "text: tokens per text a network reads, longer ones cut (and counted); default 256")
    sample_rate: int | None = _opt(None, "sound: samples per second; default: a trained run's own, else the training clips' "
                                   "most common rate (at most 16 kHz)")
    clip_seconds: float | None = _opt(None, "sound: every clip is cut (from its middle) or padded to this length; default: a "
                                      "trained run's own, else 9 in 10 training clips fit whole")
    channels: int | None = _opt(None, "sound: 1 mixes every recording to mono, N keeps N channels; default: a trained "
                                "run's own, else 1")
    frontend: dict = _opt({}, "sound: front-end settings (n_mels, n_mfcc, window_ms, hop_ms, fmin, fmax); 'handmade' "
                          "uses n_mels=40, n_mfcc=20")
    # --- classical model -------------------------------------------------------------------------
    classifier: str | None = _opt(
        None, "classical model fitted on the features, its regularisation chosen by cross-validation on the "
        "training split: svm (linear), rbf (kernel SVM), logreg, knn, ridge; default: svm (none when only --export "
        "is asked for)", CLASSIFIERS,
    )
    cv_folds: int = _opt(5, "cross-validation folds (fewer when a class has fewer training images)")
    export: str | None = _opt(None, "also write the feature matrix with paths, labels and splits to this .npz or .parquet")
    # --- data ------------------------------------------------------------------------------------
    val_fraction: float = _opt(0.15, "share of each class held out for validation when the data has no split")
    test_fraction: float = _opt(0.15, "share of each class held out for the final test when the data has no split")
    cache: bool = _opt(True, "reuse features cached on disk (keyed by model, weights, layer, preprocessing and file content)")
    workers: int | None = _opt(None, "image-decoding processes; default: chosen for the machine")
    batch_size: int = _opt(64, "images per forward pass")
    # --- machine and output ----------------------------------------------------------------------
    device: str = _opt("auto", "device: auto (CUDA when present), cpu, cuda, ...")
    seed: int = _opt(0, "seed for the split and the classifier")
    output: str = _opt("runs", "folder in which run folders are created")
    name: str | None = _opt(None, "run folder name; default: <model>-<classifier>-<date>-<time>")

    def __post_init__(self) -> None:
        check_values(self, FEATURES_LIMITS)
        if self.pretrained and self.weights:
            raise ConfigError("give either --pretrained (official weights by name) or --weights FILE, not both")
        if getattr(self, "cv", 0) == 1:  # FeaturesConfig shares this check and has no cv
            raise ConfigError("--cv 1 leaves nothing to test on: use --cv 2 or more folds (5 is usual), or 0 for one run")
        if self.export and Path(self.export).suffix.lower() not in (".npz", ".parquet"):
            raise ConfigError(f"--export must end in .npz or .parquet, got {self.export!r}")

    @property
    def fit_classifier(self) -> str | None:
        """The classifier to fit: the one asked for; svm by default; none when the user only exports."""
        if self.classifier:
            return self.classifier
        return None if self.export else "svm"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeaturesConfig:
        check_names(values, field_names(cls), what="option")
        return cls(**values)


def parse_model_args(text: str) -> dict[str, Any]:
    """'depth=4,width=32,activation=gelu' -> {'depth': 4, 'width': 32, 'activation': 'gelu'}.

    Values are read as JSON when they parse (numbers, true/false, [lists]) and kept as text otherwise.
    """
    result: dict[str, Any] = {}
    if not text:
        return result
    # split on commas that are not inside [brackets], so widths=[32,64] survives.
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    for part in filter(None, (p.strip() for p in parts)):
        if "=" not in part:
            raise ConfigError(f"--model-args expects key=value pairs separated by commas, got {part!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


# where the image ones do not fit (--modality sound, --modality text)
MODALITY_DEFAULTS: dict[str, dict[str, Any]] = {"sound": {"model": "soundcnn", "batch_size": 32}, "text": {"model": "bag", "batch_size": 64}}
