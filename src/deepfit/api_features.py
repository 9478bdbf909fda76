"""The Python API of feature extraction: a network's (or hand-made) features of a labelled data set, and a classical
model fitted on them; what `deepfit features` calls.

    feats = deepfit.extract_features("data/", model="resnet50", pretrained=True)   # (N, D) + paths, labels, splits
    run = deepfit.fit_features("data/", model="resnet50", pretrained=True, classifier="svm")
    deepfit.load(run.run_dir).predict("new_photos/")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepfit.config import FeaturesConfig
from deepfit.options import FeaturesOptions, with_options
from deepfit.workflows.extraction import FeatureSet
from deepfit.workflows.features import FeaturesResult

if TYPE_CHECKING:  # PEP 692 names, for editors and type checkers only (typing has them from Python 3.11)
    from typing_extensions import Unpack


@with_options(FeaturesConfig)
def extract_features(
    data: str | Path, model: str | None = None, *, path_column: str | None = None, label_column: str | None = None,
    label_pattern: str | None = None, text_column: str | list[str] | None = None, encoding: str | None = None,
    **options: Unpack[FeaturesOptions],
) -> FeatureSet:
    """The feature matrix of a labelled data set, as `deepfit features --export` writes it.

    `result.features` is the (N, D) float32 array (`np.asarray(result)` too); `paths`, `labels`
    (indices into `classes`) and `splits` describe its rows; `result.split("train")` gives (X, y).
    Options are those of `deepfit features` (see `FeaturesConfig`): weights, pretrained, layer, ...
    """
    from deepfit.workflows.features import extract_features as extract

    return _with_features_config(extract, data, model, dict(path_column=path_column, label_column=label_column,
                                                           label_pattern=label_pattern, text_column=text_column,
                                                           encoding=encoding), options)


@with_options(FeaturesConfig)
def fit_features(
    data: str | Path, model: str | None = None, *, path_column: str | None = None, label_column: str | None = None,
    label_pattern: str | None = None, text_column: str | list[str] | None = None, encoding: str | None = None,
    **options: Unpack[FeaturesOptions],
) -> FeaturesResult:
    """Features + a classical model (svm, logreg, knn, ridge), scored on the test split: a run folder that
    `deepfit.load()` and `deepfit predict` use like any other. Images, sound or text (`modality`, found from the data by
    default); `label_pattern` reads labels from file names as `deepfit train --label-pattern` does; `text_column` (one
    or several, joined) and `encoding` read a table of texts."""
    from deepfit.workflows.features import fit_features as fit

    return _with_features_config(fit, data, model, dict(path_column=path_column, label_column=label_column,
                                                       label_pattern=label_pattern, text_column=text_column,
                                                       encoding=encoding), options)


def _with_features_config(
    workflow: Any, data: str | Path, model: str | None, discovery: dict[str, Any], options: dict[str, Any]
) -> Any:
    """Validate the options as a FeaturesConfig (a typo suggests the right name), read the data (images, sound or text,
    as `modality` says) and run the workflow."""
    from deepfit.tasks.classify.text import read_labelled

    config = FeaturesConfig.from_dict({"model": model, **options} if model else options)
    if isinstance(discovery.get("text_column"), str):
        discovery["text_column"] = [discovery["text_column"]]
    return workflow(data, config, catalog=read_labelled(data, config.modality, **discovery))
