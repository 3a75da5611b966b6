"""Text decoders built from the frozen CLIP text tower (docs/papers.md#pe-clip): PE-CLIP's prototype decoder.

- :class:`PrototypeDecoder`: layers ``0..d-1`` of the tower unchanged; layers ``d..L-1`` get a trainable
  :class:`CrossAttention` (prototype tokens attend to the temporal features) between the frozen
  self-attention and the frozen MLP; the causal mask stays; output at ``[EOS]``. Prefix states of fixed
  prompts (layers ``0..d-1``) are computed once (``PrototypeDecoder.precompute``).
- :class:`LearnablePrototype`: ``S`` free token states entering at layer ``d``.
- :class:`RandomDecoder`: the paper's baseline, a randomly initialised 4-layer decoder.

emo's choices where the paper is silent (recorded): the cross-attention's output projection starts at
zero, so at initialisation the decoder *is* CLIP's text encoder and training starts from CLIP's text
space; cross-attention is pre-norm with its own LayerNorms on queries and memory; padding positions
after the last ``[EOS]`` of a prompt batch are dropped (the causal mask means they never reach an
``[EOS]``); learnable prototype tokens start as N(0, 0.02²) and take no positional embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from .text_tower import FrozenTextTower, PrefixStates, causal_mask, prompt_states

__all__ = ["Prototype", "CrossAttention", "PrototypeDecoder", "LearnablePrototype", "RandomDecoder"]


class LearnablePrototype(nn.Module):
    """``S`` learnable prototype tokens ``[S, W]`` entering the decoder at its first modified layer.

    They replace the prompt states there (no positional embedding: they are free parameters), run under
    the causal mask, and the output is taken at the last token. Init: N(0, std²) with std 0.02 (CoOp's),
    or ``init`` ``[S, W]`` (e.g. the states of a prompt). Calling it gives ``([1, S, W], [1])``.
    """

    def __init__(self, n_tokens: int = 26, width: int = 512, std: float = 0.02, init: torch.Tensor | None = None):
        super().__init__()
        if init is not None:
            if tuple(init.shape) != (n_tokens, width):
                raise ValueError(f"init must be [{n_tokens}, {width}], got {tuple(init.shape)}")
            tokens = init.detach().clone().float()
        else:
            tokens = torch.randn(n_tokens, width) * std
        self.tokens = nn.Parameter(tokens)  # [S, W]

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.tokens.shape[0]
        return self.tokens.unsqueeze(0), torch.full((1,), s - 1, device=self.tokens.device)  # [1, S, W], [1]


Prototype = PrefixStates | LearnablePrototype | torch.Tensor


def _prototype(prototype: Prototype, eos_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(states [P, L, W], eos [P])`` from any accepted prototype form."""
    if isinstance(prototype, PrefixStates):
        return prototype.states, prototype.eos_index
    if isinstance(prototype, LearnablePrototype):
        return prototype()
    if eos_index is None:
        raise ValueError("a prototype given as a [P, L, W] tensor needs eos_index [P]")
    return prototype, eos_index


def _check_memory(memory: torch.Tensor, dim: int, key_padding_mask: torch.Tensor | None) -> None:
    if memory.ndim != 3 or memory.shape[2] != dim:
        raise ValueError(f"memory must be [B, T, {dim}], got {tuple(memory.shape)}")
    if key_padding_mask is not None:
        if key_padding_mask.shape != memory.shape[:2] or key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be bool [B, T] = {tuple(memory.shape[:2])}")
        if bool(key_padding_mask.all(dim=1).any()):
            raise ValueError("key_padding_mask masks every step of some video; each needs one valid step")


class CrossAttention(nn.Module):
    """Pre-norm cross-attention update: ``attn(ln_q(x), ln_kv(memory))`` (the residual is the caller's).

    ``x`` ``[N, Q, W]`` queries, ``memory`` ``[N, T, Dm]``, ``key_padding_mask`` ``[N, T]`` bool, True =
    padding (ignored). ``zero_init`` zeroes the output projection, so the update starts at exactly 0.
    """

    def __init__(self, width: int, heads: int, memory_dim: int, zero_init: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(memory_dim)
        self.attn = nn.MultiheadAttention(width, heads, kdim=memory_dim, vdim=memory_dim, batch_first=True)
        if zero_init:
            nn.init.zeros_(self.attn.out_proj.weight)
            nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, key_padding_mask: torch.Tensor | None = None):
        kv = self.ln_kv(memory)  # [N, T, Dm]
        return self.attn(self.ln_q(x), kv, kv, key_padding_mask=key_padding_mask, need_weights=False)[0]


class PrototypeDecoder(nn.Module):
    """PE-CLIP's prototype-evolution decoder over a frozen CLIP text tower.

    Layers ``0..d-1`` are the tower's, unchanged (run once per prompt set by :meth:`precompute`);
    each layer ``i >= d`` does ``x += ls_1(attn(ln_1 x))`` (frozen, causal), ``x += xattn(x, memory)``
    (trainable), ``x += ls_2(mlp(ln_2 x))`` (frozen). The output is the ``[EOS]`` state after
    ``ln_final`` and the text projection. With zero-initialised cross-attention (default) or
    ``d == n_layers`` the output is exactly the tower's ``encode`` of the prompt, for any memory.

    ``forward(prototype, memory [B, T, Dm], key_padding_mask [B, T]) -> [B, P, D]``: every one of the
    ``P`` prototypes evolved against every video. ``prototype`` is a :class:`PrefixStates` (from
    :meth:`precompute`), a :class:`LearnablePrototype`, or a ``[P, L, W]`` tensor with ``eos_index``.
    """

    def __init__(
        self, tower: FrozenTextTower, d: int = 8, memory_dim: int = 512, heads: int | None = None,
        zero_init: bool = True, trim: bool = True,
    ):
        super().__init__()
        if not 0 <= d <= tower.n_layers:
            raise ValueError(f"d must be in 0..{tower.n_layers}, got {d}")
        self.tower, self.d, self.memory_dim, self.trim = tower, d, memory_dim, trim
        heads = heads or tower.heads
        self.xattn = nn.ModuleList(
            CrossAttention(tower.width, heads, memory_dim, zero_init) for _ in range(d, tower.n_layers)
        )

    @property
    def embed_dim(self) -> int:
        return self.tower.embed_dim

    def precompute(self, ids: torch.Tensor) -> PrefixStates:
        """Prompts ``[P, L]`` -> their states after layers ``0..d-1`` (no grad; video-independent)."""
        return prompt_states(self.tower, ids, self.d, self.trim)

    def forward(
        self, prototype: Prototype, memory: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
        eos_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        states, eos = _prototype(prototype, eos_index)  # [P, L, W], [P]
        _check_memory(memory, self.memory_dim, key_padding_mask)
        b, (p, n, w) = memory.shape[0], states.shape
        x = states.unsqueeze(0).expand(b, p, n, w).reshape(b * p, n, w)  # [B*P, L, W], video-major
        mask = self.tower.causal_mask(n)
        for k, xattn in enumerate(self.xattn):
            i = self.d + k
            x = x + self.tower.attend(i, x, mask)
            # every prompt token of video b attends to video b's memory: queries [B, P*L, W]
            x = x + xattn(x.reshape(b, p * n, w), memory, key_padding_mask).reshape(b * p, n, w)
            x = x + self.tower.feed_forward(i, x)
        v = self.tower.finish(x, eos.to(x.device).repeat(b))  # [B*P, D]
        return v.view(b, p, -1)


class _DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention, MLP (GELU), each residual."""

    def __init__(self, width: int, heads: int, memory_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.xattn = CrossAttention(width, heads, memory_dim, zero_init=False)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x, mask, memory, key_padding_mask, b: int):
        h = self.ln_1(x)  # [B*P, L, W]
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        bp, n, w = x.shape
        x = x + self.xattn(x.reshape(b, -1, w), memory, key_padding_mask).reshape(bp, n, w)
        return x + self.mlp(self.ln_2(x))


class RandomDecoder(nn.Module):
    """The paper's baseline: a randomly initialised ``n_layers`` transformer decoder (all trainable).

    Same inputs and output as :class:`PrototypeDecoder`: prototype states ``[P, L, W]`` (learnable
    tokens, or the frozen token + positional embeddings of a prompt: ``prompt_states(tower, ids, 0)``)
    attend causally to themselves (emo's choice, as in CLIP's tower) and to the memory; the state at
    ``[EOS]`` (the last learnable token) -> LayerNorm -> Linear -> ``[B, P, out_dim]``.
    """

    def __init__(
        self, n_layers: int = 4, width: int = 512, heads: int = 8, memory_dim: int = 512,
        out_dim: int = 512, mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.width, self.memory_dim = width, memory_dim
        self.layers = nn.ModuleList(_DecoderLayer(width, heads, memory_dim, mlp_ratio) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim)

    def forward(
        self, prototype: Prototype, memory: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
        eos_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        states, eos = _prototype(prototype, eos_index)  # [P, L, W], [P]
        _check_memory(memory, self.memory_dim, key_padding_mask)
        b, (p, n, w) = memory.shape[0], states.shape
        if w != self.width:
            raise ValueError(f"prototype width {w} != decoder width {self.width}")
        x = states.unsqueeze(0).expand(b, p, n, w).reshape(b * p, n, w)  # [B*P, L, W]
        mask = causal_mask(n, x.device).to(x.dtype)
        for layer in self.layers:
            x = layer(x, mask, memory, key_padding_mask, b)
        x = x[torch.arange(b * p, device=x.device), eos.to(x.device).repeat(b)]  # [B*P, W]
        return self.proj(self.ln_final(x)).view(b, p, -1)
