"""EmotionCLIP's pre-training from the cache (EmotionCLIP, CVPR 2023; docs/papers.md#emotionclip): a temporal encoder over
frozen frame embeddings, trained against the utterance's text embedding with the sentiment-guided
contrastive loss, judged by retrieval, then probed on other datasets.

::

    x  = frames [B, T, D]                       # T = 8 sampled frames (the cache's segments, subsampled)
    v  = mean_t( Enc(x + pos) + x )             # layers.video_transformer, 6 layers; or mean_t x (Table 3)
    t  = text/clip of the utterance             # frozen CLIP text embedding, from the cache's text set
    s  = text/sentiment of the utterance        # frozen sentiment logits (7 emotions)
    L  = SNCE(v, t, s; β)                       # layers.snce; β = 0 is InfoNCE (Table 1's vanilla rows)

What runs where. Subject-aware prompting (SAP) has no parameters and acts at the image encoder's input,
so it is an *extraction* option (``emo extract clip --subject-prompt``): whether a run had it is the
clip feature set's choice, named in the report (``Features:``) and checked by the Table 1 presets
(``expects_subject_prompt``). The image and text towers are frozen here (the cache holds their
outputs); what EmotionCLIP's paper trains end to end, emo trains from the cache: the temporal encoder and
the logit scale. The text side is the cached utterance embedding as it is.

Evaluation is retrieval (``task = "retrieval"``): each item's video against every item's utterance of the
scored part, R@1/5/10 and median rank both ways; a pre-training split (``subtitles:all``) has no test
items, so the run is scored on its ``--val-fraction`` part. ``embed`` returns the unit video embedding
``v``: the features of the linear-probe protocol (``emo heads probe cache/meld --features RUN``), which
transfer to another dataset whose clip set comes from the same encoder (the head is ``class_free``).

Defaults follow the official code (github Xeaver/EmotionCLIP, ``src/options.py``): AdamW with betas
(0.98, 0.9), eps 1e-6, weight decay 0.1, lr 5e-5, batch 128, 25 epochs, cosine decay after a warm-up
(10,000 steps there, about 1.3 of its epochs: emo counts warm-up in epochs, ``warmup_epochs = 1.3``);
8 frames, 6 layers, β = 10 (``loss_reweight_scale``); the logit scale starts at log(1/0.07) and is
capped at 100. An item with several captions is paired with its first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emo.cache.data import FeatureData, segment_array, segment_batch, take_items

from .layers.similarity import cosine_logits
from .layers.snce import DEFAULT_BETA, log_scale_parameter, snce_loss
from .layers.video_transformer import VideoTransformer
from .metrics import retrieval_metrics
from .registry import register_head
from .train import TorchHead, TrainConfig

__all__ = ["EmotionCLIPConfig", "EmotionCLIPModel", "EmotionCLIPHead", "PAPER_FEATURES", "first_captions"]

PAPER_FEATURES = ("ViT-B/32 frames with subject-aware prompting (EmotionCLIP trains the towers end to end; "
                  "its frozen-encoder row is Table 3's), utterance text and 7-way sentiment logits, 8 frames")


@dataclass
class EmotionCLIPConfig(TrainConfig):
    """EmotionCLIP's temporal encoder and SNCE with the official code's defaults (module doc)."""

    feature: str = "clip/cls"  # frame embeddings the temporal encoder reads
    text: str = "text/clip"  # the utterance's frozen CLIP text embedding (first caption)
    sentiment: str = "text/sentiment"  # the utterance's sentiment logits (first caption)
    frames: int = 8  # frames per clip: the cache's segments subsampled evenly to this many (0 = all; fewer: all)
    pooling: Literal["transformer", "mean"] = "transformer"  # mean: Table 3's mean-pooling row
    layers: int = 6  # temporal transformer layers
    heads: int = 8  # attention heads per layer
    ffn: int = 0  # 0: 4 x the embedding width (2048 at 512, the official value)
    dropout: float = 0.1  # dropout in the temporal encoder
    beta: float = DEFAULT_BETA  # SNCE re-weighting strength; 0 = InfoNCE
    expects_subject_prompt: bool | None = None  # a preset's feature-set expectation (None: either)
    epochs: int = 25
    batch_size: int = 128
    lr: float = 5e-5
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.98, 0.9)
    eps: float = 1e-6
    schedule: Literal["constant", "cosine", "step", "linear"] = "cosine"
    warmup_epochs: float = 1.3

    def __post_init__(self):
        if self.frames < 0 or self.layers < 1 or self.heads < 1 or self.ffn < 0:
            raise ValueError("frames and ffn must be >= 0, layers and heads >= 1")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.split("/")[0] for f in (self.feature, self.text, self.sentiment)))

    def embed_modalities(self) -> tuple[str, ...]:
        return (self.feature.split("/")[0],)  # the probe embeds video only

    def label(self) -> str:
        pooling = " (mean pooling)" if self.pooling == "mean" else ""
        return f"EmotionCLIP{pooling} " + (f"SNCE β={self.beta:g}" if self.beta else "InfoNCE")


class EmotionCLIPModel(nn.Module):
    """Frames ``[B, T, D]`` -> the video embedding ``[B, D]`` (not normalised), and the learnable log scale."""

    def __init__(self, dim: int, frames: int, cfg: EmotionCLIPConfig):
        super().__init__()
        self.temporal = VideoTransformer(dim, frames=frames, layers=cfg.layers, heads=cfg.heads,
                                         ffn=cfg.ffn or None, dropout=cfg.dropout, pooling=cfg.pooling)
        self.log_scale = log_scale_parameter()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.temporal(frames)


def first_captions(data: FeatureData, name: str, idx) -> torch.Tensor:
    """``[B, K]`` float32: the first caption's row of the ragged per-item array ``name`` for items ``idx``."""
    if name not in data.arrays:
        raise ValueError(f"features have no array {name!r} (have: {', '.join(sorted(data.arrays))}); "
                         "extract the text set: emo extract text CACHE")
    sub = take_items(data.arrays[name], idx)  # RaggedArray of the B items
    if bool((sub.lengths == 0).any()):
        raise ValueError(f"{name}: an item has no caption")
    return sub.values[sub.offsets[:-1]].float()  # [B, K]


class EmotionCLIPHead(TorchHead):
    """EmotionCLIP's temporal encoder trained with SNCE from cached frames, utterances and sentiments."""

    task = "retrieval"
    class_free = True  # the video embedding never sees a class name
    static_batches = True  # [B, T, D] frames, [B, D] text, [B, 7] sentiment: on CUDA the step is one graph

    def _segments(self, data: FeatureData) -> int:
        """Frames taken per clip: ``frames`` evenly from the cache's M segments, or all M when the cache
        has fewer (a transferred encoder meets another sampling) or ``frames`` is 0."""
        m = segment_array(data, self.config.feature).shape[1]
        return min(self.config.frames, m) if self.config.frames else m

    def build_module(self, data: FeatureData) -> nn.Module:
        cfg = self.config
        x = segment_array(data, cfg.feature)
        # the text set is needed to train, not to embed (a probe on another dataset has none)
        text = first_captions(data, cfg.text, np.arange(min(len(data), 1))) if cfg.text in data.arrays else None
        if text is not None and len(data) and text.shape[-1] != x.shape[-1]:
            raise ValueError(f"{cfg.feature} is {x.shape[-1]}-d but {cfg.text} is {text.shape[-1]}-d: "
                             "the text set must come from the clip set's CLIP (emo extract text)")
        self._check_subject_prompt(data)
        return EmotionCLIPModel(x.shape[-1], cfg.frames or x.shape[1], cfg)

    def _check_subject_prompt(self, data: FeatureData) -> None:
        want = self.config.expects_subject_prompt
        if want is None:
            return
        modality = self.config.feature.split("/")[0]
        sets = {n: m for n, m in data.feature_sets.items() if m.get("modality") == modality}
        for name, meta in sets.items():
            if bool(meta.get("subject_prompt")) != want:
                needs = "with --subject-prompt" if want else "without --subject-prompt"
                raise ValueError(f"this preset expects {modality} features extracted {needs}; {name} was not "
                                 "(choose the feature set with --features, or drop the preset)")

    def inputs(self, data: FeatureData, idx: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        cfg = self.config
        return {
            "frames": segment_batch(data, cfg.feature, idx, train, generator, self._segments(data)),  # [B, T, D]
            "text": first_captions(data, cfg.text, idx),  # [B, D]
            "sentiment": first_captions(data, cfg.sentiment, idx),  # [B, 7]
        }

    def loss(self, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        video = self.module(batch["frames"])  # [B, D]
        loss = snce_loss(video, batch["text"], batch["sentiment"], self.module.log_scale, self.config.beta)
        return loss, {"logit_scale": self.module.log_scale.detach().exp()}

    def scores(self, batch: dict) -> torch.Tensor:
        """``[B, B]`` cosine similarities of the batch's videos (rows) and utterances (columns)."""
        return cosine_logits(self.module(batch["frames"]), batch["text"])  # float32, autocast off

    @torch.no_grad()
    def _embeddings(self, data: FeatureData, with_text: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.module is None:
            raise RuntimeError("EmotionCLIPHead: prepare() and fit() or load_state_dict() first")
        self.module.eval()
        video, text = [], []
        for start in range(0, len(data), self.config.eval_batch_size):
            idx = np.arange(start, min(start + self.config.eval_batch_size, len(data)))
            frames = segment_batch(data, self.config.feature, idx, False, None, self._segments(data))
            with self._autocast():
                video.append(self.module(self._tensor_to_device(frames)).float().cpu())
            if with_text:
                text.append(first_captions(data, self.config.text, idx))
        dim = self.module.temporal.d_model
        if not video:
            return torch.zeros(0, dim), torch.zeros(0, dim) if with_text else None
        return F.normalize(torch.cat(video), dim=-1), F.normalize(torch.cat(text), dim=-1) if with_text else None

    def retrieval_embeddings(self, data: FeatureData) -> tuple[np.ndarray, np.ndarray]:
        """``(video [n, D], utterance [n, D])``, unit length; item ``i``'s pair on row ``i``."""
        video, text = self._embeddings(data)
        return video.numpy(), text.numpy()

    def embed(self, data: FeatureData) -> np.ndarray:
        """``[n, D]`` unit video embeddings (evaluation sampling): the linear-probe features."""
        return self._embeddings(data, with_text=False)[0].numpy()

    def validate(self, val: FeatureData) -> dict[str, float]:
        """Retrieval on the validation part (``r1`` = mean of both R@1, the default ``val_metric``) and
        the SNCE loss of the whole part as one batch (same β)."""
        video, text = self._embeddings(val)
        m = retrieval_metrics(video.numpy(), text.numpy())
        sentiment = first_captions(val, self.config.sentiment, np.arange(len(val)))
        with torch.no_grad():
            scale = self.module.log_scale.detach().cpu()
            loss = float(snce_loss(video, text, sentiment, scale, self.config.beta))
        return {"r1": m["r1"], "v2t_r1": m["v2t_r1"], "t2v_r1": m["t2v_r1"], "loss": loss}


register_head(
    "emotionclip",
    EmotionCLIPConfig,
    EmotionCLIPHead,
    "EmotionCLIP: temporal transformer over frames, SNCE against utterance text + sentiment; retrieval, then probes",
    paper_features=PAPER_FEATURES,
)
