"""What EmoAsst's two text-guided heads share (docs/papers.md#emoasst): a trainable encoder that maps an
item's cached features to one ``D``-wide feature, trained against CLIP text features of the item.

Text targets (``text`` in the config):

- ``"utterance"``: the CLIP text feature of the item's utterance (its first caption), the papers'
  plain rows. Items without text are refused by name.
- ``"prompts"``: one of the six formats of :mod:`emo.heads.layers.utterance_prompts`, drawn per item at
  every step among those whose fields the item has, the "+prompt" rows.

Targets are embedded by the frozen text tower of the cache's ``clip`` feature set (the CLIP that made
the frames), for the train items only and only inside ``fit``: labels reach the loss, never the
feature. Scores (the run's own metrics) are zero-shot: ``logit_scale · cos(f, w_c)`` with ``w_c`` the
mean of the unit embeddings of class ``c``'s label-only prompts (formats ``class_formats``),
renormalised. The papers evaluate the features with a linear probe (``emo heads probe``) and the
cache classifier (``emo heads cache-classifier``); both read the features through :meth:`embed`.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emo.cache.data import FeatureData

from .layers.clip_text import clip_text_of, encode_texts
from .layers.similarity import dot_logits
from .layers.utterance_prompts import CLASS_FORMATS, FORMATS, class_prompts, item_prompts
from .registry import LogFn
from .train import TorchHead, TrainConfig

__all__ = ["TextGuidedConfig", "TextGuidedHead", "TextGuidedModel", "TextTargets", "text_targets", "class_text_weights"]


@dataclass
class TextGuidedConfig(TrainConfig):
    """EmoAsst's optimisation (AdamW, weight decay 0.01, batch 128, 200 epochs) and text guidance."""

    epochs: int = 200  # the paper's 200 epochs
    batch_size: int = 128  # items per step (and contrastive batch)
    optimizer: Literal["adam", "adamw"] = "adamw"  # the paper's AdamW
    weight_decay: float = 0.01  # the paper's decoupled decay
    text: Literal["utterance", "prompts"] = "utterance"  # target: the utterance, or one of six prompt formats per item
    class_formats: list[int] = field(default_factory=lambda: list(CLASS_FORMATS))  # zero-shot class prompts
    logit_scale: float = 100.0  # zero-shot scores
    heads: int = 8  # attention heads of the transformer layers
    ffn: int = 2048  # feed-forward width of the transformer layers
    dropout: float = 0.1  # dropout in the transformer layers
    text_checkpoint: str | None = None  # CLIP weights file, when the clip features came from --checkpoint elsewhere

    def __post_init__(self):
        class_prompts(["x"], self.class_formats)  # validates the formats
        if self.logit_scale <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("logit_scale must be > 0 and dropout in [0, 1)")


@dataclass
class TextTargets:
    """Text features of items: ``emb [n, K, D]`` (K = 1 utterance, or the 6 formats) with ``valid [n, K]``."""

    rows: dict[str, int]
    emb: torch.Tensor
    valid: torch.Tensor

    def draw(self, ids: list[str], generator: torch.Generator) -> torch.Tensor:
        """``[B, D]``: for each item one valid target, uniformly at random."""
        r = torch.tensor([self.rows[i] for i in ids], dtype=torch.long)
        pick = torch.multinomial(self.valid[r].float(), 1, generator=generator)[:, 0]  # [B]
        return self.emb[r, pick]


def text_targets(data: FeatureData, mode: str, tower, tokenize, device="cpu") -> tuple[TextTargets, dict]:
    """The text targets of ``data``'s items and a record for the log (counts, truncations)."""
    if len(data.texts) != len(data) or len(data.speakers) != len(data):
        raise ValueError("these features carry no manifest text/speakers (load them with emo.cache.loader.load_features)")
    if mode == "utterance":
        missing = [i for i, t in zip(data.ids, data.texts, strict=True) if not t or not t[0].strip()]
        if missing:
            raise ValueError(f"{len(missing)} train item(s) have no utterance text (first: {missing[0]!r}); "
                             "--text utterance needs the manifest's text")
        strings = [t[0].strip() for t in data.texts]
        emb, truncated = encode_texts(tower, tokenize, strings, device)
        valid = torch.ones(len(data), 1, dtype=torch.bool)
        emb = emb[:, None]  # [n, 1, D]
    elif mode == "prompts":
        labels = data.labels.tolist()
        if any(y < 0 for y in labels):
            raise ValueError("prompt targets need a label for every train item")
        table = [item_prompts(data.classes[y], t[0] if t else None, s)
                 for y, t, s in zip(labels, data.texts, data.speakers, strict=True)]  # [n][6]
        valid = torch.tensor([[p is not None for p in row] for row in table], dtype=torch.bool)  # [n, 6]
        flat = [p for row in table for p in row if p is not None]
        enc, truncated = encode_texts(tower, tokenize, flat, device)  # [valid.sum(), D]
        emb = torch.zeros(len(data), len(FORMATS), enc.shape[-1] if len(enc) else tower.embed_dim)
        emb[valid] = enc
    else:
        raise ValueError(f"text must be utterance or prompts, got {mode!r}")
    record = {"step": "text_targets", "text": mode, "items": len(data), "targets": int(valid.sum()),
              "per_format": valid.sum(0).tolist(), "full_context": truncated}
    return TextTargets({i: k for k, i in enumerate(data.ids)}, emb, valid), record


def class_text_weights(tower, tokenize, classes: list[str], formats: list[int], device="cpu") -> torch.Tensor:
    """``[C, D]`` unit class weights: mean of the unit embeddings of each class's prompts, renormalised."""
    prompts = class_prompts(classes, formats)  # [C][F]
    emb, _ = encode_texts(tower, tokenize, [p for row in prompts for p in row], device)
    emb = F.normalize(emb.view(len(classes), len(formats), -1), dim=-1)  # [C, F, D]
    return F.normalize(emb.mean(dim=1), dim=-1)


class TextGuidedModel(nn.Module):
    """The trainable ``encoder`` and the frozen class weights (a non-persistent buffer, rebuilt)."""

    def __init__(self, encoder: nn.Module, class_weights: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("class_weights", class_weights, persistent=False)  # [C, D]

    def forward(self, **inputs) -> torch.Tensor:
        return self.encoder(**inputs)  # [B, D]


class TextGuidedHead(TorchHead):
    """A :class:`TorchHead` whose module maps feature inputs to ``[B, D]``, trained against text."""

    def __init__(self, config, classes):
        super().__init__(config, classes)
        self._targets: TextTargets | None = None  # set during fit only

    @abstractmethod
    def build_encoder(self, data: FeatureData, text_dim: int, query_text: torch.Tensor) -> nn.Module:
        """The trainable encoder; ``query_text [C, D]``: format-1 class prompt embeddings (not normalised)."""

    @abstractmethod
    def feature_inputs(self, data: FeatureData, idx: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        """Keyword inputs of the encoder for items ``idx`` (train=True samples frames / crops)."""

    @abstractmethod
    def random_sampling(self, data: FeatureData) -> bool:
        """Whether training-time sampling of ``data`` can differ between passes (else one pass is enough)."""

    @abstractmethod
    def text_loss(self, feature: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The contrastive loss of features ``[B, D]`` against their text targets ``[B, D]``."""

    def build_module(self, data: FeatureData) -> nn.Module:
        cfg = self.config
        self.tower, self.tokenize = clip_text_of(data, "clip/cls", cfg.text_checkpoint)
        weights = class_text_weights(self.tower, self.tokenize, self.classes, cfg.class_formats)
        query, _ = encode_texts(self.tower, self.tokenize, [p[0] for p in class_prompts(self.classes, [1])])
        return TextGuidedModel(self.build_encoder(data, weights.shape[1], query), weights)

    def fit(self, train: FeatureData, val: FeatureData | None = None, log: LogFn | None = None) -> None:
        if self.module is None:
            self.prepare(train)
        self._targets, record = text_targets(train, self.config.text, self.tower, self.tokenize, self.device)
        if log is not None:
            log(record)
        try:
            super().fit(train, val, log)
        finally:
            self._targets = None

    def inputs(self, data: FeatureData, idx: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        batch = self.feature_inputs(data, idx, train, generator)
        if train and self._targets is not None:
            batch["text"] = self._targets.draw([data.ids[i] for i in idx], generator)
        return batch

    def loss(self, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        text = batch.pop("text")
        feature = self.module(**batch)  # [B, D]
        loss = self.text_loss(feature.float(), text.float(), labels)
        return loss, {}

    def scores(self, batch: dict) -> torch.Tensor:
        return self.scores_and_features(batch)[0]

    def scores_and_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.normalize(self.module(**batch).float(), dim=-1)  # [B, D], what embed() gives
        return dot_logits(f, self.module.class_weights, self.config.logit_scale), f  # [B, C] float32, [B, D]

    @torch.no_grad()
    def embed(self, data: FeatureData, train_sampling: bool = False, generator: torch.Generator | None = None,
              unit: bool = True) -> np.ndarray:
        """``[n, D]`` unit features (eval sampling; ``train_sampling`` samples frames / crops / views as
        in training, with ``generator``, and keeps dropout off): what probes and cache classifiers read.
        ``unit = False`` gives them as the encoder outputs them (a cache averages views before normalising)."""
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__}: prepare() and fit() or load_state_dict() first")
        self.module.eval()
        gen = generator or torch.Generator().manual_seed(0)
        out = []
        for start in range(0, len(data), self.config.eval_batch_size):
            idx = np.arange(start, min(start + self.config.eval_batch_size, len(data)))
            batch = self._to_device(self.feature_inputs(data, idx, train_sampling, gen))
            with self._autocast():
                f = self.module(**batch).float()
                out.append((F.normalize(f, dim=-1) if unit else f).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.module.class_weights.shape[1]), np.float32)
