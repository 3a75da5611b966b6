"""DuSE's Hierarchical Temporal Prompt Cluster, HTPC (DuSE paper Sec. III-B, eqs. 2-8; docs/papers.md#duse).

Text side (eqs. 2-3): ``n`` learnable tokens ``P_i^T [n, W_t]`` at each of the text tower's first ``M``
layers. Layer 1 reads ``[SOS] P_1^T words... [EOS]`` (the prompt slots take positions ``1..n``, as
CoOp's context does); layers ``2..M`` read the previous layer's outputs with the prompt slots
*replaced* by ``P_i^T`` (deep prompts); after layer ``M`` the prompt slots leave the sequence ("the
output of the corresponding dimension, which our algorithm does not consider": eq. 3 has no prompt).
The tower is causal and pools at ``[EOS]``: a prompt placed after ``[EOS]`` could never reach the class
feature, so the prompts go right after ``[SOS]`` (:class:`PromptedTextTower`, ``at="end"`` exists to
show that).

Visual side (eqs. 4-6): the visual prompts are made from the text prompts by ONE shared MLP,
``P_i^V = W_2 ReLU(W_1 P_i^T + b_1) + b_2`` (eq. 6's ``ReLU(W P + b)`` is the hidden layer; "no
activation function is used before the output layer", so the output is linear; hidden width
``W_t``). For the first prompted layer, a sinusoidal position encoding over the ``t`` frames is added
and broadcast over the ``n`` tokens: frame ``τ`` gets ``P_1^V + pe[τ]``. That is where frame order
enters DuSE. The visual prompts are appended after the image tokens of each frame (a ViT block has no
mask, so only pooling, which reads the class token, cares where they sit); like the text side, deep
prompts replace the previous block's prompt outputs and the prompts leave after the last prompted
block.

Where the visual prompts act (``variant``):

- ``"first"`` (the paper's): blocks ``1..M`` of the image tower, from tokens stored with
  ``--tokens-layer 0`` (the input of block 1); every block then runs per step.
- ``"last"`` (cache-friendly): blocks ``K-M+1..K``, from tokens stored after any block ``k <= K-M``
  (best ``k = K-M``: the stored tokens enter the first prompted block). The text side keeps the
  paper's first ``M`` layers (a text tower over C class texts is cheap), and text prompt ``i`` still
  makes visual prompt ``i``: the position encoding goes to the first *prompted* visual block.

Parameters at ``n = 4``, ``M`` layers, ViT-B/32 (``W_t = 512``, ``W_v = 768``): text prompts
``M·4·512``, MLP ``512·512 + 512 + 512·768 + 768`` = 656,128.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .image_tower import FrozenImageTower
from .temporal import sinusoidal_positions
from .text_tower import FrozenTextTower, trim_to_eos

__all__ = ["HTPC", "HTPC_VARIANTS", "PromptedTextTower", "prompted_image_features", "visual_blocks"]

HTPC_VARIANTS = ("first", "last")


class PromptedTextTower(nn.Module):
    """The frozen text tower over fixed texts ``ids [C, L]``, with prompt tokens at its first layers.

    ``forward(prompts [M, n, W] or None, keep=False) -> [C, D]``: prompt ``prompts[0]`` enters at the
    input after ``[SOS]`` (``at="sos"``) or after the last ``[EOS]`` (``at="end"``), ``prompts[i]``
    replaces the prompt slots before layer ``i + 1``; after layer ``M`` the slots leave, unless ``keep``
    (CoOp: the context tokens are ordinary inputs and stay through every layer). ``None`` (or ``n = 0``)
    is exactly ``encode_text(ids)``.
    """

    def __init__(self, tower: FrozenTextTower, ids: torch.Tensor, at: Literal["sos", "end"] = "sos"):
        super().__init__()
        if at not in ("sos", "end"):
            raise ValueError(f"at must be 'sos' or 'end', got {at!r}")
        self.tower, self.at = tower, at
        ids = trim_to_eos(ids.to(tower.positional_embedding.device))  # exact under the causal mask
        with torch.no_grad():
            emb = tower.token_embedding(ids).to(tower.dtype)  # [C, L, W]
        self.register_buffer("words", emb, persistent=False)  # token embeddings, no positions yet
        self.register_buffer("eos_index", tower.eos_index(ids), persistent=False)  # [C]

    def _slots(self, n: int) -> slice:
        """Where the ``n`` prompt tokens sit in the sequence."""
        return slice(1, 1 + n) if self.at == "sos" else slice(self.words.shape[1], self.words.shape[1] + n)

    def _insert(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``x [C, L, W]`` (no prompt slots) -> ``[C, L + n, W]`` with ``p [n, W]`` in the slots."""
        p = p.to(x.dtype)[None].expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :1], p, x[:, 1:]], 1) if self.at == "sos" else torch.cat([x, p], 1)

    def _replace(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        s = self._slots(p.shape[0])
        p = p.to(x.dtype)[None].expand(x.shape[0], -1, -1)
        return torch.cat([x[:, : s.start], p, x[:, s.stop :]], 1)

    def _remove(self, x: torch.Tensor, n: int) -> torch.Tensor:
        s = self._slots(n)
        return torch.cat([x[:, : s.start], x[:, s.stop :]], 1)

    def forward(self, prompts: torch.Tensor | None = None, keep: bool = False) -> torch.Tensor:
        t = self.tower
        m, n = (0, 0) if prompts is None else (prompts.shape[0], prompts.shape[1])
        if prompts is not None and (prompts.ndim != 3 or prompts.shape[-1] != t.width or m > t.n_layers):
            raise ValueError(f"prompts must be [M <= {t.n_layers}, n, {t.width}], got {tuple(prompts.shape)}")
        x = self.words if not n else self._insert(self.words, prompts[0])  # [C, L(+n), W]
        if x.shape[1] > t.context_length:
            raise ValueError(f"{n} prompt tokens do not fit the text context of {t.context_length} with these texts")
        x = x + t.positional_embedding[: x.shape[1]].to(x.dtype)
        slots = n > 0
        for i in range(t.n_layers):
            if slots and 0 < i < m:
                x = self._replace(x, prompts[i])  # deep prompt: replaces the previous layer's prompt outputs
            if slots and i == m and not keep:
                x = self._remove(x, n)  # eq. 3: no prompt after layer M
                slots = False
            mask = t.causal_mask(x.shape[1])
            x = x + t.attend(i, x, mask)
            x = x + t.feed_forward(i, x)
        if slots and not keep:  # M = K: the slots leave before pooling
            x = self._remove(x, n)
            slots = False
        shift = n if slots and self.at == "sos" else 0
        return t.finish(x, self.eos_index + shift)  # [C, D]


class HTPC(nn.Module):
    """HTPC's parameters: text prompts ``[M, n, W_t]`` and the shared text->visual MLP.

    ``text_prompts``: the ``P_i^T``; ``visual_prompts(frames)`` -> ``[M, T, n, W_v]``: the ``P_i^V`` of
    each frame, the first layer's with the sinusoidal encoding of the frame's position (the others the
    same for every frame). Init: N(0, 0.02²) prompts (CoOp's), torch's default Linear init.
    """

    def __init__(self, text_width: int, visual_width: int, depth: int, tokens: int = 4, std: float = 0.02,
                 positions: bool = True):
        super().__init__()
        if depth < 1 or tokens < 1:
            raise ValueError(f"need depth M >= 1 and tokens n >= 1, got {depth} and {tokens}")
        if positions and visual_width % 2:
            raise ValueError(f"the frame position encoding needs an even visual width, got {visual_width}")
        self.depth, self.tokens, self.positions = depth, tokens, positions
        self.text_prompts = nn.Parameter(torch.randn(depth, tokens, text_width) * std)  # P_i^T
        self.mlp = nn.Sequential(nn.Linear(text_width, text_width), nn.ReLU(), nn.Linear(text_width, visual_width))

    def visual_prompts(self, frames: int) -> torch.Tensor:
        """``[M, T, n, W_v]``: eq. 6 for every layer, plus the frame position on the first."""
        p = self.mlp(self.text_prompts)  # [M, n, W_v]
        out = p[:, None].expand(-1, frames, -1, -1)  # [M, T, n, W_v]
        if not self.positions:
            return out
        pe = sinusoidal_positions(frames, p.shape[-1], device=p.device, dtype=p.dtype)  # [T, W_v]
        first = p[0][None] + pe[:, None, :]  # [T, n, W_v]: frame τ's tokens all get pe[τ]
        return torch.cat([first[None], out[1:]], 0)


def visual_blocks(variant: str, depth: int, n_blocks: int, stored_after: int) -> int:
    """The 0-based image block where the first visual prompt enters, checked against the tokens a cache
    stores (after block ``stored_after``; 0 = the input of block 1)."""
    if variant not in HTPC_VARIANTS:
        raise ValueError(f"unknown prompt variant {variant!r}; expected one of {', '.join(HTPC_VARIANTS)}")
    if not 1 <= depth <= n_blocks:
        raise ValueError(f"prompt depth M = {depth} must lie in 1..{n_blocks} (the image tower's blocks)")
    first = 0 if variant == "first" else n_blocks - depth
    if stored_after > first:
        need = "--tokens-layer 0" if variant == "first" else f"--tokens-layer {first} (or less)"
        raise ValueError(f"the {variant}-layer variant with M = {depth} prompts image block {first + 1}, but the "
                         f"cache stores tokens after block {stored_after}: extract with {need}"
                         + ("; or use --prompt-variant last" if variant == "first" else ""))
    return first


def prompted_image_features(tower: FrozenImageTower, tokens: torch.Tensor, stored_after: int, first: int,
                            prompts: torch.Tensor | None) -> torch.Tensor:
    """Frames' stored tokens ``[B, T, L, W]`` (after block ``stored_after``) -> ``[B, T, D]`` embeddings,
    with ``prompts [M, T, n, W]`` appended at blocks ``first..first+M-1`` (replacing the previous block's
    prompt outputs), and dropped after them (eq. 5). ``None``: the unprompted tower."""
    b, t, length, w = tokens.shape
    x = tokens.reshape(b * t, length, w).to(tower.visual.proj.dtype)  # [B*T, L, W]
    if prompts is None:
        return tower.finish(tower.run_blocks(x, stored_after), length).view(b, t, -1)
    m = prompts.shape[0]
    x = tower.run_blocks(x, stored_after, first)  # unprompted blocks before the first prompted one
    for i in range(m):
        p = prompts[i].to(x.dtype)[None].expand(b, -1, -1, -1).reshape(b * t, -1, w)  # [B*T, n, W]
        x = tower.run_blocks(torch.cat([x[:, :length], p], 1), first + i, first + i + 1)
    x = tower.run_blocks(x[:, :length], first + m)  # prompts leave after the last prompted block
    return tower.finish(x, length).view(b, t, -1)  # [B, T, D]
