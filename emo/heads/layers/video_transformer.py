"""EmotionCLIP's temporal encoder (EmotionCLIP paper Sec. 3.2 and Table 3; docs/papers.md#emotionclip): frames -> one video vector.

Over per-frame embeddings ``x [B, T, D]`` (T <= ``frames``)::

    v = mean_t( Enc(x + pos[:T]) + x )                                          [B, D]

``pos [frames, D]`` is a learned position per frame index; ``Enc`` is ``layers`` post-norm transformer
encoder layers (self-attention, ``x = LN1(x + SA(x))``, then ``x = LN2(x + FFN(x))``, GELU) followed
by one final LayerNorm; the residual ``+ x`` goes around the whole encoder (not the positions).

Facts from the official code (github Xeaver/EmotionCLIP, ``src/models/base.py``, ``VisualHead``): torch's
``nn.TransformerEncoderLayer`` with 8 heads, FFN 2048, GELU, torch's defaults otherwise (post-norm,
dropout 0.1), 6 layers, a final ``nn.LayerNorm`` as the encoder's ``norm``, positions an
``nn.Embedding(8, 512)``, ``fusion_layer(x + pos) + x`` and ``mean(dim=1)``; its ``"mean"`` fusion is
the plain mean of ``x`` (Table 3's mean-pooling row). emo builds the same torch modules, so the
official head's weights map by renaming ``frame_position_embedding.weight -> pos`` and
``fusion_layer. -> encoder.``.

Init: torch's defaults, as in the official code: attention in-projection Xavier-uniform, attention
biases 0, FFN linears ``nn.Linear``'s Kaiming-uniform, LayerNorms 1/0, positions ``N(0, 1)``
(``nn.Embedding``'s default).

emo's additions and choices where the code is silent:

- ``ffn`` defaults to ``4 · d_model`` (2048 at the 512-d ViT-B/32 embedding, the official value; the
  code keeps 2048 at any width).
- ``mask [B, T]`` (True = a real frame): padded frames are keys no query attends to
  (``src_key_padding_mask``, their content zeroed first so even inf/NaN padding stays out) and are
  left out of the mean, so an item padded at the end gives the output of its unpadded frames. A frame keeps the position of its index. Every item needs at least
  one real frame. The official code has no mask (always 8 frames).
- ``T < frames`` uses the first ``T`` positions; ``T > frames`` raises.
- ``pooling="mean"`` builds no parameters at all and accepts any ``T``.

Parameters with the defaults (``d_model=512, layers=6, heads=8, ffn=2048``): per layer
``3·512² + 3·512`` (in-proj) ``+ 512² + 512`` (out-proj) ``+ 2·512·2048 + 2048 + 512`` (FFN)
``+ 4·512`` (two LayerNorms) = 3,152,384; in all ``6 · 3,152,384 + 2·512 + 8·512 = 18,919,424``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["check_frames", "POOLINGS", "VideoTransformer", "masked_mean"]

POOLINGS = ("transformer", "mean")


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``x [B, T, D]`` over time, over the frames where ``mask [B, T]`` is True: ``[B, D]``."""
    if mask is None:
        return x.mean(dim=1)
    kept = mask[..., None]  # [B, T, 1]
    return x.masked_fill(~kept, 0.0).sum(dim=1) / kept.sum(dim=1).to(x.dtype)  # [B, D]; junk rows never read


def check_frames(x: torch.Tensor, d_model: int, mask: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, T >= 1, d_model]`` and ``mask`` (if any) a bool ``[B, T]``
    with at least one real frame per item."""
    if x.ndim != 3 or x.shape[-1] != d_model or x.shape[1] == 0:
        raise ValueError(f"x must be [B, T >= 1, {d_model}], got {tuple(x.shape)}")
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != x.shape[:2]:
            raise ValueError(f"mask must be a bool [B, T] = {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every item needs at least one real frame (a row of mask is all False)")


class VideoTransformer(nn.Module):
    """``[B, T, d_model]`` frame embeddings (optional ``mask [B, T]``, True = real) -> ``[B, d_model]``."""

    def __init__(
        self,
        d_model: int = 512,
        frames: int = 8,
        layers: int = 6,
        heads: int = 8,
        ffn: int | None = None,
        dropout: float = 0.1,
        pooling: str = "transformer",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        self.d_model, self.frames, self.pooling = d_model, frames, pooling
        self.pos: nn.Parameter | None = None
        self.encoder: nn.TransformerEncoder | None = None
        if pooling == "mean":
            return  # Table 3's mean-pooling row: no parameters
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=ffn or 4 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.pos = nn.Parameter(torch.randn(frames, d_model))  # N(0, 1), as nn.Embedding

    def _check(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        check_frames(x, self.d_model, mask)
        if self.pooling == "transformer" and x.shape[1] > self.frames:
            raise ValueError(f"{x.shape[1]} frames but positions for at most {self.frames}")

    def encode_frames(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame ``Enc(x + pos) + x`` ``[B, T, D]`` (``x`` itself for mean pooling); padded rows are junk."""
        self._check(x, mask)
        if self.encoder is None:
            return x
        padding = None
        if mask is not None:
            padding = ~mask  # [B, T], True = ignored as a key
            x = x.masked_fill(padding[..., None], 0.0)  # padded content (even inf/NaN) never reaches a value
        pos = self.pos[: x.shape[1]].to(x.dtype)  # [T, D], frame index t -> pos[t]
        return self.encoder(x + pos, src_key_padding_mask=padding) + x  # [B, T, D]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(self.encode_frames(x, mask), mask)  # [B, D]
