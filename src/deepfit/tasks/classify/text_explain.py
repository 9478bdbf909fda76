"""A score per token of a text, by captum's attribution methods (not written again here).

- occlusion: captum's FeatureAblation with each token replaced by padding (and masked out): the fall of the class's
  logit without it. Works for every text network, the bag of n-grams included; a TF-IDF model's n-grams are removed
  from its counts one at a time instead.
- integrated gradients: captum's LayerIntegratedGradients on the token embeddings, from the padding embedding to each
  token's (32 steps); for networks with one embedding per token (rnn, transformer, a pretrained encoder).

Special tokens ([CLS], [SEP]) are never removed (their baseline is themselves) and are not shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.errors import ConfigError
from deepfit.modalities.text.ngrams import ngram_counts
from deepfit.modalities.text.tokenizer import UNK

PAD_ID = 0  # deepfit's tokenizers and BERT-style ones put their padding token first (RoBERTa's says otherwise)
IG_STEPS = 32
MAX_NGRAMS_SHOWN = 40


def _embedding(model: nn.Module) -> nn.Module | None:
    """The module that gives each token its vector, or None (the bag of n-grams averages them in one step)."""
    embed = getattr(model, "embed", None)
    if isinstance(embed, nn.Embedding):
        return embed
    encoder = getattr(embed, "encoder", None)
    return encoder.get_input_embeddings() if encoder is not None and hasattr(encoder, "get_input_embeddings") else None


def _pad_id(predictor: Any) -> int:
    """The id of the padding token: a pretrained encoder's own (its configuration's), else PAD_ID. Integrated gradients
    start from its embedding, and occlusion masks it out."""
    config = (predictor.trained.meta["model"].get("model_args") or {}).get("config") or {}
    pad = config.get("pad_token_id")
    return pad if isinstance(pad, int) else PAD_ID


def token_scores(predictor: Any, text: str, index: int, method: str) -> tuple[list[tuple[str, float]], str]:
    """[(token as written in the text, score)] for class `index`, and the name of what was attributed."""
    from captum.attr import FeatureAblation, LayerIntegratedGradients

    tokenizer = predictor.tokenizer
    tokenizer.enable_truncation(predictor.spec.max_length)
    try:
        encoding = tokenizer.encode(text)
    finally:
        tokenizer.no_truncation()
    ids = torch.tensor([encoding.ids or [tokenizer.token_to_id(UNK) or 0]], device=predictor.device)  # (1, L)
    special = torch.tensor([[bool(m) for m in encoding.special_tokens_mask] or [False]], device=predictor.device)
    pad = _pad_id(predictor)
    baseline = torch.where(special, ids, torch.full_like(ids, pad))  # specials stay; every other token -> padding
    model = predictor.model.float().eval()

    def logits(batch_ids: torch.Tensor) -> torch.Tensor:  # (N, L) -> (N, classes)
        return model({"input_ids": batch_ids, "attention_mask": (batch_ids != pad) | special})

    if method == "occlusion":
        with torch.no_grad():
            scores = FeatureAblation(logits).attribute(ids, baselines=baseline, target=index, perturbations_per_eval=32)
        layer = "tokens"
    else:
        embedding = _embedding(model)
        if embedding is None:
            raise ConfigError(f"--method {method}: the {predictor.spec.model} network has no embedding per token; "
                              "use --method occlusion")
        ig = LayerIntegratedGradients(lambda x: model({"input_ids": x, "attention_mask": torch.ones_like(x, dtype=torch.bool)}),
                                      embedding)
        scores = ig.attribute(ids, baselines=baseline, target=index, n_steps=IG_STEPS, internal_batch_size=IG_STEPS).sum(-1)
        layer = next(n for n, m in model.named_modules() if m is embedding)
    values = scores[0].detach().float().cpu().numpy()
    shown = [(text[a:b] if b > a else encoding.tokens[i], float(values[i]))
             for i, (a, b) in enumerate(encoding.offsets) if not encoding.special_tokens_mask[i]]
    return shown or [(text, float(values.sum()))], layer


def ngram_scores(predictor: Any, text: str, index: int) -> list[tuple[str, float]]:
    """[(n-gram, score)] of the TF-IDF model's n-grams found in `text`: the fall of the class's logit without each,
    in the order they first appear in the text (the strongest MAX_NGRAMS_SHOWN of them)."""
    from captum.attr import FeatureAblation

    counts = ngram_counts(predictor.ngrams, [text])
    present = counts.indices  # the columns found in the text
    if not len(present):
        return [(text, 0.0)]
    terms = [t for block in predictor.ngrams for t in block["terms"]]
    dense = torch.from_numpy(counts.toarray()).to(predictor.device)  # (1, V)
    groups = torch.full_like(dense, len(present), dtype=torch.long)  # every absent column in one group: removes nothing
    groups[0, torch.as_tensor(present, device=dense.device)] = torch.arange(len(present), device=dense.device)
    model = predictor.model.float().eval()
    with torch.no_grad():
        scores = FeatureAblation(lambda c: model({"counts": c})).attribute(dense, target=index, feature_mask=groups,
                                                                            perturbations_per_eval=64)
    values = scores[0, torch.as_tensor(present, device=dense.device)].cpu().numpy()
    strongest = set(np.argsort(-np.abs(values))[:MAX_NGRAMS_SHOWN].tolist())
    lowered = text.lower()
    found = [(terms[c], float(v)) for i, (c, v) in enumerate(zip(present, values, strict=True)) if i in strongest]
    return sorted(found, key=lambda tv: (lowered.find(tv[0]) if tv[0] in lowered else len(lowered), tv[0]))
