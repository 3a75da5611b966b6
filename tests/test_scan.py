"""The selective scan: the reference against a plain recurrence, causality, backend dispatch, kernel vs ref."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from emo.heads.layers import scan
from emo.heads.layers.scan import KernelUnavailableError, selective_scan, selective_scan_ref


def make_inputs(batch=2, d=4, n=3, length=5, groups=2, dtype=torch.float64, seed=0, positive_delta=True):
    """Small fixed tensors in mamba_ssm's layout: u, delta, z [b, d, L]; A [d, n]; B, C [b, G, n, L]; D, bias [d]."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    delta = (
        torch.rand(batch, d, length, generator=g, dtype=dtype) * 0.9 + 0.1
        if positive_delta
        else r(batch, d, length)
    )
    A = -torch.rand(d, n, generator=g, dtype=dtype) * 2 - 0.1  # negative: decaying states
    return dict(
        u=r(batch, d, length),
        delta=delta,
        A=A,
        B=r(batch, groups, n, length),
        C=r(batch, groups, n, length),
        D=r(d),
        z=r(batch, d, length),
        delta_bias=r(d) * 0.5,
    )


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence written out element by element with python floats (independent of the code under test)."""
    batch, d, length = u.shape
    n = A.shape[1]
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    per_group = d // B.shape[1]
    out = torch.zeros(batch, d, length, dtype=torch.float64)
    for b in range(batch):
        for c in range(d):
            grp = c // per_group
            x = [0.0] * n
            for t in range(length):
                dt = float(delta[b, c, t]) + (float(delta_bias[c]) if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = math.log1p(math.exp(dt))
                ut = float(u[b, c, t])
                y = 0.0
                for s in range(n):
                    x[s] = math.exp(dt * float(A[c, s])) * x[s] + dt * float(B[b, grp, s, t]) * ut
                    y += float(C[b, grp, s, t]) * x[s]
                if D is not None:
                    y += float(D[c]) * ut
                if z is not None:
                    zt = float(z[b, c, t])
                    y *= zt / (1.0 + math.exp(-zt))
                out[b, c, t] = y
    return out


OPTIONS = [  # (use D, use z, use delta_bias, delta_softplus)
    (False, False, False, False),
    (True, False, False, False),
    (False, True, False, False),
    (False, False, True, False),
    (False, False, False, True),
    (True, True, True, True),
]


@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", OPTIONS)
def test_reference_matches_plain_recurrence(use_D, use_z, use_bias, softplus):
    t = make_inputs(positive_delta=not softplus)
    kw = dict(
        D=t["D"] if use_D else None,
        z=t["z"] if use_z else None,
        delta_bias=t["delta_bias"] if use_bias else None,
        delta_softplus=softplus,
    )
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"])
    expected = naive_scan(*args, **kw)
    got = selective_scan_ref(*args, **kw)
    assert got.dtype == torch.float64 and got.shape == (2, 4, 5)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # float32 inputs accumulate in float32 and come back as float32, close to the exact values
    got32 = selective_scan_ref(
        *(a.float() for a in args), **{k: v.float() if torch.is_tensor(v) else v for k, v in kw.items()}
    )
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, rtol=1e-5, atol=1e-6)


def test_groups_map_channels_to_their_group_and_single_group_layout():
    t = make_inputs(d=6, groups=3)
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"])
    torch.testing.assert_close(selective_scan_ref(*args, D=t["D"]), naive_scan(*args, D=t["D"]))
    one = (t["u"], t["delta"], t["A"], t["B"][:, 0], t["C"][:, 0])  # [b, n, L]: one group for all channels
    expected = naive_scan(t["u"], t["delta"], t["A"], t["B"][:, :1], t["C"][:, :1])
    torch.testing.assert_close(selective_scan_ref(*one), expected, rtol=1e-12, atol=1e-12)


def test_scan_is_causal():
    t = make_inputs(length=8, positive_delta=False)
    kw = dict(D=t["D"], z=t["z"], delta_bias=t["delta_bias"], delta_softplus=True)
    y = selective_scan_ref(t["u"], t["delta"], t["A"], t["B"], t["C"], **kw)
    k = 5
    for name in ("u", "delta", "B", "C", "z"):
        p = dict(t)
        p[name] = t[name].clone()
        p[name][..., k:] += 3.0  # change every frame t >= k
        kw_p = dict(kw, z=p["z"])
        y_p = selective_scan_ref(p["u"], p["delta"], p["A"], p["B"], p["C"], **kw_p)
        torch.testing.assert_close(
            y_p[..., :k], y[..., :k], rtol=0, atol=1e-12, msg=f"{name} leaks backwards"
        )
        assert not torch.allclose(y_p[..., k:], y[..., k:]), f"perturbing {name} changed nothing"


def test_bad_shapes_raise():
    t = make_inputs(d=4, groups=3)  # 3 groups do not divide 4 channels
    with pytest.raises(ValueError, match="G dividing"):
        selective_scan_ref(t["u"], t["delta"], t["A"], t["B"], t["C"])
    t = make_inputs()
    with pytest.raises(ValueError, match="delta_bias"):
        selective_scan_ref(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_bias=t["D"][:2])


# --- backend dispatch -------------------------------------------------------------------------


@pytest.fixture
def fresh_kernel_cache(monkeypatch):
    """An empty import cache for the test; the real one is restored afterwards."""
    monkeypatch.setattr(scan, "_kernel_cache", {})


def _args():
    t = make_inputs(dtype=torch.float32)
    return (t["u"], t["delta"], t["A"], t["B"], t["C"]), dict(D=t["D"], z=t["z"], delta_bias=t["delta_bias"])


def test_cuda_backend_without_mamba_ssm_says_to_install_the_gpu_extra(monkeypatch, fresh_kernel_cache):
    for mod in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mamba_ssm...` raise ImportError
    args, kw = _args()
    with pytest.raises(KernelUnavailableError) as err:
        selective_scan(*args, **kw, backend="cuda")
    assert isinstance(err.value, ImportError)
    assert "gpu" in str(err.value) and "pip install -e '.[gpu]'" in str(err.value)
    assert not scan.kernel_available()


def test_import_is_attempted_once(monkeypatch, fresh_kernel_cache):
    calls = []

    def failing_import():
        calls.append(1)
        raise ImportError("no module named mamba_ssm")

    monkeypatch.setattr(scan, "_import_kernel", failing_import)
    assert not scan.kernel_available()
    assert not scan.kernel_available()
    with pytest.raises(KernelUnavailableError):
        scan.load_kernel()
    assert len(calls) == 1


def _kernel_that_must_not_run(*args, **kwargs):
    raise AssertionError("the CUDA kernel was called")


def test_auto_on_cpu_uses_the_reference_even_with_the_kernel_installed(monkeypatch, fresh_kernel_cache):
    monkeypatch.setattr(scan, "_import_kernel", lambda: _kernel_that_must_not_run)
    assert scan.kernel_available()
    args, kw = _args()
    got = selective_scan(*args, **kw, delta_softplus=True)  # backend="auto"
    torch.testing.assert_close(got, selective_scan_ref(*args, **kw, delta_softplus=True), rtol=0, atol=0)


def test_auto_on_cpu_never_tries_the_import(monkeypatch, fresh_kernel_cache):
    def import_bomb():
        raise AssertionError("auto tried to import mamba_ssm for CPU tensors")

    monkeypatch.setattr(scan, "_import_kernel", import_bomb)
    args, kw = _args()
    selective_scan(*args, **kw, backend="auto")
    assert scan._kernel_cache == {}


def test_cuda_backend_rejects_cpu_tensors(monkeypatch, fresh_kernel_cache):
    monkeypatch.setattr(scan, "_import_kernel", lambda: _kernel_that_must_not_run)
    args, kw = _args()
    with pytest.raises(ValueError, match="CUDA"):
        selective_scan(*args, **kw, backend="cuda")


def test_unknown_backend_raises():
    args, kw = _args()
    with pytest.raises(ValueError, match="auto, ref, chunked, cuda"):
        selective_scan(*args, **kw, backend="triton")


# --- the kernel against the reference (needs CUDA and mamba_ssm) ------------------------------


def _cuda_kernel_ready() -> bool:
    return torch.cuda.is_available() and scan.kernel_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_kernel_ready(), reason="needs CUDA and mamba_ssm (pip install -e '.[gpu]')")
def test_kernel_matches_reference_fp32_with_gradients():
    torch.manual_seed(0)
    b, d, n, length, groups = 2, 384, 4, 64, 8  # MH-Mamba's shapes: 8 heads of 48 channels
    dev = "cuda"
    leaves = dict(
        u=torch.randn(b, d, length),
        delta=torch.randn(b, d, length) * 0.5,
        A=-torch.rand(d, n) - 0.5,
        B=torch.randn(b, groups, n, length),
        C=torch.randn(b, groups, n, length),
        D=torch.randn(d),
        z=torch.randn(b, d, length),
        delta_bias=torch.rand(d) * 0.2 - 3.0,
    )
    grad_out = torch.randn(b, d, length, device=dev)
    results = {}
    for backend in ("cuda", "ref"):
        t = {k: v.to(dev).requires_grad_(True) for k, v in leaves.items()}
        y = selective_scan(**t, delta_softplus=True, backend=backend)
        y.backward(grad_out)
        results[backend] = (y.detach(), {k: v.grad for k, v in t.items()})
    (y_k, g_k), (y_r, g_r) = results["cuda"], results["ref"]
    torch.testing.assert_close(y_k, y_r, rtol=6e-4, atol=2e-3)
    for name in leaves:
        torch.testing.assert_close(g_k[name], g_r[name], rtol=6e-4, atol=2e-3, msg=f"grad of {name}")


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_kernel_ready(), reason="needs CUDA and mamba_ssm (pip install -e '.[gpu]')")
def test_mhmamba_kernel_matches_reference_fp32():
    from emo.heads.layers.mamba import MHMamba

    torch.manual_seed(0)
    model = MHMamba().cuda()
    x = torch.randn(4, 64, 512, device="cuda")
    outs, grads = {}, {}
    for backend in ("cuda", "ref"):
        for block in model.blocks:
            block.scan_backend = backend
        model.zero_grad()
        outs[backend] = model(x)
        outs[backend].square().mean().backward()
        grads[backend] = {k: p.grad.clone() for k, p in model.named_parameters()}
    torch.testing.assert_close(outs["cuda"], outs["ref"], rtol=6e-4, atol=2e-3)
    for name in grads["ref"]:
        torch.testing.assert_close(grads["cuda"][name], grads["ref"][name], rtol=6e-4, atol=2e-3, msg=name)


@pytest.mark.parametrize("chunk", [1, 3, 16, 64])
@pytest.mark.parametrize("extras", [False, True])
def test_chunked_scan_equals_the_reference_values_and_gradients(chunk, extras):
    from emo.heads.layers.scan import selective_scan_chunked, selective_scan_ref

    g = torch.Generator().manual_seed(chunk)
    b, d, n, length, groups = 2, 6, 3, 11, 3  # 11 frames: chunks do not divide it
    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_(True)

    u, delta = rnd(b, d, length), rnd(b, d, length, scale=0.5)
    A = (-torch.rand(d, n, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    B, C = rnd(b, groups, n, length), rnd(b, groups, n, length)
    kw = dict(D=rnd(d), z=rnd(b, d, length), delta_bias=rnd(d), delta_softplus=True) if extras else {}
    ref = selective_scan_ref(u, delta, A, B, C, **kw)
    out = selective_scan_chunked(u, delta, A, B, C, **kw, chunk=chunk)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    leaves = [u, delta, A, B, C, *[v for v in kw.values() if torch.is_tensor(v)]]
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    g_ref = torch.autograd.grad((ref * w).sum(), leaves)
    g_out = torch.autograd.grad((out * w).sum(), leaves)
    for a, c in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def test_chunked_backend_is_selectable_and_auto_keeps_the_reference_on_cpu(monkeypatch):
    import emo.heads.layers.scan as scan

    u = torch.randn(1, 4, 5)
    args = (u, torch.rand(1, 4, 5), -torch.rand(4, 2), torch.randn(1, 2, 5), torch.randn(1, 2, 5))
    torch.testing.assert_close(scan.selective_scan(*args, backend="chunked"), scan.selective_scan_ref(*args))
    monkeypatch.setattr(scan, "selective_scan_chunked", lambda *a, **k: pytest.fail("auto on CPU must use ref"))
    scan.selective_scan(*args, backend="auto")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_scan_on_cuda_equals_the_reference():
    from emo.heads.layers.scan import selective_scan_chunked, selective_scan_ref

    g = torch.Generator().manual_seed(0)
    shapes = [(4, 48, 64), (4, 48, 64), (48, 4), (4, 8, 4, 64), (4, 8, 4, 64)]
    u, delta, A, B, C = (torch.randn(*s, generator=g).cuda() for s in shapes)
    A = -A.abs()
    torch.testing.assert_close(selective_scan_chunked(u, delta.sigmoid(), A, B, C),
                               selective_scan_ref(u, delta.sigmoid(), A, B, C), rtol=6e-4, atol=2e-3)
