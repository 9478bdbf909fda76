"""Why a classifier chose a class: a heat map over the image or the spectrogram it saw, a score per token of a text.

Images and sounds are explained by class-activation maps (explain/cam.py, the grad-cam library) of a layer of the
network that sees a picture: the image network itself, or a sound model's body over its (bins, frames) spectrogram.
Texts are explained by captum's attributions per token: occlusion (each token replaced by padding, and the fall of
the class's logit measured) for every text network, integrated gradients on the token embeddings where the network
has one per token. Explanations are computed in fp32 without test-time augmentation; the probability shown is
the predictor's own (with TTA where the run uses it).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfit.errors import ConfigError
from deepfit.explain.cam import METHODS, ClassScore, check_method, heat_maps
from deepfit.explain.draw import overlay, spectrogram_picture, token_picture
from deepfit.explain.layers import Layer, choose_layer, find_layers
from deepfit.explain.result import ExplainSettings, Explanation
from deepfit.modalities.image.augment import center_crop
from deepfit.modalities.image.store import to_storage
from deepfit.report.drawing import caption

IMAGE_METHODS = tuple(METHODS)
# HiResCAM first for sounds: Grad-CAM weighs each channel by its gradient averaged over the whole map, exact for a head
# that averages the map too; soundcnn's head keeps the frequency rows (a weight per row), so rows of opposite weight
# cancel in that average, and measured on the pointing test (tests/test_explain_sound_text.py) Grad-CAM's maps were
# often blank or elsewhere. HiResCAM multiplies gradient and activation at each cell, faithful to any such head.
SOUND_METHODS = ("hirescam", *(m for m in METHODS if m != "hirescam"))
TEXT_METHODS = ("occlusion", "integrated-gradients")
SHOWN_PX = 224  # a smaller picture is enlarged, pixel by pixel, to about this size so its map can be seen


def target_index(classes: list[str], probs: np.ndarray, target: str | None) -> int:
    """The class explained: `target` by name, else the most probable one."""
    if target is None:
        return int(probs.argmax())
    if target not in classes:
        raise ConfigError(f"--class {target}: the model's classes are {', '.join(classes)}")
    return classes.index(target)


def name_of(item: Any, i: int) -> str:
    return str(item) if isinstance(item, str | Path) else f"<{type(item).__name__} {i}>"


def enlarged(picture: np.ndarray) -> np.ndarray:
    scale = max(1, SHOWN_PX // max(picture.shape[:2]))
    return np.ascontiguousarray(picture.repeat(scale, 0).repeat(scale, 1)) if scale > 1 else picture


def map_layers(model: torch.nn.Module, x: torch.Tensor, index: int, settings: ExplainSettings, what: str) -> Layer:
    """The layer `settings` names (or the default one) of `model` for inputs like `x`."""
    layers = find_layers(model, x, lambda out: out[:, index].sum())
    return choose_layer(layers, settings.layer, what)


def explain_images(predictor: Any, items: list[Any], settings: ExplainSettings) -> list[Explanation]:
    """A class-activation map per image, over the centre crop the network saw."""
    method = check_method(settings.method, IMAGE_METHODS, "an image classifier")
    size, crop = predictor.trained.preprocessing.resize_size, predictor.transform.image_size
    model, out, layer = predictor.model, [], None
    for i, item in enumerate(items):
        storage = to_storage(item, size)[None]  # (1, 3, S, S) uint8
        probs = predictor.logits(storage).softmax(1)[0].numpy()
        k = target_index(predictor.classes, probs, settings.target)
        x = predictor.transform(storage.to(predictor.device), None).float()  # (1, 3, s, s) normalised
        layer = layer or map_layers(model, x, k, settings, f"the model {predictor.trained.meta['model']['name']}")
        heat = heat_maps(model, x, [ClassScore(k)], layer, method)[0]  # (s, s)
        seen = center_crop(storage.float(), crop)[0].permute(1, 2, 0).round().byte().numpy()  # (s, s, 3)
        picture = caption(enlarged(overlay(seen, heat)), f"{predictor.classes[k]} {probs[k]:.0%} ({method})")
        out.append(Explanation(name_of(item, i), predictor.classes[k], float(probs[k]), predictor.classes[int(probs.argmax())],
                               method, layer.name, picture, heat=heat))
    return out


def explain_clips(predictor: Any, items: list[Any], settings: ExplainSettings) -> list[Explanation]:
    """A class-activation map per clip over its spectrogram (time across, frequency up; row 0 the lowest mel bin), from
    a layer of the network that reads the spectrogram (the sound model's body). A recording longer than the model's
    clip is explained on the clip it is cut to (its middle), as a single prediction sees it."""
    from deepfit.tasks.classify.sound_model import SoundClassifier

    method = check_method(settings.method, SOUND_METHODS, "a sound classifier")
    model, out, layer = predictor.model, [], None
    if not isinstance(model, SoundClassifier):
        raise ConfigError(f"the sound model {predictor.spec.model} has no network reading a spectrogram to draw a map over "
                          "(a waveform encoder, or features); soundcnn, crnn and image networks on spectrograms are explained")
    # the body's layers are named as in the whole model ("body.features.5"), as --layer and the records name them
    wanted = None if settings.layer is None else "body." + settings.layer.removeprefix("body.")
    for i, item in enumerate(items):
        clip = predictor.clip(item)[None]  # (1, C, T)
        probs = predictor.logits(clip).softmax(1)[0].numpy()
        k = target_index(predictor.classes, probs, settings.target)
        with torch.no_grad():
            picture = model.picture(clip.to(predictor.device)).float()  # (1, C', bins, frames)
        if layer is None:
            found = find_layers(model.body, picture, lambda logits, k=k: logits[:, k].sum())
            layer = choose_layer([replace(f, name=f"body.{f.name}") for f in found], wanted, "the sound network")
        module = model.body.get_submodule(layer.name.removeprefix("body."))
        heat = heat_maps(model.body, picture, [ClassScore(k)], layer, method, module=module)[0]  # (bins, frames)
        drawn = spectrogram_picture(picture[0].mean(0).cpu().numpy(), heat)
        drawn = caption(_band_above(drawn), f"{predictor.classes[k]} {probs[k]:.0%} ({method})")
        out.append(Explanation(name_of(item, i), predictor.classes[k], float(probs[k]), predictor.classes[int(probs.argmax())],
                               method, layer.name, drawn, heat=heat))
    return out


def _band_above(picture: np.ndarray) -> np.ndarray:
    """The picture under a white band for its caption, which would otherwise hide the highest frequencies."""
    height, width = picture.shape[:2]
    band = 0
    for _ in range(3):  # `caption`'s band: 1.5 times a font of 1/18 of the shorter side, which the band lengthens
        band = round(max(10, round(min(width, height + band) / 18)) * 1.5)
    return np.pad(picture, ((band, 0), (0, 0), (0, 0)), constant_values=255)


def explain_texts(predictor: Any, items: list[str | Path], settings: ExplainSettings) -> list[Explanation]:
    """A score per token: how much the class's logit falls without it (occlusion), or its integrated gradient. A string
    is a text; a Path a file whose every non-empty line (or every row of a table) is one, as `predict` reads them."""
    from deepfit.tasks.classify.text import text_inputs
    from deepfit.tasks.classify.text_explain import ngram_scores, token_scores

    method = check_method(settings.method, TEXT_METHODS, "a text classifier")
    out = []
    if any(isinstance(item, str) and not item.strip() for item in items):
        raise ConfigError("an empty text has nothing to explain")
    for source, text in text_inputs(items):
        probs = predictor.predict_proba([text])[0]
        k = target_index(predictor.classes, probs, settings.target)
        if predictor.ngrams is not None:
            if method != "occlusion":
                raise ConfigError(f"--method {method}: a TF-IDF model is explained by occlusion of its n-grams")
            tokens, layer = ngram_scores(predictor, text, k), "n-grams"
        else:
            tokens, layer = token_scores(predictor, text, k, method)
        title = f"{predictor.classes[k]} {probs[k]:.0%} ({method}: red for the class, blue against)"
        out.append(Explanation(source, predictor.classes[k], float(probs[k]),
                               predictor.classes[int(probs.argmax())], method, layer, token_picture(tokens, title),
                               tokens=tokens))
    return out

