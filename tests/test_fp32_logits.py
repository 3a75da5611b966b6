"""Issue 16, item 2: every head that scales cosines computes its similarities and losses in float32, even
when the step runs under bf16 autocast. On the CPU, ``torch.autocast("cpu", dtype=torch.bfloat16)`` rounds
matmuls as CUDA's bf16 autocast does, so each check runs a head's scoring or loss under it and compares
with the float32 result — and shows that the plain formula under the same autocast is off by more than
the margins that decide the classes (the mistake the helpers prevent)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emo.heads.cache_classifier import tip_logits, zero_shot_logits
from emo.heads.layers.contrastive import clip_contrastive_loss, supcon_loss
from emo.heads.layers.similarity import cosine_logits, dot_logits
from emo.heads.pe_clip import backward_loss, bidirectional_loss, forward_loss
from emo.heads.pe_clip import cosine_logits as pe_logits

from .test_pe_clip import build, tiny_features

TAU = 0.01


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def close_prompts(n_cls: int = 7, dim: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v [4, D], w [C, D])`` like CA prompts: class embeddings whose cosines with ``v`` are all near 0.64
    and differ by a few 1e-3 (a few 0.1 in logit at τ = 0.01), while bf16's step there is 2^-8 ≈ 0.004."""
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(dim, generator=g), dim=0)
    w = F.normalize(base + 0.25 * F.normalize(torch.randn(n_cls, dim, generator=g), dim=-1), dim=-1)  # [C, D]
    v = F.normalize(base + 0.05 * torch.randn(4, dim, generator=g), dim=-1) * 3.0  # [4, D], not unit
    return v, w


def naive(v, w, tau=TAU):
    """The formula without the helper: under autocast its matmul runs in bf16."""
    return F.normalize(v, dim=-1) @ F.normalize(w, dim=-1).T / tau


def test_the_plain_formula_under_bf16_autocast_is_coarser_than_the_class_margins():
    v, w = close_prompts()
    exact = naive(v, w)
    with bf16():
        rough = naive(v, w).float()
    gaps = (exact.sort(dim=-1).values.diff(dim=-1)).abs()
    assert float(gaps.median()) < 0.5  # neighbouring classes are closer than bf16's step at 98
    assert float((rough - exact).abs().max()) > 0.05  # ... and bf16 moves logits by more than that
    assert not torch.equal(rough.argsort(dim=-1), exact.argsort(dim=-1))  # classes swap or tie


def test_the_shared_helpers_give_float32_under_autocast():
    v, w = close_prompts()
    exact = naive(v, w)
    with bf16():
        got = cosine_logits(v, w, 1 / TAU)
        unit = dot_logits(F.normalize(v, dim=-1), F.normalize(w, dim=-1), 1 / TAU)
        half = cosine_logits(v.bfloat16(), w.bfloat16(), 1 / TAU)  # low-precision inputs come out float32
    assert got.dtype == unit.dtype == half.dtype == torch.float32
    assert torch.allclose(got, exact, rtol=0, atol=1e-4) and torch.allclose(unit, exact, rtol=0, atol=1e-4)
    assert torch.equal(got.argsort(dim=-1), exact.argsort(dim=-1))
    scale = torch.tensor(100.0, requires_grad=True)  # a learnable scale keeps its gradient
    with bf16():
        dot_logits(F.normalize(v, dim=-1), w, scale).sum().backward()
    assert scale.grad is not None


def test_pe_clip_logits_and_losses_are_float32_under_autocast():
    v, w = close_prompts()
    y = torch.tensor([0, 3, 5, 6])
    vj = v[:, None, :] + 0.01 * torch.randn(4, len(w), v.shape[1], generator=torch.Generator().manual_seed(1))
    exact = (pe_logits(v, w, TAU), forward_loss(v, w, y, TAU), backward_loss(vj, w, y, TAU),
             bidirectional_loss(v, vj, w, y, 0.7, TAU)[0])
    with bf16():
        got = (pe_logits(v, w, TAU), forward_loss(v, w, y, TAU), backward_loss(vj, w, y, TAU),
               bidirectional_loss(v, vj, w, y, 0.7, TAU)[0])
        rough_fwd = F.cross_entropy(naive(v, w), y)
    for e, g in zip(exact, got, strict=True):
        assert g.dtype == torch.float32 and torch.allclose(g, e, rtol=1e-5, atol=1e-5)
    assert abs(float(rough_fwd) - float(exact[1])) > 1e-3  # what the step would have trained on


def test_pe_clip_head_scores_are_float32_cosines_of_what_its_network_gives_under_autocast():
    """A CPU run of the head under bf16 autocast: the network runs in bf16, the logits of its output in
    float32 (equal to the float32 cosines of that output, not to their bf16 rounding)."""
    fd = tiny_features()
    head = build(fd)
    head._autocast = bf16  # the CPU stand-in for CUDA's autocast
    batch = head.inputs(fd, np.arange(8), False, torch.Generator())
    with torch.no_grad(), bf16():
        scores, feats = head.scores_and_features(batch)
        w = head.module.class_weights()
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, feats @ F.normalize(w.float(), dim=-1).T / head.config.tau, rtol=0, atol=1e-3)
    predicted = head.predict_scores(fd)
    assert predicted.dtype == np.float32 and np.isfinite(predicted).all()


def test_emoasst_losses_and_cache_logits_are_float32_under_autocast():
    v, w = close_prompts()
    text = w[:4] + 0.01
    labels = torch.tensor([0, 1, 0, 1])
    z = torch.cat([v, text])
    feats = {"video": F.normalize(v, dim=-1)}
    keys = {"video": F.normalize(w, dim=-1)}
    values = torch.eye(len(w))
    exact = (clip_contrastive_loss(v, text), supcon_loss(z, torch.cat([labels, labels])),
             zero_shot_logits(feats, keys["video"]), tip_logits(feats, keys["video"], keys, values, {"video": 1.0}, 5.5))
    with bf16():
        got = (clip_contrastive_loss(v, text), supcon_loss(z, torch.cat([labels, labels])),
               zero_shot_logits(feats, keys["video"]), tip_logits(feats, keys["video"], keys, values, {"video": 1.0}, 5.5))
        rough_zero = 100.0 * feats["video"] @ keys["video"].T
    for e, g in zip(exact, got, strict=True):
        assert g.dtype == torch.float32 and torch.allclose(g, e, rtol=1e-5, atol=1e-5)
    assert float((rough_zero.float() - exact[2]).abs().max()) > 0.05


@pytest.mark.parametrize("name", ["vfm", "zero-shot", "emotionclip"])
def test_other_heads_score_in_float32_under_autocast(name):
    """The EmoAsst feature heads and the zero-shot baseline: logits of a bf16 step equal float32 ones."""
    from emo.heads.zero_shot import ZeroShotConfig, ZeroShotHead

    v, w = close_prompts()
    if name == "zero-shot":
        head = ZeroShotHead(ZeroShotConfig(), [f"c{i}" for i in range(len(w))])
        head.weights = F.normalize(w, dim=-1)

        class Data:  # pooled_video reads clip/cls [n, M, N, V, D]
            arrays = {"clip/cls": v[:, None, None, None, :]}

        with bf16():
            got = torch.from_numpy(head.predict_scores(Data()))
    elif name == "emotionclip":  # retrieval scores: plain cosines (bf16 would move them by ~0.004)
        from emo.heads.emotionclip import EmotionCLIPHead

        head = SimpleNamespace(module=lambda frames: frames)
        with bf16():
            got = 100.0 * EmotionCLIPHead.scores(head, {"frames": v, "text": w})
    else:
        from emo.heads.text_guided import TextGuidedHead

        class Fixed(torch.nn.Module):
            class_weights = F.normalize(w, dim=-1)

            def forward(self, z):
                return z

        head = SimpleNamespace(config=SimpleNamespace(logit_scale=100.0), module=Fixed())  # the VFM's scoring
        with bf16():
            got = TextGuidedHead.scores_and_features(head, {"z": v})[0]
    exact = naive(v, w, 0.01)
    assert got.dtype == torch.float32 and torch.allclose(got, exact, rtol=0, atol=1e-4)
