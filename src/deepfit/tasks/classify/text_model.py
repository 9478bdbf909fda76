"""Text classifiers from scratch: {"input_ids": (B, L), "attention_mask": (B, L)} in, class logits out.

- `bag`: fastText-style (Joulin et al., 2017): the mean of the embeddings of every token and of every pair of
  neighbouring tokens (hashed into `buckets` rows, so the vocabulary of pairs needs no table), then a linear layer;
  fast and strong when a few words decide the class.
- `rnn`: a bidirectional GRU (or LSTM) over the token embeddings, its states pooled by learned attention.
- `transformer`: a small Transformer encoder (depth, width, heads) with learned positions, masked mean pooling.

Each is designable through `--model-args` (e.g. `dim=128,ngrams=3`, `depth=2,width=128,heads=4`).
"""

from __future__ import annotations

import torch
from torch import nn

from deepfit.errors import ConfigError
from deepfit.models.factory import check_model_args
from deepfit.models.text_encoders import masked_mean

TEXT_MODELS = ("bag", "rnn", "transformer")
Batch = dict[str, torch.Tensor]


class BagOfNgrams(nn.Module):
    def __init__(self, num_classes: int, vocab_size: int, dim: int = 64, ngrams: int = 2, buckets: int = 2**18,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if ngrams < 1:
            raise ConfigError(f"bag: ngrams={ngrams}; use 1 (words alone) or more")
        self.vocab_size, self.ngrams, self.buckets = vocab_size, ngrams, buckets
        self.embed = nn.EmbeddingBag(vocab_size + (buckets if ngrams > 1 else 0), dim, mode="mean")
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes)
        self.num_features = dim

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _grams(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and hashed n-gram ids of every text, flattened with their text of origin: (N,), (N,)."""
        rows = [ids[mask]]
        owners = [torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)[mask]]
        hashed = ids.clone()
        for n in range(2, self.ngrams + 1):
            # a polynomial hash of the n tokens ending here, valid where all n are real tokens
            hashed = hashed[:, :-1] * 1000003 + ids[:, n - 1 :]
            valid = mask[:, n - 1 :] & mask[:, : -n + 1]
            rows.append(self.vocab_size + hashed[valid].remainder(self.buckets))
            owners.append(torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(hashed)[valid])
        return torch.cat(rows), torch.cat(owners)

    def forward_features(self, batch: Batch) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        flat, owner = self._grams(ids, mask)
        if torch.onnx.is_in_onnx_export():
            # ONNX has no stable sort (nor EmbeddingBag's offsets): the same mean as sums and counts per text
            # (index_add's export scatters wrongly: a (B, N) membership matrix does it as a product instead)
            vectors = nn.functional.embedding(flat, self.embed.weight)  # (N, dim)
            member = (owner[None, :] == torch.arange(ids.shape[0], device=ids.device)[:, None]).to(vectors.dtype)  # (B, N)
            return (member @ vectors) / member.sum(1, keepdim=True).clamp(min=1)  # (B, dim); no tokens: zeros, as EmbeddingBag
        order = torch.argsort(owner, stable=True)
        offsets = torch.searchsorted(owner[order], torch.arange(len(ids), device=ids.device))
        return self.embed(flat[order], offsets)  # (B, dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.fc(self.head_drop(self.forward_features(batch)))


class TextRNN(nn.Module):
    def __init__(self, num_classes: int, vocab_size: int, dim: int = 128, hidden: int = 128, rnn: str = "gru",
                 layers: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ConfigError(f"rnn: rnn={rnn!r}; use gru or lstm")
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.rnn = (nn.GRU if rnn == "gru" else nn.LSTM)(dim, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.attention = nn.Linear(2 * hidden, 1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(2 * hidden, num_classes)
        self.num_features = 2 * hidden

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, batch: Batch) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        states, _ = self.rnn(self.embed(ids))  # (B, L, 2 * hidden); padding comes after the text, so it is seen last
        scores = self.attention(states).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, L)
        return (scores.softmax(1)[..., None] * states).sum(1)  # (B, 2 * hidden)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.fc(self.head_drop(self.forward_features(batch)))


class TextTransformer(nn.Module):
    def __init__(self, num_classes: int, vocab_size: int, depth: int = 2, width: int = 128, heads: int = 4,
                 max_length: int = 512, drop_rate: float = 0.0, dropout: float = 0.1) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"transformer: width {width} must be a multiple of heads {heads}")
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.position = nn.Embedding(max_length, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(width, num_classes)
        self.num_features = width

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, batch: Batch) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))[None]  # (B, L, width)
        x = self.encoder(x, src_key_padding_mask=~mask)
        return masked_mean(self.norm(x), mask)  # (B, width)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.fc(self.head_drop(self.forward_features(batch)))


def build_text_model(name: str, num_classes: int, vocab_size: int, max_length: int, model_args: dict,
                     drop_rate: float = 0.0) -> nn.Module:
    classes = {"bag": BagOfNgrams, "rnn": TextRNN, "transformer": TextTransformer}
    if name not in classes:
        raise ConfigError(f"unknown text network {name!r}; deepfit's are {', '.join(TEXT_MODELS)}")
    cls = classes[name]
    args = dict(model_args)
    check_model_args(cls, args, name)
    if cls is TextTransformer:
        args.setdefault("max_length", max_length)
    return cls(num_classes, vocab_size, drop_rate=drop_rate, **args)
