r"""The Python front ends of the classifiers of sound and text: `Learner`s of the classify task whose fit, evaluate
and predict name the options and inputs of their modality (recordings and their rate; strings and text tables).

    clf = deepfit.SoundClassifier("soundcnn").fit("recordings/", label_pattern=r"(?P<label>\d)_\d+\.wav")
    clf = deepfit.TextClassifier("bag").fit("sms_spam.tsv")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepfit.api import Learner, given_options
from deepfit.config import TrainConfig
from deepfit.errors import DeepfitError
from deepfit.modalities.base import is_path_list, names_many
from deepfit.options import TrainOptions, with_options
from deepfit.registry import get_modality
from deepfit.tasks.classify.predict import Prediction

if TYPE_CHECKING:  # PEP 692 and 673 names, for editors and type checkers only (typing has them from Python 3.11)
    from typing_extensions import Self, Unpack


class SoundClassifier(Learner):
    r"""A sound classifier to train (deepfit's `soundcnn` or `crnn`, or an image network on spectrograms, from scratch or
    by transfer learning), evaluate and use. It takes raw samples: the log-mel front end is its first layer.

        clf = SoundClassifier("soundcnn").fit("recordings/", label_pattern=r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav")
        clf.predict("clip.wav")                        # Prediction(source, label, probability, top)
        clf.predict((samples, 44100))                  # samples with their rate; a list, a folder or a glob -> a list
    """

    tasks = ("classify",)

    @with_options(TrainConfig, skip=("task", "model"))
    def __init__(self, model: str | None = None, *, task: str | None = None, preset: str | None = None,
                 modality: str = "sound", **options: Unpack[TrainOptions]) -> None:
        if modality not in ("sound", "auto"):  # "auto": a run trained on files found to be sound, read back by load()
            raise DeepfitError(f"modality={modality!r}: SoundClassifier is for sound; use ImageClassifier for images")
        super().__init__(model, task=task, preset=preset, **{**options, "modality": "sound"})

    @with_options(TrainConfig, skip=("task", "modality"))
    def fit(self, data: str | Path, *, path_column: str | None = None, label_column: str | None = None,
            label_pattern: str | None = None, **options: Unpack[TrainOptions]) -> Self:
        """Train on `data`: class folders of recordings, train/val/test folders of them, a CSV/TSV (`path_column`,
        `label_column`), or recordings whose names hold their label (`label_pattern`, with named groups label, group,
        split: a group, e.g. a speaker, is kept in one split). Training options override the classifier's."""
        return super().fit(data, **given_options(path_column=path_column, label_column=label_column, label_pattern=label_pattern),
                           **options)

    def evaluate(self, data: str | Path | None = None, checkpoint: str = "best", *, data_root: str | Path | None = None,
                 path_column: str | None = None, label_column: str | None = None, label_pattern: str | None = None) -> Any:
        """Score the test split (or other labelled recordings `data`, read as `fit` reads them); writes report.html."""
        given = given_options(path_column=path_column, label_column=label_column, label_pattern=label_pattern)
        return super().evaluate(data, checkpoint, data_root=data_root, **given)

    def predict(self, inputs: Any, top_k: int = 3, hop: float | None = None) -> Prediction | list[Prediction]:
        """One input (a sound file, a (samples, sample rate) pair, or a (T,) / (C, T) array or tensor at the model's
        rate) -> one Prediction; a list, a folder or a glob -> a list of them. A file longer than 1.5 clips is labelled
        in windows starting every `hop` seconds (default: half a clip): its prediction is their mean, and the windows
        are in `clf.predictor.timelines`."""
        # imported here: the sound decoders load only when sound is used
        from deepfit.modalities.sound import is_samples_with_rate

        items = get_modality("sound").expand([inputs] if isinstance(inputs, str | Path) else inputs) if is_path_list(inputs) else inputs
        predictions = self.predictor.predict(items, top_k=top_k, hop=hop)
        one = (isinstance(inputs, str | Path) and not names_many(inputs)) or is_samples_with_rate(inputs) or (
            isinstance(inputs, np.ndarray | torch.Tensor) and inputs.ndim <= 2)
        return predictions[0] if one else predictions


class TextClassifier(Learner):
    r"""A text classifier to train (deepfit's `bag`, `rnn` or `transformer`, with a tokenizer learned from the training
    texts, or a pretrained encoder fine-tuned: "hf:NAME_OR_FOLDER"), evaluate and use on strings.

        clf = TextClassifier("bag").fit("sms_spam.tsv")        # a CSV/TSV/JSONL with text and label columns, or folders
        clf.predict("WINNER!! Claim your prize now")           # Prediction(source, label, probability, top)
        clf.predict(["first text", "second text"])             # a list -> a list
    """

    tasks = ("classify",)

    @with_options(TrainConfig, skip=("task", "model"))
    def __init__(self, model: str | None = None, *, task: str | None = None, preset: str | None = None,
                 modality: str = "text", **options: Unpack[TrainOptions]) -> None:
        if modality not in ("text", "auto"):  # "auto": a run trained on data found to be text, read back by load()
            raise DeepfitError(f"modality={modality!r}: TextClassifier is for text; use ImageClassifier for images")
        super().__init__(model, task=task, preset=preset, **{**options, "modality": "text"})

    @with_options(TrainConfig, skip=("task", "modality"))
    def fit(self, data: str | Path, *, text_column: str | list[str] | None = None, label_column: str | None = None,
            encoding: str | None = None, **options: Unpack[TrainOptions]) -> Self:
        """Train on `data`: a CSV/TSV/JSONL file with text and label columns (found by name, or `text_column` (several
        are joined) and `label_column`), optional split column; or class folders of .txt files."""
        columns = [text_column] if isinstance(text_column, str) else text_column
        return super().fit(data, **given_options(text_column=columns, label_column=label_column, encoding=encoding), **options)

    def evaluate(self, data: str | Path | None = None, checkpoint: str = "best", *, data_root: str | Path | None = None,
                 text_column: str | list[str] | None = None, label_column: str | None = None, encoding: str | None = None) -> Any:
        """Score the test split (or other labelled texts `data`, read as `fit` reads them); writes report.html."""
        columns = [text_column] if isinstance(text_column, str) else text_column
        given = given_options(text_column=columns, label_column=label_column, encoding=encoding)
        return super().evaluate(data, checkpoint, data_root=data_root, **given)

    def predict(self, inputs: str | Path | list[str], top_k: int = 3, text_column: str | list[str] | None = None,
                encoding: str | None = None) -> Prediction | list[Prediction]:
        """A string -> one Prediction; a list of strings -> a list of them; a Path to a CSV/TSV/JSONL table -> one
        Prediction per row (its `text_column`, found by name when not given), each named file:line."""
        if isinstance(inputs, Path) and inputs.suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson"):
            columns = [text_column] if isinstance(text_column, str) else text_column
            return self.predictor.predict_files([inputs], top_k=top_k, text_column=columns, encoding=encoding or "utf-8")[0]
        predictions = self.predictor.predict(inputs, top_k=top_k)
        return predictions[0] if isinstance(inputs, str | Path) else predictions

    def predict_proba(self, inputs: str | list[str]) -> np.ndarray:
        """(N, num_classes) probabilities of strings, columns in the order of `classes`."""
        return self.predictor.predict_proba(inputs)
