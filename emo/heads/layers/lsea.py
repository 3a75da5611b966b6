"""DuSE's Latent Semantic Emotion Aggregator, LSEA (DuSE paper Sec. III-C, eqs. 9-13; docs/papers.md#duse).

Over frame features ``x [B, T, D]`` (optional ``mask [B, T]``, True = a real frame) and the class text
features ``F_T [C, D]``::

    V_m = Linear(Attention(x, x, x))                                            [B, T, D]   (9, 10)
    w   = softmax_t(score(V_m))          V_o = sum_t w_t V_m[t]                 [B, D]      (11)
    Ṽ_o(i) = P_v(i) V_o        F̃_T(i) = P_t(i) F_T           (i = 1..N)         [B, N, D], [C, N, D]
    T̃_o(i) = softmax_c( cos(Ṽ_o(i), F̃_T(i)) / temperature ) F̃_T(i)              [B, N, D]   (12)
    V_g = 1/N sum_i ( β Ṽ_o(i) + (1 - β) T̃_o(i) )                               [B, D]      (13)
    logits = logit_scale · cos(V_g, F_T)                                        [B, C]

Facts from the paper: one self-attention over time only ("only time series modeling is performed
here"), eq. 9's scaled dot product ``softmax(QKᵀ/√d_k) V``, eq. 10's linear layer after it, eq. 11's
attention pooling whose weights are "learned via a learned scoring function followed by softmax over
time"; the semantic part measures video-text similarity "by calculating the cosine of the vectors"
and applies softmax; a linear layer maps ``V_o`` and ``F_T`` to ``N`` heads "of the same dimension";
eq. 12 sums the *projected* text features ``F̃_T(i)`` and eq. 13 mixes the *projected* ``Ṽ_o(i)``;
``N = 4``, ``β = 0.7`` (Sec. IV-A, Table V).

emo's choices where the paper is silent:

- Self-attention: one head, ``d_k = D``; learned query (with bias), key and value projections (no
  bias: a key bias adds a per-query constant that softmax removes, a value bias adds a constant that
  eq. 10's linear bias already covers); no output projection (eq. 10's Linear is that), no residual,
  no LayerNorm, no FFN, no dropout: eqs. 9-10 as written.
- No position encoding (``positions=False``, the default): LSEA mentions none; in DuSE frame order
  reaches the frame features through HTPC's sinusoidal position encoding on the first-layer visual
  prompts. Without positions the self-attention is permutation-*equivariant* over frames and the
  per-frame linear and score keep that, so the attention pooling makes ``V_o`` (and the logits)
  invariant to frame order, exactly as average pooling is; the temporal part differs from the mean
  by weighting frames by content, not by order. ``positions=True`` (emo's option, not the paper's)
  adds the fixed sinusoidal encoding of :func:`~emo.heads.layers.temporal.sinusoidal_positions` to
  ``x`` before the attention (needs an even ``D``); a frame keeps the position of its index.
- Score: one ``Linear(D, 1)`` without bias (a bias cancels in the softmax) on the rows of ``V_m``.
- Similarity: cosine (the paper's text; eq. 12's "·" read as the cosine) with no temperature
  (``temperature=1.0``): eq. 12 has none. Cosines lie in ``[-1, 1]``, so the class weights stay soft,
  which matches the paper's "all-category soft bootstrapping"; a smaller ``temperature`` sharpens them.
- Head projections: ``P_v`` and ``P_t`` are each one ``Linear(D, N·D)`` with bias, whose rows
  ``i·D .. (i+1)·D`` are head ``i``'s own ``D -> D`` projection.
- Logits: ``logit_scale = 100`` times the cosine with the *raw* ``F_T`` (eq. 1 aligns ``V_g`` with
  ``F_T``; the paper's plain dot product becomes CLIP's scaled cosine, as the text says).
- ``F_T`` is an argument, used as given (not renormalised), and LSEA holds no copy: frozen text
  features get no gradient, prompted (trainable) ones get theirs.
- ``mask``: padded frames are keys no query attends to, get zero pooling weight and are left out of
  the mean, their content zeroed first so even inf/NaN padding stays out. Every item needs a real frame.
- Init: torch's defaults (``nn.Linear``'s Kaiming-uniform); the heads must start different, so no
  identity init.

Switches (Table III): ``pooling="average"`` replaces the whole temporal part (attention, linear,
attention pooling) by the masked mean over frames, keeping the semantic heads. The paper's row
replaces LSEA as a whole ("LSEA is replaced with average pooling"): ``pooling="average",
aggregate=False`` is that row, ``logits = logit_scale · cos(mean_t x, F_T)`` with no parameters.

Parameters at ``D = 512, N = 4``: temporal ``3·512² + 512`` (q, k, v) ``+ 512² + 512`` (Linear)
``+ 512`` (score) = 1,050,112; heads ``2 · (512·2048 + 2048)`` = 2,101,248; in all 3,151,360.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .temporal import sinusoidal_positions
from .video_transformer import check_frames, masked_mean

__all__ = ["LSEA", "LSEA_POOLINGS"]

LSEA_POOLINGS = ("attention", "average")


class LSEA(nn.Module):
    """``x [B, T, D]``, ``text [C, D]`` (optional ``mask [B, T]``, True = real) -> logits ``[B, C]``."""

    def __init__(
        self,
        d_model: int = 512,
        heads: int = 4,
        beta: float = 0.7,
        pooling: str = "attention",
        positions: bool = False,
        aggregate: bool = True,
        temperature: float = 1.0,
        logit_scale: float = 100.0,
    ):
        super().__init__()
        if pooling not in LSEA_POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(LSEA_POOLINGS)}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        if heads < 1 or temperature <= 0:
            raise ValueError(f"need heads >= 1 and temperature > 0, got {heads} and {temperature}")
        if positions and (pooling == "average" or d_model % 2):
            raise ValueError("positions need attention pooling and an even d_model")
        self.d_model, self.heads, self.beta, self.pooling = d_model, heads, beta, pooling
        self.positions, self.aggregate = positions, aggregate
        self.temperature, self.logit_scale = temperature, logit_scale
        if pooling == "attention":
            self.query = nn.Linear(d_model, d_model)
            self.key = nn.Linear(d_model, d_model, bias=False)
            self.value = nn.Linear(d_model, d_model, bias=False)
            self.linear = nn.Linear(d_model, d_model)  # eq. 10
            self.score = nn.Linear(d_model, 1, bias=False)  # eq. 11's learned scoring function
        if aggregate:
            self.proj_v = nn.Linear(d_model, heads * d_model)  # head i: rows i*D .. (i+1)*D
            self.proj_t = nn.Linear(d_model, heads * d_model)

    def _check(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> None:
        check_frames(x, self.d_model, mask)
        if text.ndim != 2 or text.shape[-1] != self.d_model:
            raise ValueError(f"text must be [C, {self.d_model}], got {tuple(text.shape)}")

    def pool(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``V_o [B, D]``: eqs. 9-11 over the real frames (the masked mean for ``pooling="average"``)."""
        if self.pooling == "average":
            return masked_mean(x, mask)  # [B, D]
        B, T, D = x.shape
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)  # padded content (even inf/NaN) never reaches a value
        if self.positions:
            x = x + sinusoidal_positions(T, D, device=x.device, dtype=x.dtype)  # [T, D], frame t -> pe[t]
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, D] each
        s = q @ k.transpose(1, 2) / math.sqrt(D)  # [B, T query, T key]
        if mask is not None:
            s = s.masked_fill(~mask[:, None, :], float("-inf"))  # no query attends to a padded key
        v_m = self.linear(s.softmax(dim=-1) @ v)  # [B, T, D], eq. 10; padded rows are junk
        e = self.score(v_m).squeeze(-1)  # [B, T]
        if mask is not None:
            e = e.masked_fill(~mask, float("-inf"))
        w = e.softmax(dim=1)  # [B, T], softmax over time; padded frames get 0
        return (w[..., None] * v_m).sum(dim=1)  # [B, D], eq. 11

    def semantic(
        self, v_o: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eqs. 12-13: ``(Ṽ_o [B, N, D], T̃_o [B, N, D], V_g [B, D])`` from ``V_o [B, D]``, ``F_T [C, D]``.

        With ``aggregate=False`` there are no heads: ``(V_o[:, None], zeros, V_o)``.
        """
        if not self.aggregate:
            return v_o[:, None], torch.zeros_like(v_o[:, None]), v_o
        (B, D), C, N = v_o.shape, text.shape[0], self.heads
        v_h = self.proj_v(v_o).view(B, N, D)  # [B, N, D], Ṽ_o(i)
        t_h = self.proj_t(text).view(C, N, D).transpose(0, 1)  # [N, C, D], F̃_T(i)
        cos = F.normalize(v_h, dim=-1).transpose(0, 1) @ F.normalize(t_h, dim=-1).transpose(1, 2)  # [N, B, C]
        p = (cos / self.temperature).softmax(dim=-1)  # [N, B, C], softmax over classes
        t_o = (p @ t_h).transpose(0, 1)  # [B, N, D], eq. 12: weighted sum of the projected F̃_T(i)
        v_g = (self.beta * v_h + (1.0 - self.beta) * t_o).mean(dim=1)  # [B, D], eq. 13
        return v_h, t_o, v_g

    def forward_features(
        self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(V_o [B, D], T̃_o [B, N, D], V_g [B, D])`` for frames ``x [B, T, D]`` and ``F_T [C, D]``."""
        self._check(x, text, mask)
        v_o = self.pool(x, mask)  # [B, D]
        _, t_o, v_g = self.semantic(v_o, text)
        return v_o, t_o, v_g

    def forward_head(self, v_g: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``logit_scale · cos(V_g, F_T)``: ``[B, C]``."""
        return self.logit_scale * F.normalize(v_g, dim=-1) @ F.normalize(text, dim=-1).T  # [B, C]

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _, _, v_g = self.forward_features(x, text, mask)
        return self.forward_head(v_g, text)  # [B, C]
