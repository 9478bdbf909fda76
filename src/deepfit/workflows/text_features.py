"""Feature extraction on text: what turns each text into a vector for `deepfit features` and `deepfit compare`.

    --model tfidf (or handmade)   TF-IDF of word and character n-grams (modalities/text/ngrams.py), fitted on the
                                  training texts: the classical baseline, with a linear SVM or logistic regression
    --model hf:NAME_OR_FOLDER     sentence embeddings of a pretrained transformers encoder: the mean of its last states
                                  over the real tokens (masked mean pooling), or of layer N's (`--layer N`)
    --model RUN_FOLDER            a trained deepfit text network, cut at `--layer` (default: the embedding its
                                  classifier sees)

Embeddings are cached as image features are (workflows/extraction.py `FeatureCache`), one vector per text *content*.
TF-IDF rows are sparse and cheap to compute, so they are neither cached nor made dense. Every extractor takes
strings, so the run that `deepfit features` saves predicts from raw text with nothing else.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from deepfit.config import FeaturesConfig
from deepfit.data.catalog import LabeledText
from deepfit.engine.device import autocast, resolve_precision
from deepfit.errors import ConfigError
from deepfit.log import logger
from deepfit.modalities.text.ngrams import TFIDF, fit_ngrams, tfidf_matrix, tfidf_module
from deepfit.modalities.text.store import TextStore
from deepfit.modalities.text.tokenizer import encode
from deepfit.models.features import PRE_LOGITS, FeatureExtractor
from deepfit.models.hub import hf_weights_identity, is_hf
from deepfit.models.text_encoders import (
    SentenceEncoder,
    load_text_encoder,
)
from deepfit.runs.folder import resolve_checkpoint
from deepfit.tasks.classify.model import load_trained
from deepfit.tasks.classify.text import TextSpec, encoder_spec, from_json
from deepfit.workflows.classical import fit_classifier, head_probabilities
from deepfit.workflows.extraction import (
    HANDMADE,
    Backbone,
    FeatureCache,
    FeatureSet,
    check_handmade_options,
    weights_identity,
)

TFIDF_NAMES = (TFIDF, HANDMADE)


def text_backbone(config: FeaturesConfig, num_classes: int, train: list[LabeledText]) -> Backbone:
    """The feature extractor `config.model` names, for text; `train`: the training split, on which alone TF-IDF's
    vocabulary and weights are fitted."""
    if config.model in TFIDF_NAMES:
        check_handmade_options(config)
        if config.max_length:
            raise ConfigError("TF-IDF counts every n-gram of a text, whatever its length: leave out --max-length")
        vocabulary = fit_ngrams([f.text for f in train])
        logger.info(f"TF-IDF vocabulary of the {len(train)} training texts: {vocabulary.sizes[0]:,} words and word pairs, "
                    f"{vocabulary.sizes[1]:,} character n-grams")
        spec = TextSpec(TFIDF, num_classes, "", sum(vocabulary.sizes), 0, {})
        return Backbone(tfidf_module(vocabulary), vocabulary.to_spec(), PRE_LOGITS, None, None, {}, text=spec.to_dict(),
                        vocabulary=vocabulary)
    if is_hf(config.model):
        return _encoder_backbone(config, num_classes)
    if Path(config.model).exists():
        return _run_backbone(config, num_classes)
    raise ConfigError(f"{config.model!r} gives no text features: use --model tfidf (the classical baseline), "
                      "hf:NAME_OR_FOLDER (a pretrained transformers encoder) or a trained text run's folder")


def _layer(config: FeaturesConfig, depth: int) -> int | None:
    if config.layer in (None, PRE_LOGITS):
        return None
    if not config.layer.isdigit():
        raise ConfigError(f"--layer {config.layer}: a text encoder's layers are numbered, 0 (its embeddings) to {depth}")
    return int(config.layer)


def _encoder_backbone(config: FeaturesConfig, num_classes: int) -> Backbone:
    if config.weights or config.pretrained or config.model_args:
        raise ConfigError(f"{config.model} brings its own weights: leave out --weights, --pretrained and --model-args")
    spec, info = encoder_spec(config.model, num_classes, config.max_length)
    layer = _layer(config, int(info.config["num_hidden_layers"]))
    module = SentenceEncoder(load_text_encoder(config.model), layer)
    name = PRE_LOGITS if layer is None else str(layer)
    backbone = {"source": "transformers", "name": config.model, "config": info.config, "layer": layer}
    identity = {"backbone": {"config": info.config, "layer": layer, "max_length": spec.max_length},
                "weights": hf_weights_identity(config.model), "tokenizer": _digest(spec.tokenizer)}
    return Backbone(module, backbone, name, None, config.model.removeprefix("hf:"), identity, text=spec.to_dict())


def _run_backbone(config: FeaturesConfig, num_classes: int) -> Backbone:
    """A trained deepfit text run (its folder or checkpoint) cut at `config.layer`."""
    checkpoint = resolve_checkpoint(config.model, "best")
    trained = load_trained(checkpoint)
    if "text" not in trained.meta or trained.meta["model"]["source"] == "features":
        raise ConfigError(f"{config.model} is not a trained text network: pass a run of `deepfit train` on text, "
                          "hf:NAME_OR_FOLDER or --model tfidf")
    if config.weights or config.pretrained or config.model_args or config.max_length:
        raise ConfigError(f"the network of {config.model} reads texts as it was trained to: leave out --weights, "
                          "--pretrained, --model-args and --max-length")
    extractor = FeatureExtractor(trained.model, config.layer)
    backbone = {"source": "text", "text": trained.meta["text"], "model": trained.meta["model"]}
    identity = {"backbone": backbone, "weights": weights_identity(str(checkpoint), "", ""), "layer": extractor.layer}
    logger.info(f"features of the {trained.meta['text']['model']} trained in {checkpoint.parent} at layer {extractor.layer!r}")
    spec = {**trained.meta["text"], "num_classes": num_classes}
    return Backbone(extractor, backbone, extractor.layer, None, str(checkpoint), identity, text=spec)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def text_feature_set(backbone: Backbone, files: list[LabeledText], classes: list[str], config: FeaturesConfig,
                     device: torch.device) -> FeatureSet:
    """The features of labelled texts: TF-IDF rows (sparse), or embeddings from the cache or computed."""
    texts = [f.text for f in files]
    start = time.perf_counter()
    reused = 0
    if backbone.vocabulary is not None:
        features = tfidf_matrix(backbone.vocabulary, texts)
    else:
        precision = resolve_precision("auto", device)
        cache = FeatureCache({**backbone.identity, "precision": precision}) if config.cache else None
        digests = [_digest(t) for t in texts]
        found = cache.lookup(digests) if cache is not None else {}
        todo = [i for i, d in enumerate(digests) if d not in found]
        reused = len(texts) - len(todo)
        computed = _embed(backbone, [texts[i] for i in todo], device, precision, config.batch_size)
        if cache is not None and todo:
            cache.add([digests[i] for i in todo], computed)
        rows = dict(zip(todo, computed, strict=True))
        features = np.stack([rows[i] if i in rows else found[d] for i, d in enumerate(digests)]).astype(np.float32)
    seconds = time.perf_counter() - start
    logger.info(f"features of {len(texts)} texts: {reused} reused from the cache, {len(texts) - reused} computed in "
                f"{seconds:.1f} s ({features.shape[1]:,} dimensions)")
    index = {c: i for i, c in enumerate(classes)}
    return FeatureSet(features, [f.path for f in files], np.array([index[f.label] for f in files], dtype=np.int64),
                      [f.split or "train" for f in files], classes, backbone.name, backbone.layer, None, [], reused,
                      seconds, text=backbone.text)


@torch.inference_mode()
def _embed(backbone: Backbone, texts: list[str], device: torch.device, precision: str, batch_size: int) -> np.ndarray:
    """(N, D) embeddings of `texts`, in batches of similar length (then put back in order): little padding is run."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    spec = TextSpec(**backbone.text)
    ids, cut = encode(from_json(spec.tokenizer), texts, spec.max_length)
    if cut:
        logger.info(f"{cut} of {len(texts)} texts ({cut / len(texts):.1%}) are longer than {spec.max_length} tokens and "
                    "were cut (--max-length sets it)")
    store = TextStore(ids, [0] * len(ids), [None] * len(ids))
    order = torch.argsort(store.lengths, stable=True)
    module = backbone.module.to(device).eval()
    out = np.zeros((len(texts), 0), dtype=np.float32)
    for batch, _, idx in store.batches(batch_size, order=order):
        with autocast(device, precision):
            vectors = module({k: v.to(device) for k, v in batch.items()}).float().cpu().numpy()
        if not out.shape[1]:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[idx.numpy()] = vectors
    return out


def fraction_scores(config: FeaturesConfig, classes: list[str], subsets: dict[float, list[LabeledText]],
                    test: list[LabeledText], classifier: str, folds: int, seed: int,
                    device: torch.device) -> Iterator[tuple[float, int, np.ndarray, np.ndarray, float]]:
    """For `deepfit compare`: for each nested training fraction, (fraction, training texts, test labels, test
    probabilities, seconds the model took to make). TF-IDF is fitted again on each fraction (its vocabulary and idf
    are learned from the training texts, so the full split must not shape a smaller one's); embeddings are computed
    once a text, the new texts of each fraction timed."""
    index = {c: i for i, c in enumerate(classes)}
    y_test = np.array([index[f.label] for f in test], dtype=np.int64)
    tfidf = config.model in TFIDF_NAMES
    precision = resolve_precision("auto", device)
    if not tfidf:
        backbone = text_backbone(config, len(classes), [])
        x_test = _embed(backbone, [f.text for f in test], device, precision, config.batch_size)
    seen: list[LabeledText] = []  # the training texts embedded so far, in the order of `parts`' rows
    parts, embedding_seconds = [], 0.0
    for frac, files in subsets.items():
        start = time.perf_counter()
        if tfidf:  # fitted on this fraction alone
            backbone = text_backbone(config, len(classes), files)
            x_train, seen = tfidf_matrix(backbone.vocabulary, [f.text for f in files]), files
        else:
            known = {f.path for f in seen}
            new = [f for f in files if f.path not in known]
            if new:  # (a fraction may add no text to the one before it)
                parts.append(_embed(backbone, [f.text for f in new], device, precision, config.batch_size))
                seen = seen + new
            x_train = np.concatenate(parts)
            embedding_seconds += time.perf_counter() - start
            start = time.perf_counter()
        y_train = np.array([index[f.label] for f in seen], dtype=np.int64)
        fitted = fit_classifier(classifier, x_train, y_train, classes, folds=folds, seed=seed)
        seconds = embedding_seconds + time.perf_counter() - start
        if tfidf:  # the test texts in this fraction's vocabulary; scoring is not part of the time, as on images
            x_test = tfidf_matrix(backbone.vocabulary, [f.text for f in test])
        yield frac, len(seen), y_test, head_probabilities(fitted.head, x_test), seconds
