"""Temporal modules for PE-CLIP's ablation (docs/papers.md#pe-clip, the paper's Table 5): one factory, one contract.

Every module maps frame features ``[B, T, D] -> [B, T, D]`` (batch first, T frames):

- ``identity``: no parameters, returns its input.
- ``lstm`` / ``gru``: unidirectional (causal), ``layers`` layers, hidden size ``d_model``.
- ``transformer``: ``layers`` post-norm ``nn.TransformerEncoderLayer`` (``heads`` heads, FFN
  ``4 * d_model``, GELU, no dropout), over the frames plus a fixed sinusoidal position encoding,
  bidirectional (no mask). Post-norm and no dropout match MH-Mamba's blocks (``LN(x + f(x))``, no
  dropout), so the ablation compares the mixers; the positions keep frame order visible, which a
  plain self-attention stack would not see (they add no parameters and fit any T).
- ``mamba`` (alias ``mh-mamba``): :class:`~emo.heads.layers.mamba.MHMamba` with ``layers`` blocks.

``mamba_kw`` (``d_inner``, ``dt_rank``, ``d_state``, ``d_conv``, ``dt_min``, ``dt_max``,
``scan_backend``) are checked for every kind, so a misspelt key fails loudly, and used by ``mamba``
only: a config may carry them whichever temporal kind it sweeps.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from .mamba import MHMamba, MHMambaBlock

__all__ = ["TEMPORAL_KINDS", "build_temporal", "sinusoidal_positions"]

TEMPORAL_KINDS = ("identity", "lstm", "gru", "transformer", "mamba")
_ALIASES = {"mh-mamba": "mamba"}  # the paper's name, MH-Mamba
_MAMBA_KEYS = frozenset(inspect.signature(MHMambaBlock).parameters) - {"d_model", "heads"}


class _Recurrent(nn.Module):
    """An ``nn.LSTM`` / ``nn.GRU`` (batch first) returning only its per-frame outputs ``[B, T, D]``."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # [B, T, hidden]
        return out


def sinusoidal_positions(T: int, d: int, device=None, dtype=None) -> torch.Tensor:
    """``[T, d]`` fixed sine/cosine position encoding (Vaswani et al.); ``d`` must be even."""
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]  # [T, 1] frames
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.to(dtype or torch.float32)


class _Transformer(nn.Module):
    """Post-norm transformer encoder over frames with sinusoidal positions: ``[B, T, D] -> [B, T, D]``."""

    def __init__(self, d_model: int, layers: int, heads: int):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"the transformer's sinusoidal positions need an even d_model, got {d_model}")
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=4 * d_model,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pe = sinusoidal_positions(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype)  # [T, D]
        return self.encoder(x + pe)  # [B, T, D]


def build_temporal(kind: str, d_model: int = 512, layers: int = 3, heads: int = 8, **mamba_kw) -> nn.Module:
    """A temporal module ``[B, T, d_model] -> [B, T, d_model]`` of ``kind`` (one of :data:`TEMPORAL_KINDS`).

    Raises ValueError for an unknown kind (listing the valid ones) and TypeError for a key of
    ``mamba_kw`` that MH-Mamba does not take.
    """
    kind = _ALIASES.get(kind, kind)
    if kind not in TEMPORAL_KINDS:
        raise ValueError(f"unknown temporal kind {kind!r}; expected one of {', '.join(TEMPORAL_KINDS)}")
    unknown = sorted(set(mamba_kw) - _MAMBA_KEYS)
    if unknown:
        raise TypeError(f"unknown MH-Mamba option(s) {unknown}; valid: {', '.join(sorted(_MAMBA_KEYS))}")
    if kind == "identity":
        return nn.Identity()
    if kind in ("lstm", "gru"):
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        return _Recurrent(rnn(d_model, d_model, num_layers=layers, batch_first=True))
    if kind == "transformer":
        return _Transformer(d_model, layers, heads)
    return MHMamba(layers=layers, d_model=d_model, heads=heads, **mamba_kw)
