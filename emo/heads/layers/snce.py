"""EmotionCLIP's sentiment-guided contrastive loss, SNCE (the EmotionCLIP paper's eqs. 5–7; docs/papers.md#emotionclip).

For a batch of ``B`` video features ``v_i``, the text feature ``t_i`` of each item and the frozen
sentiment model's logits ``s_i ∈ R^K`` (K = 7 in the paper) of each text::

    p_i       = softmax(s_i)
    KL[i, j]  = KL(p_j ‖ p_i) = Σ_k p_j,k (log p_j,k − log p_i,k)
    w[i, j]   = β / |KL[i, j]|   (i ≠ j),     w[i, i] = 0
    L[i, j]   = scale · v̂_i · t̂_j                                   (unit vectors)
    ℓ_v2t(i)  = −log( exp(L[i, i]) / Σ_j exp(L[i, j] − w[i, j]) )       rows of L
    ℓ_t2v(i)  = −log( exp(L[i, i]) / Σ_j exp(Lᵀ[i, j] − w[i, j]) )      rows of Lᵀ, the same w
    loss      = ( mean_i ℓ_v2t(i) + mean_i ℓ_t2v(i) ) / 2

which is eq. 7's ``(SNCE(v, t, s) + SNCE(t, v, s)) / 2|B|``. A pair of affectively similar texts gets
a large ``w`` and so leaves the softmax's denominator (a suppressed false negative); two identical
sentiment rows give ``KL = 0``, ``w = +inf``: that negative is removed exactly (``exp(−inf) = 0``), with
a finite loss and finite gradients. ``β = 0`` gives ``w = 0`` exactly (no ``0/0``): plain symmetric
InfoNCE.

Conventions of the official code (github Xeaver/EmotionCLIP, ``src/models/loss_v2.py``), kept here:

- **KL direction** (a recorded departure from the paper's text): eq. 6 writes ``KL(s_i ‖ s_j)``; the
  code computes ``KL[i, j] = KL(p_j ‖ p_i)`` (``pairwise_kl_div(log p_i, p_j)``), i.e. ``wᵀ`` of the
  paper's. emo follows the code.
- the absolute value ``|KL|`` (the code's guard against tiny negative rounding errors);
- the **same** ``w`` (not transposed) is subtracted from the video→text and the text→video logits;
- the two cross-entropies are means over the batch, and the loss is their mean;
- ``β`` is the code's ``loss_reweight_scale`` (default 10, :data:`DEFAULT_BETA`).

emo's own choices: the weights are constants of the loss (``sentiment_logits`` are detached: the
sentiment model is frozen); the KL is computed from differences of log-probabilities, so identical
rows give exactly 0 (the code's ``Σ p log p − Σ p log q`` form may leave a rounding residue); the
whole loss runs in float32 with autocast off, whatever the input dtypes.

**Logit scale.** As in CLIP, a head holds the learnable *log* scale (:func:`log_scale_parameter`,
initialised to ``log(1/0.07)``) and passes it to :func:`snce_loss` as ``log_scale``; the loss uses
``scale = logit_scale(log_scale) = exp(min(log_scale, log 100))``, so the scale is at most 100. The
official trainer instead clamps the parameter in place to ``[0, log 100]`` after every optimiser step
(``src/engine/trainer.py``); :func:`clamp_logit_scale_` does that, and a trainer that calls it keeps the
parameter where the forward clamp passes its gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_BETA",
    "LOG_SCALE_INIT",
    "LOGIT_SCALE_MAX",
    "clamp_logit_scale_",
    "log_scale_parameter",
    "logit_scale",
    "sentiment_weights",
    "snce_loss",
]

DEFAULT_BETA = 10.0  # the official code's loss_reweight_scale (src/options.py)
LOG_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
LOGIT_SCALE_MAX = 100.0  # CLIP's clamp: the scale never exceeds 100
_LOG_SCALE_MAX = math.log(LOGIT_SCALE_MAX)


def log_scale_parameter(init: float = LOG_SCALE_INIT) -> nn.Parameter:
    """A learnable scalar log-scale, initialised to ``log(1/0.07)`` as in CLIP."""
    return nn.Parameter(torch.tensor(float(init)))


def logit_scale(log_scale: torch.Tensor | float) -> torch.Tensor:
    """``exp(min(log_scale, log 100))``: the multiplicative scale, at most :data:`LOGIT_SCALE_MAX` (float32).

    The gradient passes for ``log_scale <= log 100`` (the bound included, compared in float32, so a
    parameter that :func:`clamp_logit_scale_` has put on the bound keeps its gradient) and is 0 above.
    """
    log_scale = torch.as_tensor(log_scale).float()
    bound = torch.full_like(log_scale, _LOG_SCALE_MAX)  # float32(log 100): exp gives 100 to float32 rounding
    return torch.where(log_scale > bound, bound, log_scale).exp()


@torch.no_grad()
def clamp_logit_scale_(log_scale: torch.Tensor) -> torch.Tensor:
    """Clamp a log-scale parameter in place to ``[0, log 100]`` (call after each optimiser step)."""
    return log_scale.clamp_(0.0, _LOG_SCALE_MAX)


def sentiment_weights(sentiment_logits: torch.Tensor, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """``w [B, B]`` (float32, no gradient) from the sentiment logits ``[B, K]``: see the module docstring.

    ``w[i, j] = β / |KL(p_j ‖ p_i)|`` off the diagonal (``+inf`` where the two rows give the same
    distribution), 0 on it; ``β = 0`` gives exactly 0 everywhere. Raises ValueError for a negative β
    (it would turn suppression into amplification, with ``+inf`` logits) or a non-``[B, K]`` input.
    """
    if sentiment_logits.ndim != 2:
        raise ValueError(f"sentiment_logits must be [B, K], got {tuple(sentiment_logits.shape)}")
    beta = float(beta)
    if not beta >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    B = sentiment_logits.shape[0]
    if beta == 0.0:
        return torch.zeros(B, B, dtype=torch.float32, device=sentiment_logits.device)
    log_p = F.log_softmax(sentiment_logits.detach().float(), dim=-1)  # [B, K]
    # KL[i, j] = Σ_k p_j,k (log p_j,k − log p_i,k): index j is the KL's first argument
    diff = log_p[None, :, :] - log_p[:, None, :]  # [B(i), B(j), K] = log p_j − log p_i
    kl = (log_p.exp()[None, :, :] * diff).sum(dim=-1).abs()  # [B, B]
    w = beta / kl  # [B, B]; KL = 0 -> +inf (β > 0), never 0/0
    return w.fill_diagonal_(0.0)


def _subtract_weights(logits: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``logits − w`` with ``w = +inf`` mapped to ``−inf`` through a mask (no inf in any arithmetic)."""
    removed = torch.isinf(w)  # [B, B]
    return (logits - w.masked_fill(removed, 0.0)).masked_fill(removed, float("-inf"))


def snce_loss(
    video: torch.Tensor,
    text: torch.Tensor,
    sentiment_logits: torch.Tensor,
    log_scale: torch.Tensor | float = LOG_SCALE_INIT,
    beta: float = DEFAULT_BETA,
) -> torch.Tensor:
    """SNCE between ``video [B, D]`` and ``text [B, D]`` (row b of each is a pair): a float32 scalar.

    ``video`` and ``text`` are L2-normalised here; ``sentiment_logits [B, K]`` are the frozen
    sentiment model's raw logits of each text; ``log_scale`` is the *log* of the logit scale (a head's
    :func:`log_scale_parameter`), turned into ``min(exp(log_scale), 100)``; ``beta`` is β of eq. 6.
    Any input dtype; the computation is float32 with autocast off.
    """
    if video.ndim != 2 or video.shape != text.shape:
        raise ValueError(
            f"video and text must both be [B, D], got {tuple(video.shape)} and {tuple(text.shape)}"
        )
    if sentiment_logits.ndim != 2 or sentiment_logits.shape[0] != video.shape[0]:
        raise ValueError(
            f"sentiment_logits must be [B, K] with B = {video.shape[0]}, got {tuple(sentiment_logits.shape)}"
        )
    with torch.autocast(device_type=video.device.type, enabled=False):
        scale = logit_scale(torch.as_tensor(log_scale, device=video.device))
        v = F.normalize(video.float(), dim=-1)  # [B, D]
        t = F.normalize(text.float(), dim=-1)  # [B, D]
        logits = scale * v @ t.T  # [B(video), B(text)]
        w = sentiment_weights(sentiment_logits, beta)  # [B, B], indexed [anchor, candidate] on both sides
        target = torch.arange(len(v), device=v.device)
        v2t = F.cross_entropy(_subtract_weights(logits, w), target)
        t2v = F.cross_entropy(_subtract_weights(logits.T, w), target)
        return 0.5 * (v2t + t2v)
