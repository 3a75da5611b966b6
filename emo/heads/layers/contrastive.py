"""Contrastive objectives of EmoAsst (docs/papers.md#emoasst): CLIP's symmetric loss and SupCon.

``clip_contrastive_loss`` (the visual fusion module): for a batch of video features ``v_b`` and the
text feature ``t_b`` of each item, with unit vectors and ``s`` = CLIP's logit scale (100)::

    S_bk = s · v̂_b · t̂_k
    L = ( CE_rows(S, b) + CE_rows(Sᵀ, b) ) / 2          (item b's own text is the only positive)

``supcon_loss`` (the auditory adapter; Khosla et al. 2020, the paper's Eq. 1) over a set ``M`` of unit
features ``z_i`` with labels ``y_i`` (audio and text features of a batch together, |M| = 2B)::

    P(i) = {p ≠ i : y_p = y_i},   A(i) = {a ≠ i}
    ℓ_i  = -1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )
    L    = mean of ℓ_i over the anchors with |P(i)| > 0

The paper writes the sum over anchors; emo takes the mean (as Khosla et al.'s reference code does), so
the loss does not grow with the batch; anchors without a positive contribute nothing (0 when none has
one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .similarity import cosine_logits, fp32

__all__ = ["clip_contrastive_loss", "supcon_loss"]


def clip_contrastive_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """Symmetric InfoNCE between ``video [B, D]`` and ``text [B, D]`` (row b of each is a pair)."""
    if video.shape != text.shape or video.ndim != 2:
        raise ValueError(f"video and text must both be [B, D], got {tuple(video.shape)} and {tuple(text.shape)}")
    with fp32(video.device):  # float32 whatever the step's autocast (layers.similarity)
        logits = cosine_logits(video, text, logit_scale)  # [B, B]
        target = torch.arange(len(video), device=video.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss of ``features [M, D]`` (normalised here) with ``labels [M]``."""
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be [M, D] and labels [M], got {tuple(features.shape)}, {tuple(labels.shape)}")
    with fp32(features.device):  # float32 whatever the step's autocast (layers.similarity)
        return _supcon(features if features.is_floating_point() else features.float(), labels, tau)


def _supcon(features: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """:func:`supcon_loss` with autocast off."""
    sim = cosine_logits(features, features) / tau  # [M, M]
    eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)  # [M, M], a ≠ i
    positive = (labels[:, None] == labels[None, :]) & ~eye  # [M, M]
    n_pos = positive.sum(dim=1)  # [M]
    has = n_pos > 0
    if not has.any():
        return sim.sum() * 0.0  # no anchor has a positive: nothing to pull together
    mean_log_prob = (log_prob.masked_fill(~positive, 0.0)).sum(dim=1)[has] / n_pos[has]  # [anchors]
    return -mean_log_prob.mean()
