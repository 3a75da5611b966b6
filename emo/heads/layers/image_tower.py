"""The frozen CLIP image tower from stored tokens: blocks ``k+1..K``, pooling and the projection.

A ``clip`` feature set extracted with ``--tokens-layer k`` stores, per frame, all tokens after block
``k`` (``k = 0``: the tokens entering block 1, after ``ln_pre``). :class:`FrozenImageTower` runs the
remaining blocks on them and pools like the image tower itself (``ln_post``, class token, projection),
so with no prompts it reproduces the stored ``clip/cls``: exactly in fp32, within fp16 rounding from
fp16-stored tokens. Heads that prompt the image tower (DuSE) append their prompt tokens to the
sequence at the blocks they prompt; the prompt tokens leave before pooling.

Works on the attributes of an open_clip ``VisionTransformer`` (``transformer.resblocks``,
``transformer.batch_first``, ``_pool``, ``proj``) without importing open_clip: the adapter
``emo.encoders.clip`` builds the model. Feature sets made with the subject-aware prompt are refused:
their stored tokens leave out the subject token that every later block attended to.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["FrozenImageTower"]


class FrozenImageTower(nn.Module):
    """A frozen copy of an open_clip image tower's blocks, pooling and projection."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        for part in ("transformer", "_pool"):
            if not hasattr(visual, part):
                raise ValueError(f"{type(visual).__name__} is not an open_clip VisionTransformer (no {part})")
        self.visual = copy.deepcopy(visual).eval().requires_grad_(False)
        self.batch_first = bool(getattr(self.visual.transformer, "batch_first", True))
        self.n_blocks = len(self.visual.transformer.resblocks)

    def train(self, mode: bool = True) -> FrozenImageTower:  # frozen: always in eval mode (no dropout)
        return super().train(False)

    def run_blocks(self, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        """``[B, L, W]`` tokens after block ``start`` -> after block ``stop`` (default: the last)."""
        stop = self.n_blocks if stop is None else stop
        if not 0 <= start <= stop <= self.n_blocks:
            raise ValueError(f"blocks {start}..{stop} are outside 0..{self.n_blocks}")
        h = x if self.batch_first else x.transpose(0, 1)  # the blocks' own layout
        for block in self.visual.transformer.resblocks[start:stop]:
            h = block(h, attn_mask=None)
        return h if self.batch_first else h.transpose(0, 1)  # [B, L, W]

    def finish(self, x: torch.Tensor, n_tokens: int | None = None) -> torch.Tensor:
        """``[B, L(+P), W]`` after the last block -> ``[B, D]`` projected embedding; only the first
        ``n_tokens`` (the image's own; prompt tokens appended after them leave) are pooled."""
        pooled, _ = self.visual._pool(x[:, :n_tokens] if n_tokens else x)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Stored tokens after block ``start`` ``[B, L, W]`` -> the image embedding ``[B, D]``."""
        return self.finish(self.run_blocks(tokens.to(self.visual.proj.dtype), start), tokens.shape[1])
