"""ECPA's emotion prompts and alignment losses (ECPA §III-C–F, docs/papers.md#ecpa): AU selection, the AU-aware alignment
loss with Hungarian matching, the ER-sentence alignment losses, and dynamic weight averaging.

**AU selection** (``au_summary`` / ``top_k_aus``): over the valid frames of a clip, each AU gets a
*confidence* and an *intensity* in [0, 1]. OpenFace: confidence = the fraction of valid frames in which
its presence classifier fires (``AUxx_c``), ties broken by the mean intensity; intensity = mean
``AUxx_r`` / 5. py-feat (AU probabilities only): confidence = intensity = the mean probability. The
K AUs of highest confidence are the clip's AU prompts (ties: lower AU index first). A clip with no valid
frame has no AU prompt (``has_frame`` False: its prompts are left out of attention and of ``L_AUCL``).

**L_AUCL** (eq. 9–12): ``D = cos(a_i, t_j)`` between the K AU prompts and the caption's non-``[MASK]``
word prompts; the Hungarian method (scipy ``linear_sum_assignment``, maximising the summed cosine) pairs
each AU with one word (min(K, J) pairs); a matched pair with ``D > T_C`` is positive,
``max(0, m - D)^2``, and every *other* pair contributes ``D^2``. "Others" is read two ways
(``others``): ``"matched"`` (default, eq. 11 literally: Y is defined on the matched similarity, so the
others are the matched pairs with ``D <= T_C``) or ``"all"`` (also every unmatched AU-word pair of the
clip as a negative). The loss of a clip is the mean over its scored pairs, the batch loss the mean over
clips that have an AU prompt and a word. The assignment is a discrete choice: no gradient flows
through it, only through ``D`` of the chosen pairs.

**DWA** (eq. 16 with the issue's form): ``w_k = K · softmax_k(r_k / T)``, ``r_k = L_k(t-1) / L_k(t-2)``
of the epoch means, all weights 1 for the first two epochs; K = the number of active losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["au_summary", "top_k_aus", "hungarian_mask", "aucl_loss", "au_alignment_loss", "er_alignment_loss",
           "dwa_weights"]


def au_summary(values: torch.Tensor, valid: torch.Tensor, presence: torch.Tensor | None = None,
               scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``values [B, F, A]`` (intensities or probabilities), ``valid [B, F]``, optional ``presence [B, F, A]``
    (0/1) -> ``(confidence [B, A], intensity [B, A], has_frame [B])`` over the valid frames (module doc);
    ``scale`` divides the intensities (5 for OpenFace's 0–5)."""
    w = valid.float()[..., None]  # [B, F, 1]
    count = w.sum(dim=1)  # [B, 1]
    denom = count.clamp(min=1)
    intensity = ((values.float() * w).sum(dim=1) / denom / scale).clamp(0, 1)  # [B, A]
    conf = (presence.float() * w).sum(dim=1) / denom if presence is not None else intensity
    return conf, intensity, count[:, 0] > 0


def top_k_aus(confidence: torch.Tensor, intensity: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, k]`` indices of the k AUs of highest confidence, ties by higher intensity, then lower index."""
    if not 1 <= k <= confidence.shape[1]:
        raise ValueError(f"au_top_k must be 1..{confidence.shape[1]} (the AUs available), got {k}")
    order = torch.sort(intensity, dim=1, descending=True, stable=True).indices  # secondary key
    by_conf = torch.sort(confidence.gather(1, order), dim=1, descending=True, stable=True).indices
    return order.gather(1, by_conf)[:, :k]


def hungarian_mask(sim: torch.Tensor, rows_valid: torch.Tensor, cols_valid: torch.Tensor) -> torch.Tensor:
    """``[B, K, J]`` bool: the pairs of a maximum-sum assignment of each item's valid rows to its valid
    columns (``sim [B, K, J]``, read without gradient)."""
    s = sim.detach().float().cpu().numpy()
    rv, cv = rows_valid.cpu().numpy(), cols_valid.cpu().numpy()
    out = np.zeros(s.shape, dtype=bool)
    for b in range(s.shape[0]):
        r, c = np.flatnonzero(rv[b]), np.flatnonzero(cv[b])
        if len(r) and len(c):
            i, j = linear_sum_assignment(s[b][np.ix_(r, c)], maximize=True)
            out[b, r[i], c[j]] = True
    return torch.from_numpy(out).to(sim.device)


def _cosine(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.normalize(a.float(), dim=-1) @ F.normalize(t.float(), dim=-1).transpose(1, 2)  # [B, K, J]


def _item_mean(term: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over items of each item's weighted mean of ``term [B, K, J]``; items with no weight are skipped."""
    w = weight.float()
    per = (term * w).sum(dim=(1, 2))
    n = w.sum(dim=(1, 2))
    used = n > 0
    if not bool(used.any()):
        return term.sum() * 0.0  # keeps the graph (and the device) with a zero value
    return (per[used] / n[used]).mean()


def aucl_loss(au: torch.Tensor, words: torch.Tensor, au_valid: torch.Tensor, word_valid: torch.Tensor,
              threshold: float = 0.3, margin: float = 0.5, others: str = "matched") -> torch.Tensor:
    """``L_AUCL`` of AU prompts ``[B, K, W]`` and word prompts ``[B, J, W]`` (module doc)."""
    if others not in ("matched", "all"):
        raise ValueError(f"aucl_others must be 'matched' or 'all', got {others!r}")
    d = _cosine(au, words)  # [B, K, J]
    pairs = au_valid[:, :, None] & word_valid[:, None, :]
    matched = hungarian_mask(d, au_valid, word_valid)
    positive = matched & (d > threshold)
    term = torch.where(positive, F.relu(margin - d) ** 2, d**2)
    return _item_mean(term, matched if others == "matched" else pairs)


def au_alignment_loss(kind: str, au: torch.Tensor, words: torch.Tensor, au_valid: torch.Tensor,
                      word_valid: torch.Tensor, threshold: float = 0.3, margin: float = 0.5,
                      others: str = "matched", temperature: float = 0.1) -> torch.Tensor:
    """The AU-word alignment of Table VI: ``aucl`` (eq. 12), ``contrastive`` (the classic contrastive loss
    on the distance ``1 - D``: matched pairs ``(1 - D)^2``, every other pair ``max(0, m - (1 - D))^2``; no
    threshold) or ``ce`` (each AU's matched word among the clip's words: cross-entropy of ``D / temperature``)."""
    if kind == "aucl":
        return aucl_loss(au, words, au_valid, word_valid, threshold, margin, others)
    d = _cosine(au, words)
    pairs = au_valid[:, :, None] & word_valid[:, None, :]
    matched = hungarian_mask(d, au_valid, word_valid)
    if kind == "contrastive":
        term = torch.where(matched, (1 - d) ** 2, F.relu(margin - (1 - d)) ** 2)
        return _item_mean(term, pairs)
    if kind == "ce":
        logits = (d / temperature).masked_fill(~word_valid[:, None, :], -torch.inf)  # [B, K, J]
        rows = matched.any(dim=2)  # [B, K] AUs with a matched word
        if not bool(rows.any()):
            return d.sum() * 0.0
        return F.cross_entropy(logits[rows], matched[rows].float().argmax(dim=1))
    raise ValueError(f"au_loss must be aucl, contrastive or ce, got {kind!r}")


def er_alignment_loss(kind: str, er: torch.Tensor, sentence: torch.Tensor, labels: torch.Tensor,
                      classifier: torch.nn.Linear, class_tokens: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The ER-sentence alignment of Table VI: ``ce`` (``L_ER``, eq. 8: cross-entropy of ``classifier`` on
    ``[P_ER ; P_S]``), ``similarity`` (global similarity loss ``1 - cos(P_ER, P_S)``) or ``similarity-ce``
    (cross-entropy of ``cos(P_ER, [CLASS-k]) / temperature`` over the K class tokens)."""
    if kind == "ce":
        return F.cross_entropy(classifier(torch.cat([er, sentence], dim=-1)).float(), labels)
    if kind == "similarity":
        return (1 - F.cosine_similarity(er.float(), sentence.float(), dim=-1)).mean()
    if kind == "similarity-ce":
        sim = F.normalize(er.float(), dim=-1) @ F.normalize(class_tokens.float(), dim=-1).T  # [B, C]
        return F.cross_entropy(sim / temperature, labels)
    raise ValueError(f"er_loss must be ce, similarity or similarity-ce, got {kind!r}")


def dwa_weights(history: Sequence[dict], names: Sequence[str], temperature: float = 2.0) -> dict[str, float]:
    """Loss weights for the next epoch from the per-epoch mean losses in ``history`` (oldest first)."""
    if len(history) < 2:
        return dict.fromkeys(names, 1.0)
    prev, before = history[-1], history[-2]
    r = torch.tensor([float(prev[k]) / max(float(before[k]), 1e-12) for k in names], dtype=torch.float64)
    w = len(names) * torch.softmax(r / temperature, dim=0)
    return {k: float(v) for k, v in zip(names, w, strict=True)}
