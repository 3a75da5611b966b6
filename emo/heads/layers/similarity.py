"""Scaled cosine similarities and their losses in float32, whatever autocast the step runs under.

A head that divides cosines by a small temperature (PE-CLIP's τ = 0.01, CLIP's logit scale 100, SupCon's
τ = 0.07) turns differences of 0.001 in cosine into differences of 0.1 in logit. Under bf16 autocast
(CUDA, or ``torch.autocast("cpu", dtype=torch.bfloat16)``) the matmul that gives the cosines rounds them
to 8 bits of mantissa: ``cos / 0.01 ≈ 98`` falls on steps of 0.5, and classes whose prompts differ by less
than that tie or swap (issue 16, item 2). These helpers leave autocast for the similarity and whatever
follows it inside :func:`fp32` (softmax, cross-entropy), so the rest of a step may stay in low precision::

    logits = scale · â b̂ᵀ          â, b̂ the rows of a, b divided by their L2 norms

in float32 (float64 inputs stay float64). ``cosine_logits`` normalises; ``dot_logits`` is for rows that
are unit length already. A loss computed from such logits is float32 too: autocast keeps
``cross_entropy`` / ``log_softmax`` in float32, and :func:`fp32` turns autocast off for the rest.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

__all__ = ["fp32", "wide", "cosine_logits", "dot_logits"]


def fp32(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which autocast is off on ``device``'s type (tensors must be cast with ``.float()``)."""
    kind = torch.device(device).type
    return torch.autocast(device_type=kind, enabled=False)


def wide(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in one floating dtype of at least float32 (float64 when any is float64)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return tuple(t.to(dtype) for t in tensors)


def cosine_logits(a: torch.Tensor, b: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``scale · cos(a_i, b_k)``: ``a [..., D]``, ``b [K, D]`` -> ``[..., K]`` at least float32, autocast off."""
    with fp32(a.device):
        a, b = wide(a, b)
        return dot_logits(F.normalize(a, dim=-1), F.normalize(b, dim=-1), scale)


def dot_logits(a: torch.Tensor, b: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``scale · a bᵀ`` of rows that are unit length already: ``[..., D] × [K, D]`` -> ``[..., K]``, at least
    float32, autocast off (a tensor ``scale``, e.g. a learnable one, keeps its gradient)."""
    with fp32(a.device):
        a, b = wide(a, b)
        return (scale.to(a.dtype) if torch.is_tensor(scale) else float(scale)) * (a @ b.T)
