"""Issue 13 item 18: the Python API can be discovered from Python itself: dir(), help(), signatures an editor
completes, typed results, a py.typed marker, and a repr that shows the options."""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
import subprocess
import sys
import typing
from importlib import resources

import numpy as np

import deepfit
from deepfit.api import (
    ImageClassifier,
    Learner,
    ObjectDetector,
    SemanticSegmenter,
)
from deepfit.api_modalities import SoundClassifier, TextClassifier
from deepfit.config import FeaturesConfig, TrainConfig
from deepfit.options import FeaturesOptions, TrainOptions
from deepfit.registry import get_task
from deepfit.tasks.detect.predict import Detections

FRONT_ENDS = (ImageClassifier, SoundClassifier, TextClassifier, ObjectDetector, SemanticSegmenter)


def test_dir_lists_the_api_before_anything_is_imported() -> None:
    code = ("import sys, deepfit; names = dir(deepfit); "
            "assert {'ImageClassifier', 'ObjectDetector', 'SemanticSegmenter', 'load', 'resume', 'TrainConfig'} <= set(names), names; "
            "assert 'torch' not in sys.modules; assert 'importlib' not in names and 'TYPE_CHECKING' not in names")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_help_of_the_package_shows_the_front_ends_and_their_options() -> None:
    text = pydoc.render_doc(deepfit, renderer=pydoc.plaintext)
    for name in ("ImageClassifier", "ObjectDetector", "SemanticSegmenter", "load(", "resume(", "fit_features("):
        assert name in text
    assert "epochs: 'int' = 10" in text and "label_smoothing" in text  # the options, with their defaults


def test_typed_options_are_the_config_fields() -> None:
    """The TypedDicts editors complete are exactly the configs' fields, with the same types (no drift)."""
    def hints(cls: type, skip: str) -> dict[str, object]:
        return {k: v for k, v in typing.get_type_hints(cls).items() if k != skip}

    assert hints(TrainOptions, "") == hints(TrainConfig, "task")
    assert hints(FeaturesOptions, "") == hints(FeaturesConfig, "model")


def test_signatures_list_every_option_with_its_default() -> None:
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for f in dataclasses.fields(TrainConfig)}
    for cls in (Learner, *FRONT_ENDS):
        params = inspect.signature(cls).parameters
        for name, default in defaults.items():
            assert name in params, (cls, name)
            if name not in ("task", "model") and not (cls in (SoundClassifier, TextClassifier) and name == "modality"):  # its own
                assert params[name].default == default and params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    features = inspect.signature(deepfit.fit_features).parameters
    assert all(f.name in features for f in dataclasses.fields(FeaturesConfig))


def test_each_front_end_names_its_tasks_data_and_predict_options() -> None:
    """fit(), evaluate() and predict() of each front-end take its tasks' options by name, with the task's defaults:
    a data option added to a task without its front-end's keyword fails here."""
    for cls in FRONT_ENDS:
        fit = inspect.signature(cls.fit).parameters
        predict = inspect.signature(cls.predict).parameters
        evaluate = inspect.signature(cls.evaluate).parameters
        modality = {SoundClassifier: "sound", TextClassifier: "text"}.get(cls, "image")
        for task in map(get_task, cls.tasks):
            # --hop is for sound, --text-column for text: the front end of another modality need not take them
            data = {o.name for o in task.data_options if o.applies_to(modality)}
            assert data <= set(fit), (cls, task.name)
            assert {name for name in task.evaluate_options if name in data or name not in {o.name for o in task.data_options}} \
                <= set(evaluate), (cls, task.name)
            for option in task.predict_options:
                if option.applies_to(modality):
                    assert predict[option.name].default == option.default, (cls, option.name)
        assert "epochs" in fit and "lr" in fit  # training options override the learner's for a fit


def test_predict_results_are_typed() -> None:
    assert typing.get_type_hints(ObjectDetector.predict)["return"] == Detections | list[Detections]
    assert typing.get_type_hints(SemanticSegmenter.predict)["return"] == np.ndarray | list[np.ndarray]
    assert set(typing.get_type_hints(Detections)) == {"boxes", "labels", "names", "scores", "masks"}
    assert Detections.__required_keys__ == {"boxes", "labels", "names", "scores"}
    assert typing.get_type_hints(ImageClassifier.predict)["return"] == deepfit.Prediction | list[deepfit.Prediction]


def test_the_package_is_marked_as_typed() -> None:
    assert resources.files("deepfit").joinpath("py.typed").is_file()


def test_repr_shows_the_options_that_differ_from_their_defaults() -> None:
    clf = ImageClassifier("cnn", epochs=3, lr=0.01, model_args={"depth": 2})
    assert repr(clf) == "ImageClassifier('cnn', model_args={'depth': 2}, epochs=3, lr=0.01)"
    assert repr(ImageClassifier("cnn")) == "ImageClassifier('cnn')"
    det = ObjectDetector(task="segment-instances", epochs=2)
    assert repr(det) == "ObjectDetector('maskrcnn:tv/mobilenet_v2', task='segment-instances', epochs=2)"
