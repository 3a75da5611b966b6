"""EmotionCLIP's layers: SNCE against explicit loops on asymmetric tensors, and the temporal encoder.

SNCE's reference is written out per pair (i, j) in float64: the sentiment weights in plain Python
(``math``), the two cross-entropies as a loop of torch float64 scalars (so autograd can check the
gradients too). The sentiment rows differ, so ``KL(p_j ‖ p_i) ≠ KL(p_i ‖ p_j)`` and ``w ≠ wᵀ``: a
flipped KL direction or a transposed ``w`` on the text→video side changes the value, and the tests
show by how much.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emo.heads.layers.snce import (
    DEFAULT_BETA,
    LOG_SCALE_INIT,
    LOGIT_SCALE_MAX,
    clamp_logit_scale_,
    log_scale_parameter,
    logit_scale,
    sentiment_weights,
    snce_loss,
)
from emo.heads.layers.video_transformer import VideoTransformer, masked_mean

# ----------------------------------------------------------------------------------------------- SNCE

# B = 4 items, D = 5, K = 7 sentiment classes; all rows differ, nothing is symmetric
VIDEO = [
    [0.9, -0.2, 0.4, 0.1, -0.5],
    [-0.3, 0.8, 0.2, -0.6, 0.1],
    [0.5, 0.5, -0.7, 0.2, 0.3],
    [-0.1, -0.4, 0.3, 0.9, -0.2],
]
TEXT = [
    [0.2, 0.5, 0.1, 0.3, -0.4],
    [0.6, 0.1, -0.3, -0.2, 0.4],
    [0.1, 0.3, -0.2, 0.6, 0.2],
    [0.4, -0.3, 0.2, 0.5, -0.1],
]
SENTIMENT = [  # a peaked row, a near-uniform one, another peak, a bimodal one: KL far from symmetric
    [5.0, -0.5, 0.3, 0.0, -0.2, 0.1, -0.4],
    [0.1, -0.1, 0.2, 0.0, -0.2, 0.1, 0.05],
    [-0.3, 0.2, 4.0, -0.5, 0.4, 0.0, -1.0],
    [1.5, 0.0, -1.0, 1.8, -0.6, 0.3, 0.0],
]
BETA = 4.0  # w of order 1–10 on these rows: comparable to the logits, so a wrong w shows in the loss
LOG_SCALE = math.log(1 / 0.07)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(r - m) for r in row]
    return [x / sum(e) for x in e]


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p ‖ q) = Σ_k p_k (log p_k − log q_k), plain Python."""
    return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q, strict=True))


def ref_weights(sentiment, beta: float, flip: bool = False) -> list[list[float]]:
    """w[i][j] = β / |KL(p_j ‖ p_i)| off the diagonal (``flip``: the paper's KL(p_i ‖ p_j)), per pair."""
    P = [_softmax(row) for row in sentiment]
    B = len(P)
    w = [[0.0] * B for _ in range(B)]
    for i in range(B):
        for j in range(B):
            if i != j and beta != 0.0:
                kl = _kl(P[i], P[j]) if flip else _kl(P[j], P[i])
                w[i][j] = beta / abs(kl)
    return w


def ref_snce(video, text, scale: float, w_v2t, w_t2v, left_out=frozenset()) -> torch.Tensor:
    """Eq. 7 as a loop over anchors i and candidates j, float64; pairs (i, j) in ``left_out`` are skipped.

    ``video``/``text`` are float64 tensors (they may require grad); ``w_*`` are lists of lists.
    """
    v = video / video.norm(dim=1, keepdim=True)
    t = text / text.norm(dim=1, keepdim=True)
    B = len(v)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(B):
        v2t = [scale * (v[i] @ t[j]) - w_v2t[i][j] for j in range(B) if (i, j) not in left_out]
        t2v = [scale * (t[i] @ v[j]) - w_t2v[i][j] for j in range(B) if (i, j) not in left_out]
        total = total - (scale * (v[i] @ t[i]) - torch.logsumexp(torch.stack(v2t), 0))
        total = total - (scale * (t[i] @ v[i]) - torch.logsumexp(torch.stack(t2v), 0))
    return total / (2 * B)


def _transpose(w):
    return [list(col) for col in zip(*w, strict=True)]


def test_sentiment_weights_match_the_pairwise_loop_and_are_not_symmetric():
    w = sentiment_weights(_t(SENTIMENT), BETA)
    expected = torch.tensor(ref_weights(SENTIMENT, BETA), dtype=torch.float32)
    assert w.dtype == torch.float32 and w.shape == (4, 4)
    torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(w.diagonal(), torch.zeros(4))
    assert (w - w.T).abs().max() > 0.1  # the KL is asymmetric on these rows
    flipped = torch.tensor(ref_weights(SENTIMENT, BETA, flip=True), dtype=torch.float32)
    torch.testing.assert_close(flipped, expected.T)  # the paper's direction is wᵀ of the code's
    assert (w - flipped).abs().max() > 0.1


def test_snce_matches_the_double_loop_and_every_wrong_direction_differs():
    V, T, S = _t(VIDEO), _t(TEXT), _t(SENTIMENT)
    scale = math.exp(LOG_SCALE)
    w = ref_weights(SENTIMENT, BETA)
    wT = _transpose(w)
    V64, T64 = V.double(), T.double()
    expected = ref_snce(V64, T64, scale, w, w)
    loss = snce_loss(V, T, S, LOG_SCALE, BETA)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    # on this example each mutation moves the loss by far more than the tolerance above
    wrong = {
        "KL direction flipped (the paper's KL(p_i ‖ p_j))": ref_snce(V64, T64, scale, wT, wT),
        "w transposed on the text→video side": ref_snce(V64, T64, scale, w, wT),
        "flipped and transposed on text→video": ref_snce(V64, T64, scale, wT, w),
        "w on the video→text side only": ref_snce(V64, T64, scale, w, [[0.0] * 4] * 4),
    }
    for name, value in wrong.items():
        assert abs(value.item() - expected.item()) > 5e-2, name  # 0.065, 0.079, 0.14, 0.43
        assert abs(value.item() - loss.item()) > 5e-2, name


def test_beta_zero_is_plain_symmetric_infonce():
    V, T, S = _t(VIDEO), _t(TEXT), _t(SENTIMENT)
    S[2] = S[0]  # identical rows: β = 0 must still give w = 0 exactly, not 0/0
    w = sentiment_weights(S, 0.0)
    assert torch.equal(w, torch.zeros(4, 4))
    # an independent InfoNCE: log-softmax written out, float64
    v, t = (
        V.double() / V.double().norm(dim=1, keepdim=True),
        T.double() / T.double().norm(dim=1, keepdim=True),
    )
    logits = math.exp(LOG_SCALE) * v @ t.T  # [B, B]
    diag = logits.diagonal()
    infonce = 0.5 * ((logits.exp().sum(1).log() - diag).mean() + (logits.exp().sum(0).log() - diag).mean())
    loss = snce_loss(V, T, S, LOG_SCALE, beta=0.0)
    torch.testing.assert_close(loss.double(), infonce, rtol=1e-6, atol=1e-6)
    assert snce_loss(V, T, S, LOG_SCALE, beta=BETA) < loss - 1e-3  # w >= 0 only shrinks the denominators
    with pytest.raises(ValueError, match="beta"):
        sentiment_weights(S, -1.0)


def test_identical_sentiment_rows_remove_that_negative_with_finite_loss_and_gradients():
    V, T, S = _t(VIDEO), _t(TEXT), _t(SENTIMENT)
    S[3] = S[0]  # items 0 and 3: the same sentiment -> w[0, 3] = w[3, 0] = +inf (a strong negative: cos 0.72)
    w = sentiment_weights(S, BETA)
    assert torch.isinf(w[0, 3]) and torch.isinf(w[3, 0]) and torch.isfinite(w[~torch.isinf(w)]).all()
    assert torch.isinf(w).sum() == 2

    video, text = V.clone().requires_grad_(), T.clone().requires_grad_()
    log_scale = log_scale_parameter()
    loss = snce_loss(video, text, S, log_scale, BETA)
    loss.backward()
    assert torch.isfinite(loss)
    for g in (video.grad, text.grad, log_scale.grad):
        assert g is not None and torch.isfinite(g).all()

    # reference: the pair simply left out of both softmaxes; the other weights as usual
    P = [_softmax(row) for row in S.tolist()]
    left_out = frozenset({(0, 3), (3, 0)})
    w_fin = [
        [0.0 if i == j or (i, j) in left_out else BETA / abs(_kl(P[j], P[i])) for j in range(4)]
        for i in range(4)
    ]
    V64, T64 = V.double().requires_grad_(), T.double().requires_grad_()
    expected = ref_snce(V64, T64, math.exp(LOG_SCALE), w_fin, w_fin, left_out)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(video.grad.double(), V64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(text.grad.double(), T64.grad, rtol=1e-4, atol=1e-6)
    # and keeping the pair in the softmax (w_fin is 0 there) would be a different loss
    kept = ref_snce(V.double(), T.double(), math.exp(LOG_SCALE), w_fin, w_fin)
    assert abs(kept.item() - loss.item()) > 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_the_float32_result(dtype):
    V, T, S = _t(VIDEO), _t(TEXT), _t(SENTIMENT)
    v, t, s = V.to(dtype).requires_grad_(), T.to(dtype), S.to(dtype)
    w = sentiment_weights(s, BETA)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, sentiment_weights(s.float(), BETA), rtol=1e-6, atol=0)  # float32 inside
    loss = snce_loss(v, t, s, torch.tensor(LOG_SCALE, dtype=dtype), BETA)
    assert loss.dtype == torch.float32
    # the same (rounded) values in float32: the same loss, to float32 rounding
    same = snce_loss(
        v.detach().float(), t.float(), s.float(), torch.tensor(LOG_SCALE, dtype=dtype).float(), BETA
    )
    torch.testing.assert_close(loss, same, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        loss, snce_loss(V, T, S, LOG_SCALE, BETA), rtol=3e-2, atol=3e-2
    )  # input rounding only
    loss.backward()
    assert v.grad.dtype == dtype and torch.isfinite(v.grad).all()


def test_autocast_does_not_lower_the_loss_precision():
    V, T, S = _t(VIDEO), _t(TEXT), _t(SENTIMENT)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = snce_loss(V, T, S, LOG_SCALE, BETA)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, snce_loss(V, T, S, LOG_SCALE, BETA), rtol=1e-6, atol=1e-6)


def test_logit_scale_is_clamped_at_100():
    V, T, S = _t(VIDEO), _t(TEXT), _t(SENTIMENT)
    assert logit_scale(math.log(1000.0)).item() == pytest.approx(LOGIT_SCALE_MAX)
    assert logit_scale(torch.tensor(math.log(50.0))).item() == pytest.approx(50.0)
    at_100 = snce_loss(V, T, S, math.log(100.0), BETA)
    torch.testing.assert_close(snce_loss(V, T, S, math.log(1000.0), BETA), at_100)
    assert abs(snce_loss(V, T, S, math.log(50.0), BETA) - at_100) > 1e-2  # the scale does enter the loss
    w = ref_weights(SENTIMENT, BETA)
    torch.testing.assert_close(
        at_100.double(), ref_snce(V.double(), T.double(), 100.0, w, w), rtol=1e-6, atol=1e-5
    )

    p = log_scale_parameter()
    assert (
        p.requires_grad
        and p.item() == pytest.approx(LOG_SCALE_INIT)
        and LOG_SCALE_INIT == pytest.approx(math.log(1 / 0.07))
    )
    with torch.no_grad():
        p.fill_(7.0)
    clamp_logit_scale_(p)  # the official trainer's in-place clamp to [0, log 100]
    assert p.item() == pytest.approx(math.log(100.0))
    snce_loss(V, T, S, p, BETA).backward()  # at the bound the gradient still flows (it can come back down)
    assert p.grad is not None and p.grad.abs() > 0
    with torch.no_grad():
        p.fill_(-1.0)
    assert clamp_logit_scale_(p).item() == 0.0
    assert DEFAULT_BETA == 10.0  # the official loss_reweight_scale


def test_snce_rejects_mismatched_shapes():
    V, T, S = _t(VIDEO), _t(TEXT), _t(SENTIMENT)
    with pytest.raises(ValueError, match="video and text"):
        snce_loss(V, T[:3], S)
    with pytest.raises(ValueError, match="sentiment_logits"):
        snce_loss(V, T, S[:3])


# ------------------------------------------------------------------------------------- temporal encoder

SMALL = dict(d_model=16, frames=8, layers=2, heads=4, ffn=40)


def _small(seed: int = 0, **kw) -> VideoTransformer:
    torch.manual_seed(seed)
    return VideoTransformer(**{**SMALL, **kw}).double().eval()


def test_output_is_the_formula_computed_from_the_submodules():
    m = _small()
    x = torch.randn(3, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h = x + m.pos[:6]  # [B, T, D]
    for layer in m.encoder.layers:  # post-norm: LN1(h + SA(h)), LN2(h + FFN(h))
        h = layer.norm1(h + layer.self_attn(h, h, h, need_weights=False)[0])
        h = layer.norm2(h + layer.linear2(F.gelu(layer.linear1(h))))
    h = m.encoder.norm(h)  # the final LayerNorm
    expected = (h + x).mean(dim=1)  # the residual around the whole encoder, then the mean over time
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(m.encode_frames(x), h + x, rtol=1e-10, atol=1e-10)
    assert m.encoder.layers[0].linear1.out_features == 40


@pytest.mark.parametrize("pooling", ["transformer", "mean"])
def test_padded_frames_do_not_change_the_output(pooling):
    m = _small(pooling=pooling)
    g = torch.Generator().manual_seed(2)
    lengths = [5, 3, 8]
    items = [torch.randn(1, n, 16, dtype=torch.float64, generator=g) for n in lengths]
    mask = torch.tensor([[t < n for t in range(8)] for n in lengths])  # [B, 8], padding at the end
    outs = []
    for junk in (0.0, 1.0):  # two different paddings, one of them with inf and NaN in it
        x = 100 * torch.randn(3, 8, 16, dtype=torch.float64, generator=g)
        if junk:
            x[0, 6, 0], x[1, 4, 3] = float("inf"), float("nan")
        for b, item in enumerate(items):
            x[b, : lengths[b]] = item[0]
        with torch.no_grad():
            outs.append(m(x, mask))
    with torch.no_grad():
        alone = torch.cat([m(item) for item in items])  # each item unpadded, no mask
    assert torch.isfinite(outs[0]).all() and torch.isfinite(outs[1]).all()
    torch.testing.assert_close(outs[0], alone, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outs[1], alone, rtol=1e-9, atol=1e-9)


def test_frame_order_matters_to_the_transformer_but_not_to_mean_pooling():
    x = torch.randn(2, 8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    perm = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])
    with torch.no_grad():
        m = _small()
        assert (m(x[:, perm]) - m(x)).abs().max() > 1e-3
        mean = _small(pooling="mean")
        torch.testing.assert_close(mean(x[:, perm]), mean(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(mean(x), x.mean(dim=1), rtol=0, atol=0)


def test_mean_pooling_has_no_parameters_and_is_the_masked_mean():
    m = VideoTransformer(d_model=16, pooling="mean")
    assert list(m.parameters()) == [] and m.encoder is None and m.pos is None
    x = torch.randn(2, 12, 16)  # any T: no positions
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :4], mask[1, 2:9] = True, True
    out = m(x, mask)
    torch.testing.assert_close(out, torch.stack([x[0, :4].mean(0), x[1, 2:9].mean(0)]))
    torch.testing.assert_close(masked_mean(x, mask), out)


def test_shapes_finite_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    m = VideoTransformer(**SMALL).train()  # dropout on
    x = torch.randn(4, 8, 16, requires_grad=True)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[1, 6:] = False
    out = m(x, mask)
    assert out.shape == (4, 16) and torch.isfinite(out).all()
    (out * torch.randn(4, 16)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all() and x.grad[1, 6:].abs().sum() == 0  # padded frames take no part


def test_defaults_are_the_official_head_and_the_stated_parameter_count():
    torch.manual_seed(0)
    m = VideoTransformer()
    layer = m.encoder.layers[0]
    assert (
        len(m.encoder.layers) == 6 and layer.self_attn.num_heads == 8 and layer.linear1.out_features == 2048
    )
    assert not layer.norm_first and layer.dropout.p == 0.1 and layer.activation_relu_or_gelu == 2  # gelu
    assert m.pos.shape == (8, 512) and isinstance(m.encoder.norm, torch.nn.LayerNorm)
    per_layer = (3 * 512 * 512 + 3 * 512) + (512 * 512 + 512) + (2 * 512 * 2048 + 2048 + 512) + 4 * 512
    assert per_layer == 3_152_384
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert n == 6 * per_layer + 2 * 512 + 8 * 512 == 18_919_424
    with torch.no_grad():
        out = m.eval()(torch.randn(2, 8, 512))
    assert out.shape == (2, 512) and torch.isfinite(out).all()


def test_bad_inputs_fail_loudly():
    m = _small()
    with pytest.raises(ValueError, match="positions"):
        m(torch.randn(1, 9, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="real frame"):
        m(torch.randn(2, 4, 16, dtype=torch.float64), torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match="pooling"):
        VideoTransformer(pooling="max")
