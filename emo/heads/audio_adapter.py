"""EmoAsst's auditory adapter (EmoAsst paper §3.3; docs/papers.md#emoasst), trained from cached wav2vec 2.0 hidden states.

::

    h   = audio/layer09 [T_a, 768]                 # frozen wav2vec 2.0 after block 9 (SEGUE's checkpoint)
    x   = Linear_768→512(h)                        # projection to CLIP's width
    y   = TransformerEncoder_3(x)                  # three trainable layers, 512 wide, FFN 2048
    f_a = mean over the T_a valid rows of y        # [512], the audio feature

Trained with the supervised contrastive loss (SupCon, τ = 0.07) over the audio features of a batch and
the CLIP text features of their utterances (``text = utterance``) or drawn prompts (``text = prompts``),
positives = same emotion. The three layers have 9,457,152 parameters (the paper: 9.46 M without the
projection). Items of different lengths are padded in a batch and masked in attention and pooling,
so an item's feature does not depend on its batch.

emo's choices where the paper is silent (recorded): post-norm layers with ReLU and dropout 0.1, no
positional encoding (wav2vec 2.0's states carry its convolutional position embedding), masked mean
pooling; ``max_frames`` (off by default) crops long items to a window, random in training and
centred at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from emo.cache.data import FeatureData

from .layers.contrastive import supcon_loss
from .registry import register_head
from .text_guided import TextGuidedConfig, TextGuidedHead

__all__ = ["AudioAdapterConfig", "AuditoryAdapter", "AudioAdapterHead", "audio_batch", "PAPER_FEATURES"]

PAPER_FEATURES = "wav2vec 2.0 base fine-tuned by SEGUE (a local checkpoint), hidden states after layer 9"


@dataclass
class AudioAdapterConfig(TextGuidedConfig):
    """The paper's adapter: layer 9, lr 1e-4, AdamW (wd 0.01), batch 128, 200 epochs, τ = 0.07."""

    layer: int = 9  # wav2vec 2.0 hidden state read (audio/layerKK); the paper's is 9
    lr: float = 1e-4  # the paper's adapter learning rate
    layers: int = 3  # transformer layers after the 768->512 projection
    tau: float = 0.07  # SupCon temperature
    max_frames: int = 0  # 0: whole items; else crop longer items to this many rows (20 ms each)

    def __post_init__(self):
        super().__post_init__()
        if self.layer < 0 or self.layers < 1 or self.tau <= 0 or self.max_frames < 0:
            raise ValueError("layer >= 0, layers >= 1, tau > 0 and max_frames >= 0 are required")

    @property
    def feature(self) -> str:
        return f"audio/layer{self.layer:02d}"

    def modalities(self) -> tuple[str, ...]:
        return ("audio", "clip")  # clip: the CLIP text tower that makes the targets

    def label(self) -> str:
        return "AA + prompt" if self.text == "prompts" else "AA"


class AuditoryAdapter(nn.Module):
    """``forward(x [B, T, H], lengths [B]) -> f_a [B, width]`` (rows past ``lengths`` are ignored)."""

    def __init__(self, in_dim: int, width: int, heads: int, ffn: int, layers: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(in_dim, width)
        layer = nn.TransformerEncoderLayer(width, heads, ffn, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]  # [B, T], True = padding
        y = self.encoder(self.proj(x), src_key_padding_mask=pad)  # [B, T, width]
        keep = (~pad).unsqueeze(-1).to(y.dtype)  # [B, T, 1]
        return (y * keep).sum(dim=1) / lengths.clamp(min=1).unsqueeze(-1).to(y.dtype)  # [B, width]


def audio_batch(arr, idx: np.ndarray, max_frames: int, train: bool, generator: torch.Generator):
    """``(x [B, T, H] float32 zero-padded, lengths [B])`` of items ``idx`` of a ragged audio array; with
    ``max_frames`` longer items are cut to a window (random start in training, centred at evaluation)."""
    items = []
    for i in np.asarray(idx):
        a = arr[int(i)]  # [T_i, H]
        if max_frames and len(a) > max_frames:
            spare = len(a) - max_frames
            start = int(torch.randint(spare + 1, (1,), generator=generator)) if train else spare // 2
            a = a[start : start + max_frames]
        items.append(a)
    lengths = torch.tensor([len(a) for a in items], dtype=torch.long)
    if (lengths == 0).any():
        raise ValueError("an item has no audio rows")
    x = items[0].new_zeros(len(items), int(lengths.max()), items[0].shape[1])
    for k, a in enumerate(items):
        x[k, : len(a)] = a
    return x.float(), lengths


class AudioAdapterHead(TextGuidedHead):
    """The auditory adapter trained by the shared loop (zero-shot scores for the run's metrics)."""

    def build_encoder(self, data: FeatureData, text_dim: int, query_text: torch.Tensor) -> nn.Module:
        cfg = self.config
        if cfg.feature not in data.arrays:
            have = ", ".join(sorted(k for k in data.arrays if k.startswith("audio/"))) or "none"
            raise ValueError(f"features have no {cfg.feature!r} (audio arrays: {have}); extract that layer "
                             f"(emo extract audio --layers {cfg.layer}) or pick another with --layer")
        arr = data.arrays[cfg.feature]
        return AuditoryAdapter(arr.item_shape[-1], text_dim, cfg.heads, cfg.ffn, cfg.layers, cfg.dropout)

    def feature_inputs(self, data: FeatureData, idx: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        x, lengths = audio_batch(data.arrays[self.config.feature], idx, self.config.max_frames, train, generator)
        return {"x": x, "lengths": lengths}

    def random_sampling(self, data: FeatureData) -> bool:
        lengths = data.arrays[self.config.feature].lengths
        return bool(self.config.max_frames and len(lengths) and int(lengths.max()) > self.config.max_frames)

    def text_loss(self, feature: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supcon_loss(torch.cat([feature, text]), torch.cat([labels, labels]), self.config.tau)


register_head(
    "audio-adapter",
    AudioAdapterConfig,
    AudioAdapterHead,
    "EmoAsst auditory adapter: wav2vec 2.0 layer -> 3 transformer layers, SupCon against CLIP text",
    paper_features=PAPER_FEATURES,
)
