"""DuSE's LSEA (seed 003, eqs. 9-13): equations re-derived per item, β ends, frame order, masks, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emo.heads.layers.lsea import LSEA

B, T, D, C, N = 2, 3, 4, 3, 4


def _x() -> torch.Tensor:
    """Fixed, asymmetric frames ``[B, T, D]`` (no two frames, items or channels alike)."""
    return torch.sin(torch.arange(B * T * D, dtype=torch.float64) * 0.7 + 0.3).view(B, T, D) * 2.0


def _text() -> torch.Tensor:
    """Fixed, asymmetric class features ``[C, D]``."""
    return torch.cos(torch.arange(C * D, dtype=torch.float64) * 1.3 - 0.2).view(C, D)


def _model(seed: int = 0, **kw) -> LSEA:
    torch.manual_seed(seed)
    return LSEA(d_model=D, heads=N, **kw).double()


def _softmax(values: list[torch.Tensor]) -> list[torch.Tensor]:
    exps = [torch.exp(v) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.dot(b) / (a.norm() * b.norm())


def _reference(model: LSEA, x, text, mask=None):
    """Eqs. 9-13 and the logits one item, frame, head and class at a time, with the module's own weights."""
    Wq, bq, Wk, Wv = model.query.weight, model.query.bias, model.key.weight, model.value.weight
    Wl, bl, ws = model.linear.weight, model.linear.bias, model.score.weight[0]
    v_os, t_os, v_gs, logits = [], [], [], []
    for b in range(x.shape[0]):
        frames = [x[b, t] for t in range(x.shape[1]) if mask is None or mask[b, t]]
        q = [Wq @ f + bq for f in frames]
        k = [Wk @ f for f in frames]
        v = [Wv @ f for f in frames]
        v_m = []
        for i in range(len(frames)):  # eq. 9 per query frame, then eq. 10
            a = _softmax([q[i].dot(k[j]) / math.sqrt(D) for j in range(len(frames))])
            v_m.append(Wl @ sum(a[j] * v[j] for j in range(len(frames))) + bl)
        w = _softmax([ws.dot(m) for m in v_m])  # eq. 11: softmax over time
        v_o = sum(w[i] * v_m[i] for i in range(len(frames)))
        heads_t, fused = [], torch.zeros(D, dtype=x.dtype)
        for h in range(N):
            rows = slice(h * D, (h + 1) * D)  # head h's own D -> D projections
            vt = model.proj_v.weight[rows] @ v_o + model.proj_v.bias[rows]
            ft = [model.proj_t.weight[rows] @ text[c] + model.proj_t.bias[rows] for c in range(C)]
            p = _softmax([_cos(vt, ft[c]) / model.temperature for c in range(C)])  # over classes
            t_o = sum(p[c] * ft[c] for c in range(C))  # eq. 12: the projected F̃_T
            heads_t.append(t_o)
            fused = fused + model.beta * vt + (1 - model.beta) * t_o
        v_g = fused / N  # eq. 13
        v_os.append(v_o)
        t_os.append(torch.stack(heads_t))
        v_gs.append(v_g)
        logits.append(torch.stack([100.0 * _cos(v_g, text[c]) for c in range(C)]))
    return torch.stack(v_os), torch.stack(t_os), torch.stack(v_gs), torch.stack(logits)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_matches_the_equations_step_by_step(temperature):
    model = _model(temperature=temperature)
    x, text = _x(), _text()
    v_o, t_o, v_g = model.forward_features(x, text)
    logits = model(x, text)
    ref = _reference(model, x, text)
    for got, want in zip((v_o, t_o, v_g, logits), ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert v_o.shape == (B, D) and t_o.shape == (B, N, D) and v_g.shape == (B, D) and logits.shape == (B, C)
    # the data is sharp enough: items, heads and classes all differ
    assert (v_o[0] - v_o[1]).abs().min() > 1e-3 and (t_o[:, 0] - t_o[:, 1]).abs().max() > 1e-3
    assert logits.std(dim=1).min() > 1.0


def test_matches_the_equations_with_a_mask():
    model = _model(seed=1)
    x, text = _x(), _text()
    mask = torch.tensor([[True, False, True], [True, True, False]])
    x = x.clone()
    x[~mask] = float("nan")  # padding content must never be read
    ref = _reference(model, x, text, mask)
    got = model.forward_features(x, text, mask) + (model(x, text, mask),)
    for g, w in zip(got, ref, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_average_pooling_is_the_masked_mean_and_keeps_the_heads():
    model = _model(pooling="average")
    assert not hasattr(model, "query") and hasattr(model, "proj_v")
    x, text = _x(), _text()
    mask = torch.tensor([[True, False, True], [True, True, True]])
    v_o, _, v_g = model.forward_features(x, text, mask)
    torch.testing.assert_close(v_o[0], (x[0, 0] + x[0, 2]) / 2, rtol=0, atol=1e-15)
    torch.testing.assert_close(v_o[1], x[1].mean(dim=0), rtol=0, atol=1e-15)
    _, _, v_g_again = model.semantic(v_o, text)
    torch.testing.assert_close(v_g, v_g_again, rtol=0, atol=0)


def test_lsea_off_is_clip_cosine_of_the_mean():
    model = _model(pooling="average", aggregate=False)
    assert sum(p.numel() for p in model.parameters()) == 0  # Table III's row without LSEA
    x, text = _x(), _text()
    want = 100.0 * F.cosine_similarity(x.mean(dim=1)[:, None], text[None], dim=-1)  # [B, C]
    torch.testing.assert_close(model(x, text), want, rtol=1e-12, atol=1e-12)


def _scale_proj_v(model: LSEA, factor: float) -> None:
    with torch.no_grad():  # Ṽ_o(i) -> factor · Ṽ_o(i): every cosine with F̃_T(i), hence T̃_o(i), is unchanged
        model.proj_v.weight.mul_(factor)
        model.proj_v.bias.mul_(factor)


def _perturb_proj_t(model: LSEA) -> None:
    with torch.no_grad():  # changes F̃_T(i), hence T̃_o(i), and nothing else
        model.proj_t.weight.add_(
            torch.linspace(-0.5, 0.7, model.proj_t.weight.numel()).view_as(model.proj_t.weight)
        )


@pytest.mark.parametrize("beta", [0.0, 0.7, 1.0])
def test_beta_selects_visual_or_semantic_features(beta):
    x, text = _x(), _text()
    model = _model(beta=beta)
    v_o, t_o, v_g = model.forward_features(x, text)
    v_h = model.proj_v(v_o).view(B, N, D)
    torch.testing.assert_close(v_g, (beta * v_h + (1 - beta) * t_o).mean(dim=1), rtol=1e-12, atol=1e-12)
    before = model(x, text)

    scaled = _model(beta=beta)
    _scale_proj_v(scaled, 3.0)
    _, t_o_scaled, _ = scaled.forward_features(x, text)
    torch.testing.assert_close(t_o_scaled, t_o, rtol=1e-12, atol=1e-12)  # T̃_o blind to Ṽ_o's length
    moved_by_v = (scaled(x, text) - before).abs().max()

    perturbed = _model(beta=beta)
    _perturb_proj_t(perturbed)
    moved_by_t = (perturbed(x, text) - before).abs().max()

    if beta == 1.0:  # logits from Ṽ_o only: T̃_o ignored; a rescaled Ṽ_o keeps every cosine
        assert moved_by_t < 1e-10 and moved_by_v < 1e-10
        want = 100.0 * F.cosine_similarity(v_h.mean(dim=1)[:, None], text[None], dim=-1)
        torch.testing.assert_close(before, want, rtol=1e-12, atol=1e-12)
    elif beta == 0.0:  # logits from T̃_o only: Ṽ_o's length is invisible, F̃_T is not
        assert moved_by_v < 1e-10 and moved_by_t > 1e-2
        want = 100.0 * F.cosine_similarity(t_o.mean(dim=1)[:, None], text[None], dim=-1)
        torch.testing.assert_close(before, want, rtol=1e-12, atol=1e-12)
    else:  # both matter
        assert moved_by_v > 1e-2 and moved_by_t > 1e-2


def _dyadic_frames(T: int = 4) -> torch.Tensor:
    """Frames on a grid of 1/4 so a mean over 4 frames is exact in any order."""
    return (torch.arange(B * T * D, dtype=torch.float64).remainder(7) - 3.0).mul(0.25).view(
        B, T, D
    ) + torch.tensor([0.0, 0.5, -0.25, 1.0], dtype=torch.float64)


def test_average_pooling_is_exactly_invariant_to_frame_order():
    model = _model(pooling="average")
    x, text = _dyadic_frames(), _text()
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(model(x, text), model(x[:, perm], text))
    mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    assert torch.equal(model(x, text, mask), model(x[:, perm], text, mask[:, perm]))


def test_attention_without_positions_is_frame_equivariant_and_pooled_invariant():
    """No positions (the paper's LSEA): self-attention + per-frame linear is permutation-equivariant, so
    attention pooling makes V_o invariant to frame order (up to rounding), yet not the plain mean."""
    model = _model()
    x, text = _dyadic_frames(), _text()
    perm = torch.tensor([2, 0, 3, 1])
    v_o, t_o, v_g = model.forward_features(x, text)
    v_o_p, t_o_p, v_g_p = model.forward_features(x[:, perm], text)
    for a, b in ((v_o, v_o_p), (t_o, t_o_p), (v_g, v_g_p)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x, text), model(x[:, perm], text), rtol=1e-12, atol=1e-12)
    # the temporal part weights frames by content: V_o is neither the mean of x nor of the linear's outputs
    assert (v_o - x.mean(dim=1)).abs().max() > 1e-2
    mean_pooled = _model(pooling="average")
    mean_pooled.load_state_dict(model.state_dict(), strict=False)
    assert (model(x, text) - mean_pooled(x, text)).abs().max() > 1e-2


def test_positions_make_the_attention_variant_order_sensitive():
    torch.manual_seed(0)
    model = LSEA(d_model=8, heads=N, positions=True).double()
    x, text = torch.randn(B, 4, 8, dtype=torch.float64), torch.randn(C, 8, dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    v_o, _, _ = model.forward_features(x, text)
    v_o_p, _, _ = model.forward_features(x[:, perm], text)
    assert (v_o - v_o_p).abs().max() > 1e-3
    assert (model(x, text) - model(x[:, perm], text)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "kw, where",
    [({}, "middle"), ({}, "end"), ({"pooling": "average"}, "middle"), ({"positions": True}, "end")],
)
def test_masked_frames_do_not_change_the_output(kw, where):
    model = _model(**kw)
    x, text = _x(), _text()
    junk = torch.tensor([float("nan"), float("inf"), -1e4, 7.0], dtype=torch.float64)
    if where == "end":  # item 0 has 2 real frames then padding; item 1 all 3
        padded = torch.cat([x, junk.expand(B, 1, D)], dim=1)  # [B, T + 1, D]
        mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
        padded[0, 2] = junk
        alone = [x[0:1, :2], x[1:2]]
    else:  # a padded frame between real ones (a frame keeps its index's position, so no positions here)
        padded = torch.stack([x[:, 0], junk.expand(B, D), x[:, 1], x[:, 2]], dim=1)  # [B, 4, D]
        mask = torch.tensor([[True, False, True, True], [True, False, True, False]])
        alone = [x[0:1], x[1:2, :2]]
    out = model(padded, text, mask)
    assert torch.isfinite(out).all()
    for b in range(B):
        torch.testing.assert_close(out[b : b + 1], model(alone[b], text), rtol=1e-12, atol=1e-12)
    # the mask matters: the same tensor without it would read the junk
    changed = padded.clone()
    changed[~mask] = 5.0
    assert (model(changed, text) - out).abs().max() > 1e-3


@pytest.mark.parametrize("kw", [{}, {"positions": True}, {"pooling": "average"}, {"beta": 0.0}])
def test_shapes_finite_and_every_parameter_gets_a_gradient(kw):
    torch.manual_seed(0)
    model = LSEA(d_model=16, heads=N, **kw)
    x, text = torch.randn(3, 5, 16), torch.randn(7, 16)  # F_T frozen: an argument without grad
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False, True, True, True, False]])
    logits = model(x, text, mask)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert text.grad is None and not text.requires_grad
    assert all(p.shape != text.shape for p in model.parameters())  # LSEA keeps no copy of F_T


def test_prompted_text_features_get_a_gradient():
    torch.manual_seed(0)
    model = LSEA(d_model=16, heads=N)
    text = torch.randn(7, 16, requires_grad=True)  # e.g. the output of a prompted text tower
    model(torch.randn(2, 5, 16), text).sum().backward()
    assert text.grad is not None and text.grad.abs().sum() > 0


def test_parameter_count_of_the_paper_defaults():
    model = LSEA()
    temporal = 3 * 512**2 + 512 + 512**2 + 512 + 512
    heads = 2 * (512 * 2048 + 2048)
    assert (temporal, heads) == (1_050_112, 2_101_248)
    assert sum(p.numel() for p in model.parameters()) == temporal + heads == 3_151_360
    assert (model.heads, model.beta, model.logit_scale, model.temperature) == (4, 0.7, 100.0, 1.0)


@pytest.mark.parametrize(
    "kw",
    [
        {"pooling": "max"},
        {"beta": 1.5},
        {"beta": -0.1},
        {"heads": 0},
        {"temperature": 0.0},
        {"positions": True, "pooling": "average"},
        {"positions": True, "d_model": 5},
    ],
)
def test_bad_options_raise(kw):
    with pytest.raises(ValueError):
        LSEA(**{"d_model": 4, **kw})


def test_bad_inputs_raise():
    model = _model()
    x, text = _x(), _text()
    with pytest.raises(ValueError, match="x must be"):
        model(x[..., :3], text)
    with pytest.raises(ValueError, match="text must be"):
        model(x, text[:, :3])
    with pytest.raises(ValueError, match="mask must be"):
        model(x, text, torch.ones(B, T))
    with pytest.raises(ValueError, match="at least one real frame"):
        model(x, text, torch.tensor([[True, True, True], [False, False, False]]))
