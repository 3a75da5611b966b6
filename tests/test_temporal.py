"""MH-Mamba (init identities, per-head independence, causality, parameter count) and the temporal factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emo.heads.layers.mamba import MHMamba, MHMambaBlock
from emo.heads.layers.scan import KernelUnavailableError, selective_scan_ref
from emo.heads.layers.temporal import TEMPORAL_KINDS, build_temporal

SMALL = dict(d_model=32, heads=4, d_inner=24, dt_rank=4, d_state=3, d_conv=4)  # head dim 6


def test_parameter_count_of_the_paper_defaults():
    d_model, H, d_inner, R, N, K, layers = 512, 8, 384, 16, 4, 4, 3
    P = d_inner // H
    per_block = (
        d_model * 2 * d_inner  # in_proj -> x, z (no bias)
        + d_inner * K
        + d_inner  # depthwise causal conv weight + bias
        + H * P * (R + 2 * N)  # per-head x_proj -> Δ_low, B, C (no bias)
        + H * R * P
        + H * P  # per-head dt_proj weight + dt bias
        + H * P * N
        + H * P  # A_log, D
        + d_inner * d_model  # W_O (no bias)
        + 2 * d_model  # LayerNorm
    )
    model = MHMamba(layers=layers, d_model=d_model, heads=H, d_inner=d_inner, dt_rank=R, d_state=N, d_conv=K)
    assert per_block == 610_432
    assert sum(p.numel() for p in model.parameters()) == layers * per_block == 1_831_296
    assert sum(p.numel() for p in MHMamba().parameters()) == 1_831_296  # the defaults are the paper's


def test_initialisation_identities():
    torch.manual_seed(0)
    block = MHMambaBlock()  # paper defaults: 8 heads of 48 channels, d_state 4
    H, P, N, R = 8, 48, 4, 16
    assert block.x_proj.shape == (H, P, R + 2 * N)
    assert block.dt_proj.shape == (H, R, P)
    assert block.dt_bias.shape == block.D.shape == (H, P)
    assert block.A_log.shape == (H, P, N)
    expected = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(H, P, N)
    torch.testing.assert_close(block.A_log.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(block.A.detach(), -torch.arange(1.0, N + 1).expand(H, P, N))
    assert torch.equal(block.D.detach(), torch.ones(H, P))
    dt = F.softplus(block.dt_bias.detach().double())
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert dt.min() < 0.002 and dt.max() > 0.05  # spread over the range, not a constant
    log_dt = dt.log()  # log-uniform: log dt roughly uniform, mean near the middle of [log .001, log .1]
    assert abs(log_dt.mean().item() - 0.5 * (math.log(0.001) + math.log(0.1))) < 0.3


def test_each_head_reads_only_its_own_channels():
    torch.manual_seed(0)
    block = MHMambaBlock(**SMALL).double()
    P = block.head_dim
    u = torch.randn(2, block.d_inner, 7, dtype=torch.float64)  # [B, d_inner, T] after conv
    delta, Bm, Cm = block.ssm_inputs(u)
    assert delta.shape == (2, 24, 7) and Bm.shape == Cm.shape == (2, 4, 3, 7)
    u2 = u.clone()
    u2[:, :P] += 1.0  # head 0's channels only
    delta2, Bm2, Cm2 = block.ssm_inputs(u2)
    assert not torch.allclose(Bm2[:, 0], Bm[:, 0]) and not torch.allclose(Cm2[:, 0], Cm[:, 0])
    assert not torch.allclose(delta2[:, :P], delta[:, :P])
    assert torch.equal(Bm2[:, 1:], Bm[:, 1:]) and torch.equal(Cm2[:, 1:], Cm[:, 1:])
    assert torch.equal(delta2[:, P:], delta[:, P:])


def test_block_equals_heads_computed_one_by_one():
    """Rebuild the mixer with a python loop over heads (own x_proj/dt_proj/A/D each, one group per scan)."""
    torch.manual_seed(0)
    block = MHMambaBlock(**SMALL).double()
    with torch.no_grad():  # make heads differ, so a mix-up between heads would show
        block.A_log.add_(torch.rand_like(block.A_log))
        block.D.add_(torch.randn_like(block.D))
        block.dt_bias.add_(torch.randn_like(block.dt_bias))
    h = torch.randn(2, 9, 32, dtype=torch.float64)  # [B, T, d_model]
    x, z = block.in_proj(h).chunk(2, dim=-1)
    u = block.conv_input(x.transpose(1, 2))  # [B, d_inner, T]
    zt = z.transpose(1, 2)
    R, N, P = block.dt_rank, block.d_state, block.head_dim
    ys = []
    for k in range(block.heads):
        sl = slice(k * P, (k + 1) * P)
        dbc = F.linear(u[:, sl].transpose(1, 2), block.x_proj[k].T)  # [B, T, R + 2N]
        dt = F.linear(dbc[..., :R], block.dt_proj[k].T).transpose(1, 2)  # [B, P, T]
        Bk = dbc[..., R : R + N].transpose(1, 2)  # [B, N, T]
        Ck = dbc[..., R + N :].transpose(1, 2)
        ys.append(
            selective_scan_ref(
                u[:, sl],
                dt,
                -torch.exp(block.A_log[k]),
                Bk,
                Ck,
                D=block.D[k],
                z=zt[:, sl],
                delta_bias=block.dt_bias[k],
                delta_softplus=True,
            )
        )
    expected = block.out_proj(torch.cat(ys, dim=1).transpose(1, 2))  # [B, T, d_model]
    torch.testing.assert_close(block.mix(h), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        block(h), F.layer_norm(h + expected, (32,), block.norm.weight, block.norm.bias)
    )


@pytest.mark.parametrize(
    "make", [lambda: MHMambaBlock(**SMALL), lambda: MHMamba(layers=3, **SMALL)], ids=["block", "stack"]
)
def test_mhmamba_is_causal(make):
    torch.manual_seed(0)
    model = make().double()
    h = torch.randn(2, 10, 32, dtype=torch.float64)
    k = 6
    h2 = h.clone()
    h2[:, k:] = torch.randn(2, 10 - k, 32, dtype=torch.float64)  # new frames from k on
    y, y2 = model(h), model(h2)
    torch.testing.assert_close(y2[:, :k], y[:, :k], rtol=0, atol=1e-10)
    assert not torch.allclose(y2[:, k:], y[:, k:])


def test_conv_is_causal_with_left_padding():
    torch.manual_seed(0)
    block = MHMambaBlock(**SMALL)
    x = torch.randn(1, 24, 8)
    x2 = x.clone()
    x2[..., 3] += 1.0
    diff = (block.conv_input(x2) - block.conv_input(x)).abs().amax(dim=1)[0]  # [T]
    assert torch.equal(diff[:3], torch.zeros(3))
    assert (diff[3 : 3 + block.d_conv] > 0).all()  # kernel 4: frames 3..6 see frame 3
    assert diff[3 + block.d_conv :].eq(0).all()


def test_block_rejects_bad_settings():
    with pytest.raises(ValueError, match="divisible"):
        MHMambaBlock(d_inner=100, heads=8)
    with pytest.raises(ValueError, match="scan_backend"):
        MHMambaBlock(scan_backend="fast")


def test_explicit_cuda_backend_on_a_machine_without_the_kernel(monkeypatch):
    from emo.heads.layers import scan

    monkeypatch.setattr(scan, "_kernel_cache", {"fn": None, "error": ImportError("no mamba_ssm")})
    block = MHMambaBlock(**SMALL, scan_backend="cuda")
    with pytest.raises(KernelUnavailableError, match="gpu"):
        block(torch.randn(1, 4, 32))


# --- the factory --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TEMPORAL_KINDS)
def test_every_kind_maps_frames_to_frames_and_trains(kind):
    torch.manual_seed(0)
    kw = dict(d_inner=24, dt_rank=4, d_state=3) if kind == "mamba" else {}
    model = build_temporal(kind, d_model=32, layers=2, heads=4, **kw)
    x = torch.randn(3, 7, 32, requires_grad=True)  # [B, T, D]
    y = model(x)
    assert y.shape == (3, 7, 32) and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()  # a random projection: LN outputs have constant sums
    assert x.grad is not None and x.grad.abs().sum() > 0
    params = dict(model.named_parameters())
    if kind == "identity":
        assert params == {}
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{kind}: {name} gets no gradient"


def test_default_sizes():
    assert sum(p.numel() for p in build_temporal("identity").parameters()) == 0
    lstm, gru = build_temporal("lstm"), build_temporal("gru")
    assert (lstm.rnn.num_layers, lstm.rnn.hidden_size, lstm.rnn.bidirectional, lstm.rnn.batch_first) == (
        3,
        512,
        False,
        True,
    )
    assert (gru.rnn.num_layers, gru.rnn.hidden_size, gru.rnn.bidirectional) == (3, 512, False)
    tr = build_temporal("transformer")
    layers = tr.encoder.layers
    assert len(layers) == 3 and layers[0].self_attn.num_heads == 8 and layers[0].linear1.out_features == 2048
    assert not layers[0].norm_first
    mamba = build_temporal("mamba")
    assert len(mamba.blocks) == 3 and sum(p.numel() for p in mamba.parameters()) == 1_831_296
    assert isinstance(build_temporal("mh-mamba"), MHMamba)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_kinds_are_causal(kind):
    torch.manual_seed(0)
    model = build_temporal(kind, d_model=16, layers=2)
    x = torch.randn(2, 8, 16)
    x2 = x.clone()
    x2[:, 5:] += 1.0
    torch.testing.assert_close(model(x2)[:, :5], model(x)[:, :5], rtol=0, atol=1e-6)


def test_transformer_sees_frame_order():
    torch.manual_seed(0)
    model = build_temporal("transformer", d_model=16, layers=1, heads=2)
    x = torch.randn(1, 6, 16)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    assert not torch.allclose(model(x[:, perm]), model(x)[:, perm], atol=1e-4)


def test_unknown_kind_and_misspelt_option_raise():
    with pytest.raises(ValueError) as err:
        build_temporal("tcn")
    for kind in TEMPORAL_KINDS:
        assert kind in str(err.value)
    with pytest.raises(TypeError, match="d_innner"):
        build_temporal("lstm", d_innner=768)
