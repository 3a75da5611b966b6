"""EmoAsst's visual fusion module (EmoAsst paper §3.2; docs/papers.md#emoasst), trained from cached CLIP frame embeddings.

::

    z      = frames [B, T, D]                      # T = 24 sampled frames (the cache's segments)
    mem    = TransformerEncoder_1(z)               # one layer, width D = 512, FFN 2048: a per-frame adapter
    q_c    = CLIP_text("A {e_c} video.") + e_c     # C fixed class-prompt features + a trainable embedding
    h      = TransformerDecoder_2(q, mem)          # [B, C, D], two layers, the queries attend to the frames
    f_v    = mean_c h_c                            # [B, D], the video feature

The queries are the same at train and test time, so no label enters ``f_v``. Trained with CLIP's
symmetric contrastive loss (logit scale 100) against the text feature of the item's utterance
(``text = utterance``) or of one of six prompt formats drawn per item (``text = prompts``). With D = 512
and 7 classes the module has 11,564,032 trainable parameters (the paper: 11.56 M).

emo's choices where the paper is silent (recorded): PyTorch's post-norm transformer layers with ReLU and
dropout 0.1; the trainable query embedding starts at N(0, 0.02²), so training starts from the prompts;
the decoder's C outputs are averaged into ``f_v``; frames are fed as cached (no positional encoding:
the fusion module extracts consistent expressions, not temporal order, the EmoAsst paper's §3.2.1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from emo.cache.data import FeatureData, segment_array, segment_batch

from .layers.contrastive import clip_contrastive_loss
from .registry import register_head
from .text_guided import TextGuidedConfig, TextGuidedHead

__all__ = ["VFMConfig", "VisualFusionModule", "VFMHead", "PAPER_FEATURES"]

PAPER_FEATURES = "the EmotionCLIP checkpoint's image tower (ViT-B/32, ImageNet mean/std), 24 frames per clip"


@dataclass
class VFMConfig(TextGuidedConfig):
    """The paper's VFM: lr 1e-3, AdamW (wd 0.01), batch 128, 200 epochs, 24 frames."""

    feature: str = "clip/cls"  # frame embeddings the VFM reads
    lr: float = 1e-3  # the paper's VFM learning rate
    frames: int = 0  # 0: every segment of the cache (the preset extracts 24); else subsample evenly to this many
    encoder_layers: int = 1  # transformer encoder layers over the frames
    decoder_layers: int = 2  # decoder layers whose queries are the class-text features

    def __post_init__(self):
        super().__post_init__()
        if self.frames < 0 or self.encoder_layers < 0 or self.decoder_layers < 1:
            raise ValueError("frames and encoder_layers must be >= 0, decoder_layers >= 1")

    def modalities(self) -> tuple[str, ...]:
        return (self.feature.split("/")[0],)

    def label(self) -> str:
        return "VFM + prompt" if self.text == "prompts" else "VFM"


class VisualFusionModule(nn.Module):
    """``forward(z [B, T, D]) -> f_v [B, D]``; ``prompt_queries [C, D]`` are fixed (a non-persistent buffer)."""

    def __init__(self, prompt_queries: torch.Tensor, heads: int, ffn: int, encoder_layers: int,
                 decoder_layers: int, dropout: float):
        super().__init__()
        n_cls, dim = prompt_queries.shape
        enc = nn.TransformerEncoderLayer(dim, heads, ffn, dropout, batch_first=True)
        self.encoder = (nn.TransformerEncoder(enc, encoder_layers, enable_nested_tensor=False)
                        if encoder_layers else nn.Identity())
        dec = nn.TransformerDecoderLayer(dim, heads, ffn, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(dec, decoder_layers)
        self.query_embed = nn.Parameter(0.02 * torch.randn(n_cls, dim))  # [C, D], trainable
        self.register_buffer("prompt_queries", prompt_queries.clone(), persistent=False)  # [C, D], frozen

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        mem = self.encoder(z)  # [B, T, D]
        q = (self.prompt_queries + self.query_embed).expand(len(z), -1, -1)  # [B, C, D]
        return self.decoder(q, mem).mean(dim=1)  # [B, D]


class VFMHead(TextGuidedHead):
    """The visual fusion module trained by the shared loop (zero-shot scores for the run's metrics)."""

    static_batches = True  # [B, frames, D] frames and [B, D] text targets: the step can be a CUDA graph

    def build_encoder(self, data: FeatureData, text_dim: int, query_text: torch.Tensor) -> nn.Module:
        cfg = self.config
        x = segment_array(data, cfg.feature, cfg.frames)  # [n, M, N, V, D]
        if x.shape[-1] != text_dim:
            raise ValueError(f"frame features are {x.shape[-1]} wide, the CLIP text features {text_dim}: "
                             "the VFM needs both from one CLIP")
        return VisualFusionModule(query_text, cfg.heads, cfg.ffn, cfg.encoder_layers, cfg.decoder_layers, cfg.dropout)

    def feature_inputs(self, data: FeatureData, idx: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        return {"z": segment_batch(data, self.config.feature, idx, train, generator, self.config.frames)}  # [B, T, D]

    def random_sampling(self, data: FeatureData) -> bool:
        n_frames, n_views = data.arrays[self.config.feature].shape[2:4]
        return n_frames > 1 or n_views > 1  # a random frame per segment, a random view per item

    def text_loss(self, feature: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return clip_contrastive_loss(feature, text, self.config.logit_scale)


register_head(
    "vfm",
    VFMConfig,
    VFMHead,
    "EmoAsst visual fusion module: frame adapter + decoder with class-prompt queries, CLIP contrastive loss",
    paper_features=PAPER_FEATURES,
)
