"""Classification on the text modality: what the classify task does differently when its inputs are texts.

The task (task.py) splits, trains, evaluates and predicts as for images; here are the text parts: the tokenizer
trained on the training split (modalities/text/tokenizer.py), token-id stores with dynamic padding and length buckets
(modalities/text/store.py), the networks (text_model.py), the split saved with the texts themselves, and prediction
from strings. A checkpoint's sidecar keeps `text` (the network, the tokenizer as JSON, the maximum length), so a
trained model takes raw strings and needs nothing else.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.config import MODALITY_DEFAULTS, TrainConfig
from deepfit.data.catalog import SPLIT_ORDER, Catalog, LabeledText
from deepfit.deploy.agreement import logit_accepted, logit_agreement
from deepfit.deploy.graph import Graph
from deepfit.engine.device import autocast
from deepfit.errors import ConfigError, DataError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.modalities.text import TEXT
from deepfit.modalities.text.io import TABLE_SUFFIXES, is_text_data, read_table_texts, read_texts
from deepfit.modalities.text.ngrams import TFIDF, TfidfWeights, dense_batches, ngram_counts
from deepfit.modalities.text.store import TextStore
from deepfit.modalities.text.tokenizer import encode, from_json, train_tokenizer
from deepfit.models.factory import ModelSpec, build_feature_classifier
from deepfit.models.features import FeatureExtractor
from deepfit.models.hub import encoder_source, is_hf
from deepfit.models.text_encoders import (
    SentenceEncoder,
    TextEncoderClassifier,
    build_text_encoder,
    load_text_encoder,
    text_encoder_info,
)
from deepfit.report.html import esc
from deepfit.tasks.base import ModelPredictor, Setup
from deepfit.tasks.classify.objective import ClassificationTask
from deepfit.tasks.classify.predict import Prediction, to_prediction
from deepfit.tasks.classify.sound import discover_labelled
from deepfit.tasks.classify.text_model import TEXT_MODELS, TextTransformer, build_text_model

DEFAULT_MAX_LENGTH = 256  # tokens per text: longer texts are cut, and how many were is reported


@dataclass(frozen=True)
class TextSpec:
    """Everything needed to rebuild a text classifier (weights come separately); the sidecar's `text`."""

    model: str
    num_classes: int
    tokenizer: str  # the trained tokenizer, as `tokenizers` JSON
    vocab_size: int
    max_length: int
    model_args: dict[str, Any]
    drop_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def is_text(data: Any, modality: str = "auto") -> bool:
    """Whether DATA (a path or a catalog) is to be read as text: `modality` says so, or, for "auto", its files do."""
    if modality != "auto":
        return modality == "text"
    if isinstance(data, Catalog):
        return bool(data.files) and isinstance(data.files[0], LabeledText)
    return is_text_data(data)


def read_labelled(data: str | Path | Catalog, modality: str = "auto", *, path_column: str | None = None,
                  label_column: str | None = None, label_pattern: str | None = None,
                  text_column: list[str] | None = None, encoding: str | None = None) -> Catalog:
    """The labelled items of DATA, as `deepfit features` and `compare` read them: texts (a table, or .txt folders), or
    sound or image files (`modality`, or "auto": what DATA holds); a `Catalog` is taken as it is."""
    if isinstance(data, Catalog):
        return data
    if is_text(data, modality):
        return read_texts(data, text_column, label_column, encoding)
    return discover_labelled(data, modality, path_column=path_column, label_column=label_column,
                             label_pattern=label_pattern)[0]


def rebuild(meta: dict[str, Any]) -> nn.Module:
    """The network of a checkpoint's sidecar, with random weights (the caller loads them)."""
    spec = TextSpec(**meta["text"])
    if meta["model"]["source"] == "features":  # `deepfit features` on text: an extractor + a classical head
        args = meta["model"]["model_args"]
        inner = args["backbone"]
        if inner["source"] == TFIDF:
            features: nn.Module = TfidfWeights([len(block["terms"]) for block in inner["blocks"]])
        elif inner["source"] == "transformers":
            features = SentenceEncoder(build_text_encoder(inner["config"]), inner["layer"])
        else:  # a trained deepfit text network, cut at a layer
            features = FeatureExtractor(rebuild({"text": inner["text"], "model": inner["model"]}), args["layer"])
        return build_feature_classifier(ModelSpec(**meta["model"]), features)
    if meta["model"]["source"] == "transformers":  # the encoder rebuilt from its stored configuration: no download
        return TextEncoderClassifier(build_text_encoder(meta["model"]["model_args"]["config"]), spec.num_classes, spec.drop_rate)
    return build_text_model(spec.model, spec.num_classes, spec.vocab_size, spec.max_length, spec.model_args, spec.drop_rate)


def encoder_spec(model: str, num_classes: int, max_length: int | None, drop_rate: float = 0.0) -> tuple[TextSpec, Any]:
    """(the TextSpec of a pretrained encoder `hf:NAME_OR_FOLDER`: its own tokenizer, at most `max_length` tokens (default
    256, never more than it has positions for); its TextEncoderInfo), for fine-tuning and for sentence embeddings."""
    info = text_encoder_info(model)
    if max_length and max_length > info.max_positions:
        raise ConfigError(f"{model} reads at most {info.max_positions} tokens a text: --max-length {max_length} is more")
    length = max_length or min(DEFAULT_MAX_LENGTH, info.max_positions)
    return TextSpec(model, num_classes, info.tokenizer.to_str(), info.tokenizer.get_vocab_size(), length, {}, drop_rate), info


def _pretrained_spec(config: TrainConfig, num_classes: int) -> tuple[TextSpec, ModelSpec]:
    """The spec of a run that fine-tunes a pretrained encoder, and the ModelSpec that rebuilds the encoder."""
    if config.weights or config.model_args:
        raise ConfigError(f"{config.model} brings its own weights and architecture: leave out --weights and --model-args")
    spec, info = encoder_spec(config.model, num_classes, config.max_length, config.dropout)
    return spec, ModelSpec("transformers", config.model, num_classes, config.dropout, {"config": info.config})


def encode_texts(tokenizer: Any, texts: list[str], max_length: int, what: str) -> list[list[int]]:
    """Token ids of `texts`; how many were cut to `max_length` is said when any were."""
    ids, cut = encode(tokenizer, texts, max_length)
    if cut:
        logger.info(f"{cut} of {len(texts)} {what} ({cut / max(1, len(texts)):.1%}) are longer than {max_length} tokens "
                    "and were cut (--max-length sets it)")
    return ids


def prepare(config: TrainConfig, classes: list[str], splits: dict[str, list[LabeledText]],
            resumed: dict[str, Any] | None, weight: torch.Tensor | None = None) -> Setup:
    """Tokenizer, stores, network and objective (`weight`: the loss's class weights) of a text classification run."""
    encoder = None  # the ModelSpec of a pretrained encoder
    if resumed is not None:
        spec = TextSpec(**resumed["text"])
        tokenizer = from_json(spec.tokenizer)
        encoder = ModelSpec(**resumed["encoder"]) if "encoder" in resumed else None
    elif is_hf(config.model):
        spec, encoder = _pretrained_spec(config, len(classes))
        tokenizer = from_json(spec.tokenizer)
    else:
        # the tokenizer learns from the training texts alone: nothing of the validation or test texts leaks into it
        tokenizer = train_tokenizer((f.text for f in splits["train"]), config.tokenizer, config.vocab_size)
        model_name = config.model or MODALITY_DEFAULTS["text"]["model"]
        if model_name not in TEXT_MODELS and config.modality == "auto":  # the image default, on data found to be text
            model_name = MODALITY_DEFAULTS["text"]["model"]
            logger.info(f"texts: training deepfit's {model_name} network (--model picks {', '.join(TEXT_MODELS)})")
        spec = TextSpec(model_name, len(classes), tokenizer.to_str(), tokenizer.get_vocab_size(),
                        config.max_length or DEFAULT_MAX_LENGTH, dict(config.model_args), config.dropout)
    index = {c: i for i, c in enumerate(classes)}
    stores = {name: TextStore(encode_texts(tokenizer, [f.text for f in files], spec.max_length, f"{name} texts"),
                              [index[f.label] for f in files], [f.path for f in files])
              for name, files in splits.items() if files}
    own = encoder or ModelSpec("deepfit", spec.model, spec.num_classes, spec.drop_rate, spec.model_args)
    if encoder is not None and resumed is None:
        model = TextEncoderClassifier(load_text_encoder(config.model), len(classes), spec.drop_rate)
        origin = encoder_source(config.model)
    else:  # from scratch, or resumed: the weights come from the checkpoint
        model, origin = rebuild({"text": spec.to_dict(), "model": own.to_dict()}), None
    train = stores["train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
    plain, bucketed = train.padded_tokens(order, config.batch_size), train.padded_tokens(train.arrange_order(order, config.batch_size), config.batch_size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    leaks = cross_split_texts(splits) if resumed is None else []
    pieces = f"its own {spec.vocab_size} tokens" if encoder else f"{spec.vocab_size} {config.tokenizer} tokens"
    return Setup(
        model=model, objective=ClassificationTask(len(classes), config.label_smoothing, weight=weight), train=train, val=stores.get("val"),
        transform=_as_is, eval_transform=_as_is, meta={"text": spec.to_dict(), "model": own.to_dict(), "modality": "text"},
        record={"modality": "text", "model": spec.model, "text": spec.to_dict(), **({"encoder": own.to_dict()} if encoder else {})},
        write=lambda run_dir: write_leaks(leaks, run_dir), pretrained_from=origin,
        summary=(f"model {spec.model} ({params:.2f}M parameters) on {pieces}, at most {spec.max_length} a text; "
                 f"length buckets pad {bucketed:,} tokens an epoch instead of {plain:,}"),
    )


def normalised(text: str) -> str:
    """A text as duplicates are compared: case folded, runs of whitespace made one space."""
    return " ".join(text.casefold().split())


def repeated_texts(files: list[LabeledText]) -> list[list[LabeledText]]:
    """Groups of texts that are the same once case and whitespace are normalised (in the order of `files`)."""
    seen: dict[str, list[LabeledText]] = {}
    for f in files:
        seen.setdefault(normalised(f.text), []).append(f)
    return [group for group in seen.values() if len(group) > 1]


def cross_split_texts(splits: dict[str, list[LabeledText]]) -> list[list[LabeledText]]:
    """Repeated texts that lie in more than one split: a test text also seen in training makes the test score
    optimistic. Each text carries the name of the split it is in."""
    tagged = [replace(f, split=name) for name in sorted(splits, key=lambda n: SPLIT_ORDER.get(n, 9)) for f in splits[name]]
    return [group for group in repeated_texts(tagged) if len({f.split for f in group}) > 1]


def write_leaks(groups: list[list[LabeledText]], run_dir: Path) -> None:
    """duplicates.csv in the run folder (group, split, source, label, text), and a warning that counts them."""
    if not groups:
        return
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "split", "source", "label", "text"])
    for g, group in enumerate(groups, 1):
        writer.writerows([g, f.split, str(f.path), f.label, f.text] for f in group)
    atomic_write_text(run_dir / "duplicates.csv", out.getvalue())
    held = sum(1 for group in groups for f in group if f.split != "train")
    logger.warning(f"{len(groups)} texts (same words once case and spaces are set aside) are in more than one split, "
                   f"{held} of them held out for validation or test: those scores are optimistic for new texts; "
                   f"they are listed in {run_dir / 'duplicates.csv'} (remove duplicates before splitting to avoid it)")


def _as_is(batch: Any, generator: torch.Generator | None) -> Any:
    """Text batches are fed as the store pads them (no augmentation)."""
    return batch


class TextPredictor(ModelPredictor):
    """A trained text classifier ready for inference: strings (or .txt paths) in."""

    tta = False
    modality = "text"

    def __init__(self, trained: Any, device: str = "auto") -> None:
        super().__init__(trained, device)
        self.classes = trained.classes
        self.spec = TextSpec(**trained.meta["text"])
        # TF-IDF runs count n-grams of their vocabulary; the others read token ids of their tokenizer
        self.ngrams = trained.meta["model"]["model_args"]["backbone"]["blocks"] if self.spec.model == TFIDF else None
        self.tokenizer = from_json(self.spec.tokenizer) if self.ngrams is None else None

    @torch.inference_mode()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.runner is not None:
            inputs = [batch["counts"]] if self.ngrams is not None else self._padded(batch["input_ids"], batch["attention_mask"].long())
            return self.runner(*inputs)[0].float()
        with autocast(self.device, self.precision):
            return self.model({k: v.to(self.device) for k, v in batch.items()}).float().cpu()

    def export_graph(self) -> Graph:
        """Token ids and their mask (from the tokenizer saved beside the file) -> logits; a TF-IDF run takes the counts
        of its n-grams (the vocabulary saved beside) and weighs them inside."""
        axes = {"logits": {0: "batch"}}
        common = {"outputs": ["logits"], "agreement": logit_agreement, "accepts": logit_accepted}
        if self.ngrams is not None:
            return Graph(TextGraph(self.model, counts=True), {"counts": "(B, V) float32 counts of the n-grams of ngrams.json"},
                         dynamic={"counts": {0: "batch"}, **axes}, files={"ngrams.json": json.dumps(self.ngrams)}, **common)
        length = "max_length" if self.fixed_length else "L"
        text = f"(B, {length}) int64, from the tokenizer.json saved beside" + (", padded with 0" if self.fixed_length else "")
        ids_axes = {0: "batch"} if self.fixed_length else {0: "batch", 1: "length"}
        return Graph(TextGraph(self.model, counts=False), {"input_ids": f"token ids {text}", "attention_mask": f"1 for tokens, 0 for padding {text}"},
                     dynamic={"input_ids": ids_axes, "attention_mask": ids_axes, **axes},
                     files={"tokenizer.json": self.spec.tokenizer}, info={"max_length": self.spec.max_length}, **common)

    def graph_inputs(self, sources: list[str]) -> list[tuple[torch.Tensor, ...]]:
        if self.ngrams is not None:
            return [(torch.from_numpy(ngram_counts(self.ngrams, [t]).toarray()),) for t in sources]
        ids = encode(self.tokenizer, list(sources), self.spec.max_length)[0]
        return [self._padded(torch.tensor([i]), torch.ones(1, len(i), dtype=torch.long)) for i in ids]

    @property
    def fixed_length(self) -> bool:
        """torch's attention layers export their reshapes with the traced length written in: a transformer trained
        here is exported for texts padded to its maximum length (the mask keeps the padding out of every result)."""
        return isinstance(self.model, TextTransformer)

    def _padded(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.fixed_length:
            return ids, mask
        pad = self.spec.max_length - ids.shape[1]
        return nn.functional.pad(ids, (0, pad)), nn.functional.pad(mask, (0, pad))

    def predict_proba(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        texts = [TEXT.load(t) for t in ([inputs] if isinstance(inputs, str | Path) else list(inputs))]
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise DataError(f"text {empty[0]} is empty: there is nothing to classify")
        if self.ngrams is not None:
            batches = ({"counts": x} for x in dense_batches(ngram_counts(self.ngrams, texts), batch_size))
        else:
            store = TextStore(encode(self.tokenizer, texts, self.spec.max_length)[0], [0] * len(texts), [Path()] * len(texts))
            batches = (x for x, _, _ in store.batches(batch_size))
        chunks = [self.logits(x).softmax(1) for x in batches]
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict(self, inputs: Any, top_k: int = 3, batch_size: int = 64) -> list[Prediction]:
        items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
        probs = self.predict_proba(items, batch_size)
        return [to_prediction(self.classes, _name(item), p, top_k) for item, p in zip(items, probs, strict=True)]

    def predict_files(self, paths: list[Path | str], top_k: int = 3, batch_size: int = 64, *,
                      text_column: list[str] | None = None, encoding: str = "utf-8") -> tuple[list[Prediction], list]:
        """Every non-empty line of each file is a text to classify (a .txt file of one text per line), every row of a
        CSV/TSV/JSONL table the text of its `text_column` (found by name when not given); a string (not a Path) is a
        text itself."""
        failed: list[tuple[Path, str]] = []
        found = list(text_inputs(paths, text_column, encoding, failed))
        sources, texts = [source for source, _ in found], [text for _, text in found]
        probs = self.predict_proba(texts, batch_size) if texts else np.zeros((0, len(self.classes)))
        return [to_prediction(self.classes, s, p, top_k) for s, p in zip(sources, probs, strict=True)], failed


def text_inputs(items: list[Path | str], text_column: list[str] | None = None, encoding: str = "utf-8",
                failed: list[tuple[Path, str]] | None = None) -> Iterator[tuple[str, str]]:
    """(source, text) of each input, as `predict` and `explain` read them: a string is a text (named by its start); a
    table (CSV/TSV/JSONL) gives the text of each row (its `text_column`, found by name when not given); any other file
    a text per non-empty line ("file:line"). An unreadable file is skipped with a warning and added to `failed` when
    that list is given, else raised."""
    for item in items:
        if isinstance(item, str):
            yield _name(item), item
        elif Path(item).suffix.lower() in TABLE_SUFFIXES:
            yield from read_table_texts(Path(item), text_column, encoding)
        else:
            try:
                lines = TEXT.load(Path(item), encoding).splitlines()
            except DataError as e:
                if failed is None:
                    raise
                logger.warning(f"skipped unreadable text file: {e}")
                failed.append((item, str(e)))
                continue
            yield from ((f"{item}:{n}", line) for n, line in enumerate(lines, 1) if line.strip())


class TextGraph(nn.Module):
    """A text network with tensors for arguments (the ONNX form of its dict batch): (ids, mask) or (counts,)."""

    def __init__(self, model: nn.Module, counts: bool) -> None:
        super().__init__()
        self.model, self.counts = model, counts

    def forward(self, first: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.counts:
            return self.model({"counts": first})
        assert mask is not None
        return self.model({"input_ids": first, "attention_mask": mask != 0})


def _name(item: Any) -> str:
    text = str(item)
    return text if isinstance(item, Path) or len(text) <= 60 else text[:57] + "..."


def score_texts(predictor: TextPredictor, files: list[LabeledText], batch_size: int = 64) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(sources, true class indices, probabilities) of labelled texts."""
    index = {c: i for i, c in enumerate(predictor.classes)}
    probs = predictor.predict_proba([f.text for f in files], batch_size)
    return [f.path for f in files], np.array([index[f.label] for f in files], dtype=np.int64), probs


def text_card(files: list[LabeledText]) -> Any:
    """source -> the HTML of a report card: the text itself, escaped (and cut at 600 characters)."""
    texts = {str(f.path): f.text for f in files}

    def card(source: str) -> str | None:
        text = texts.get(source)
        if text is None:
            return None
        shown = text if len(text) <= 600 else text[:600] + " [...]"
        return f'<div class="text-card" style="white-space:pre-wrap;font-size:0.85em">{esc(shown)}</div>'

    return card


# --- the split, saved with the texts ----------------------------------------------------------------


def save_text_split(splits: dict[str, list[LabeledText]], path: Path) -> None:
    """split.csv of a text run: source, label, split and the text itself, so the run needs its data for nothing else."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", "label", "split", "text"])
    for name in sorted(splits, key=lambda n: SPLIT_ORDER.get(n, 9)):
        writer.writerows([str(f.path), f.label, name, f.text] for f in splits[name])
    atomic_write_text(path, out.getvalue())


def load_text_split(path: Path) -> dict[str, list[LabeledText]]:
    splits: dict[str, list[LabeledText]] = {"train": [], "val": [], "test": []}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            splits.setdefault(row["split"], []).append(LabeledText(Path(row["source"]), row["label"], row["split"], text=row["text"]))
    return splits
