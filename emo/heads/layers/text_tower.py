"""The CLIP text tower as frozen layers, and the text decoders built from it (SPEC §4.1, seed 000).

Works on the attributes of an open_clip ``CLIP`` module (``token_embedding``, ``positional_embedding``,
``transformer.resblocks``, ``attn_mask``, ``ln_final``, ``text_projection``; argmax pooling) without
importing open_clip: the adapter ``emo.encoders.clip`` builds the model, this file reproduces its
``encode_text`` exactly and cuts it into pieces.

- :class:`FrozenTextTower`: a frozen copy of the text parts; ``embed`` -> ``run_layers`` -> ``finish``
  is ``encode_text``.
- :class:`PrototypeDecoder`: PE-CLIP's decoder. Layers ``0..d-1`` unchanged; layers ``d..L-1`` get a
  trainable :class:`CrossAttention` (prototype tokens attend to the temporal features) between the
  frozen self-attention and the frozen MLP; the causal mask stays; output at ``[EOS]``.
  Prefix states of fixed prompts (layers ``0..d-1``) are computed once (:meth:`precompute`).
- :class:`LearnablePrototype`: ``S`` free token states entering at layer ``d``.
- :class:`RandomDecoder`: the paper's baseline, a randomly initialised 4-layer decoder.
- :class:`CoOpClassifier`: CoOp context vectors through the full frozen tower -> class weights.
- :class:`TrainableTextEncoder`: a trainable copy of the tower (Table 4's "emotional prompt" row).

emo's choices where the paper is silent (recorded): the cross-attention's output projection starts at
zero, so at initialisation the decoder *is* CLIP's text encoder and training starts from CLIP's text
space; cross-attention is pre-norm with its own LayerNorms on queries and memory; padding positions
after the last ``[EOS]`` of a prompt batch are dropped (the causal mask means they never reach an
``[EOS]``); learnable prototype tokens start as N(0, 0.02²) and take no positional embedding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = [
    "FrozenTextTower",
    "PrefixStates",
    "Prototype",
    "causal_mask",
    "prompt_states",
    "trim_to_eos",
    "CrossAttention",
    "PrototypeDecoder",
    "LearnablePrototype",
    "RandomDecoder",
    "CoOpClassifier",
    "TrainableTextEncoder",
    "count_trainable",
    "trainable_state_dict",
]

_BLOCK_PARTS = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")


def causal_mask(n: int, device=None) -> torch.Tensor:
    """``[n, n]`` float mask, ``-inf`` above the diagonal (open_clip's ``build_causal_mask``)."""
    return torch.full((n, n), float("-inf"), device=device).triu_(1)


def trim_to_eos(ids: torch.Tensor) -> torch.Tensor:
    """``[P, L] -> [P, L']``: drop positions after the last ``[EOS]`` (argmax) of the batch.

    Under the causal mask they never influence any ``[EOS]`` state, so the output is unchanged.
    """
    return ids[:, : int(ids.argmax(dim=-1).max()) + 1]


def count_trainable(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters only, as detached CPU clones (a checkpoint without the frozen tower)."""
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


class FrozenTextTower(nn.Module):
    """A frozen copy of an open_clip ``CLIP`` model's text tower, in pieces.

    ``encode(ids)`` equals ``clip_model.encode_text(ids)``. Attributes: ``width`` W, ``heads``,
    ``n_layers``, ``context_length``, ``embed_dim`` D (projected), ``batch_first`` (the blocks' layout;
    every method here takes and returns batch-first ``[N, L, W]`` whatever it is). The parts are
    deep-copied, so the caller may drop the CLIP model; all parameters have ``requires_grad=False``.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        _check_clip_text(clip_model)
        m = clip_model
        self.token_embedding = copy.deepcopy(m.token_embedding)
        self.positional_embedding = nn.Parameter(m.positional_embedding.detach().clone())  # [ctx, W]
        self.resblocks = copy.deepcopy(m.transformer.resblocks)
        self.ln_final = copy.deepcopy(m.ln_final)
        proj = m.text_projection
        if proj is None or isinstance(proj, nn.Module):
            self.text_projection = copy.deepcopy(proj)
        else:
            self.text_projection = nn.Parameter(proj.detach().clone())  # [W, D]
        self.register_buffer("attn_mask", m.attn_mask.detach().clone(), persistent=False)  # [ctx, ctx]
        self.batch_first = bool(getattr(m.transformer, "batch_first", True))
        self.requires_grad_(False)

        self.width = int(self.positional_embedding.shape[1])
        self.context_length = int(self.positional_embedding.shape[0])
        self.heads = int(self.resblocks[0].attn.num_heads)
        self.n_layers = len(self.resblocks)
        if proj is None:
            self.embed_dim = self.width
        else:
            self.embed_dim = int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the blocks (open_clip's ``get_cast_dtype``)."""
        return self.resblocks[0].mlp.c_fc.weight.dtype

    def causal_mask(self, n: int) -> torch.Tensor:
        """``[n, n]`` causal mask: open_clip's own buffer, sliced (or built alike for ``n > ctx``)."""
        if n <= self.attn_mask.shape[0]:
            return self.attn_mask[:n, :n]
        return causal_mask(n, self.attn_mask.device)

    def eos_index(self, ids: torch.Tensor) -> torch.Tensor:
        """``[P, L] -> [P]`` position of ``[EOS]``: the largest token id (open_clip's argmax pooling)."""
        return ids.argmax(dim=-1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``[P, L]`` int ids -> ``[P, L, W]`` token + positional embeddings (``L <= context_length``)."""
        if ids.ndim != 2 or ids.shape[1] > self.context_length:
            raise ValueError(f"ids must be [P, L<={self.context_length}], got {tuple(ids.shape)}")
        x = self.token_embedding(ids).to(self.dtype)  # [P, L, W]
        return x + self.positional_embedding[: ids.shape[1]].to(self.dtype)

    def attend(self, i: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Block ``i``'s residual self-attention update ``ls_1(attn(ln_1(x)))``; ``x`` ``[N, L, W]``."""
        blk = self.resblocks[i]
        h = blk.ln_1(x)
        if not self.batch_first:
            h = h.transpose(0, 1)  # [L, N, W]
        a = blk.attn(h, h, h, need_weights=False, attn_mask=mask.to(h.dtype))[0]
        if not self.batch_first:
            a = a.transpose(0, 1)  # [N, L, W]
        return blk.ls_1(a)

    def feed_forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``i``'s residual MLP update ``ls_2(mlp(ln_2(x)))``."""
        blk = self.resblocks[i]
        return blk.ls_2(blk.mlp(blk.ln_2(x)))

    def run_layers(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``[N, L, W]`` through blocks ``start..stop-1`` under the causal mask."""
        if not 0 <= start <= stop <= self.n_layers:
            raise ValueError(f"layers {start}..{stop} out of range 0..{self.n_layers}")
        mask = self.causal_mask(x.shape[1])
        for i in range(start, stop):
            x = x + self.attend(i, x, mask)
            x = x + self.feed_forward(i, x)
        return x

    def finish(self, x: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """``[N, L, W]`` states, ``[N]`` EOS positions -> ``[N, D]``: ``ln_final``, EOS pick, projection."""
        x = self.ln_final(x)  # [N, L, W]
        x = x[torch.arange(x.shape[0], device=x.device), eos_index.to(x.device)]  # [N, W]
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Module):
            return self.text_projection(x)
        return x @ self.text_projection  # [N, D]

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """``[P, L]`` ids -> ``[P, D]``: exactly open_clip's ``encode_text(ids)`` (not normalised)."""
        x = self.run_layers(self.embed(ids), 0, self.n_layers)
        return self.finish(x, self.eos_index(ids))


def _check_clip_text(m: nn.Module) -> None:
    """Raise ValueError unless ``m`` has an open_clip CLIP text tower this file can reproduce."""
    need = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
    missing = [a for a in need if not hasattr(m, a)]
    if missing:
        raise ValueError(f"{type(m).__name__} is not an open_clip CLIP model (no {', '.join(missing)})")
    if getattr(m, "text_pool_type", "argmax") != "argmax":
        raise ValueError(f"text pooling {m.text_pool_type!r} is not supported (only argmax, CLIP's)")
    if m.attn_mask is None:
        raise ValueError("the text tower has no causal mask; PE-CLIP's decoder needs one")
    for i, blk in enumerate(m.transformer.resblocks):
        if any(not hasattr(blk, p) for p in _BLOCK_PARTS) or not isinstance(blk.attn, nn.MultiheadAttention):
            raise ValueError(f"text block {i} ({type(blk).__name__}) is not a plain ResidualAttentionBlock")


class PrefixStates(nn.Module):
    """Fixed prompts after the unmodified layers: ``states`` ``[P, L, W]`` and ``eos_index`` ``[P]``.

    Non-persistent buffers without grad (rebuilt from the prompts, never saved); a submodule of the
    head, so ``.to(device)`` moves them.
    """

    def __init__(self, states: torch.Tensor, eos_index: torch.Tensor):
        super().__init__()
        if states.ndim != 3 or eos_index.shape != states.shape[:1]:
            raise ValueError(f"states [P, L, W] and eos_index [P], got {tuple(states.shape)}, {tuple(eos_index.shape)}")
        self.register_buffer("states", states.detach(), persistent=False)
        self.register_buffer("eos_index", eos_index.detach().long(), persistent=False)

    def __len__(self) -> int:
        return self.states.shape[0]


@torch.no_grad()
def prompt_states(tower: FrozenTextTower, ids: torch.Tensor, layers: int = 0, trim: bool = True) -> PrefixStates:
    """Prompts ``[P, L]`` -> their states after the first ``layers`` frozen blocks (0: embeddings only).

    ``trim`` drops positions after the batch's last ``[EOS]`` (see :func:`trim_to_eos`).
    """
    ids = ids.to(tower.positional_embedding.device)
    if trim:
        ids = trim_to_eos(ids)
    x = tower.run_layers(tower.embed(ids), 0, layers)  # [P, L', W]
    return PrefixStates(x, tower.eos_index(ids))


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


class CoOpClassifier(nn.Module):
    """CoOp: ``n_ctx`` learnable context vectors ``[n_ctx, W]`` in place of the placeholder words of
    ``"X X ... X {class}."`` (see ``prompts.coop_prompts``), through the full frozen tower.

    ``ids`` ``[C, L]``: the tokenized placeholder prompts (positions ``1..n_ctx`` are the placeholders).
    Init: N(0, 0.02²) (CoOp's) or ``ctx_init`` ``[n_ctx, W]`` (e.g. the token embeddings of "a photo of a").
    ``forward() -> [C, D]`` class weights (not normalised).
    """

    def __init__(
        self, tower: FrozenTextTower, ids: torch.Tensor, n_ctx: int = 16, ctx_init: torch.Tensor | None = None,
        std: float = 0.02,
    ):
        super().__init__()
        ids = trim_to_eos(ids.to(tower.positional_embedding.device))
        eos = tower.eos_index(ids)
        if bool((eos <= n_ctx).any()) or bool((ids[:, 1 : 1 + n_ctx] != ids[:1, 1 : 1 + n_ctx]).any()):
            raise ValueError(f"ids must start with the same {n_ctx} placeholder tokens, then the class name")
        self.tower = tower
        with torch.no_grad():
            emb = tower.token_embedding(ids).to(tower.dtype)  # [C, L, W]
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # [C, 1, W]  start token
        self.register_buffer("suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)  # class, ".", EOS, pad
        self.register_buffer("eos_index", eos, persistent=False)  # [C]
        if ctx_init is not None:
            if tuple(ctx_init.shape) != (n_ctx, tower.width):
                raise ValueError(f"ctx_init must be [{n_ctx}, {tower.width}], got {tuple(ctx_init.shape)}")
            ctx = ctx_init.detach().clone().float()
        else:
            ctx = torch.randn(n_ctx, tower.width) * std
        self.ctx = nn.Parameter(ctx)  # [n_ctx, W]

    def forward(self) -> torch.Tensor:
        c = self.prefix.shape[0]
        ctx = self.ctx.to(self.prefix.dtype).unsqueeze(0).expand(c, -1, -1)  # [C, n_ctx, W]
        x = torch.cat([self.prefix, ctx, self.suffix], dim=1)  # [C, L, W]
        x = x + self.tower.positional_embedding[: x.shape[1]].to(x.dtype)
        x = self.tower.run_layers(x, 0, self.tower.n_layers)
        return self.tower.finish(x, self.eos_index)  # [C, D]


class TrainableTextEncoder(nn.Module):
    """A trainable copy of the text tower: Table 4's "emotional prompt" classifier (CLIP's text encoder
    fine-tuned on "this picture evokes a feeling like {class}"). ``forward(ids [P, L]) -> [P, D]``."""

    def __init__(self, tower: FrozenTextTower):
        super().__init__()
        self.tower = copy.deepcopy(tower).requires_grad_(True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tower.encode(ids)
