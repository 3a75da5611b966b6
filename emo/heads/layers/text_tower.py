"""The CLIP text tower as frozen layers (docs/papers.md#pe-clip), and the text-side classifiers built on it.

Works on the attributes of an open_clip ``CLIP`` module (``token_embedding``, ``positional_embedding``,
``transformer.resblocks``, ``attn_mask``, ``ln_final``, ``text_projection``; argmax pooling) without
importing open_clip: the adapter ``emo.encoders.clip`` builds the model, this file reproduces its
``encode_text`` exactly and cuts it into pieces.

- :class:`FrozenTextTower`: a frozen copy of the text parts; ``embed`` -> ``run_layers`` -> ``finish``
  is ``encode_text``. :func:`prompt_states` runs fixed prompts through its first layers once
  (:class:`PrefixStates`).
- :class:`CoOpClassifier`: CoOp context vectors through the full frozen tower -> class weights.
- :class:`TrainableTextEncoder`: a trainable copy of the tower (Table 4's "emotional prompt" row).

The decoders that insert cross-attention into these layers (PE-CLIP's) are in :mod:`.text_decoder`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = [
    "FrozenTextTower",
    "PrefixStates",
    "causal_mask",
    "prompt_states",
    "trim_to_eos",
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
