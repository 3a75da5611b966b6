"""The selective scan of Mamba: a pure-PyTorch reference (the CPU path) and the mamba_ssm CUDA kernel.

Both share mamba_ssm's ``selective_scan_fn`` signature and layout (channels before time):

- ``u, delta, z``: ``[batch, d, L]``
- ``A``: ``[d, n]`` (real; ``A = -exp(A_log)`` in MH-Mamba)
- ``B, C``: ``[batch, G, n, L]`` grouped (channel ``c`` reads group ``c // (d // G)``), or
  ``[batch, n, L]`` for one group
- ``D, delta_bias``: ``[d]``

and compute, per batch item, channel ``c`` and time ``t`` (state ``x`` starts at 0)::

    Δ_t = softplus(delta_t + delta_bias) if delta_softplus else delta_t + delta_bias
    x_t = exp(Δ_t A) * x_{t-1} + Δ_t B_t u_t            # [n]
    y_t = <C_t, x_t> + D u_t
    y_t = y_t * silu(z_t)                                # when z is given

The kernel is chosen by an explicit ``backend`` flag, never by catching a failure during compute:
``"ref"`` always runs the reference, ``"chunked"`` the same maths in closed form per chunk of frames,
``"cuda"`` always the kernel (a clear error when it cannot), ``"auto"`` the kernel when the tensors
are on CUDA and mamba_ssm imports, the chunked scan on CUDA without it, the reference on the CPU. This module is the
only one in ``emo`` that imports ``mamba_ssm``, and only inside :func:`_import_kernel`: the package
cannot even be imported without its compiled CUDA extension.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "SCAN_BACKENDS",
    "KernelUnavailableError",
    "kernel_available",
    "load_kernel",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_chunked",
]

SCAN_BACKENDS = ("auto", "ref", "chunked", "cuda")
GPU_INSTALL_HINT = "install the gpu extra: pip install -e '.[gpu]' (mamba-ssm; needs CUDA and its toolkit)"


class KernelUnavailableError(ImportError):
    """mamba_ssm's ``selective_scan_fn`` could not be imported; the message says what to install."""


# The one import attempt, cached: {"fn": callable or None, "error": ImportError or None}.
_kernel_cache: dict[str, object] = {}


def _import_kernel() -> Callable[..., torch.Tensor]:
    """Import and return mamba_ssm's ``selective_scan_fn`` (raises ImportError)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn


def _try_kernel() -> tuple[Callable[..., torch.Tensor] | None, ImportError | None]:
    """Attempt the import once per process; later calls return the cached outcome."""
    if "fn" not in _kernel_cache:
        try:
            fn, err = _import_kernel(), None
        except ImportError as e:  # missing package, or its extension not built for this machine
            fn, err = None, e
        _kernel_cache.update(fn=fn, error=err)
    return _kernel_cache["fn"], _kernel_cache["error"]  # type: ignore[return-value]


def kernel_available() -> bool:
    """Whether mamba_ssm's selective-scan kernel imports here (cached after the first call)."""
    return _try_kernel()[0] is not None


def load_kernel() -> Callable[..., torch.Tensor]:
    """mamba_ssm's ``selective_scan_fn``; :class:`KernelUnavailableError` naming the gpu extra if absent."""
    fn, err = _try_kernel()
    if fn is None:
        raise KernelUnavailableError(
            f"the CUDA selective-scan kernel is unavailable ({err}); {GPU_INSTALL_HINT}"
        )
    return fn


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> int:
    """Validate the shared layout; return the number of groups G of ``B``/``C``."""
    if u.ndim != 3:
        raise ValueError(f"u must be [batch, d, L], got {tuple(u.shape)}")
    batch, d, length = u.shape
    if A.ndim != 2 or A.is_complex() or A.shape[0] != d:
        raise ValueError(f"A must be real [d={d}, n], got {tuple(A.shape)} {A.dtype}")
    n = A.shape[1]
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise ValueError(f"{name} must have u's shape {tuple(u.shape)}, got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"{name} must be [d={d}], got {tuple(t.shape)}")
    if B.shape != C.shape:
        raise ValueError(f"B and C must have one shape, got {tuple(B.shape)} and {tuple(C.shape)}")
    groups = 1 if B.ndim == 3 else B.shape[1]
    if B.ndim not in (3, 4) or B.shape[0] != batch or B.shape[-2:] != (n, length) or d % groups:
        raise ValueError(
            f"B, C must be [batch={batch}, G, n={n}, L={length}] with G dividing d={d} "
            f"(or [batch, n, L]), got {tuple(B.shape)}"
        )
    return groups


def _time_major(BC: torch.Tensor) -> torch.Tensor:
    """``[b, G, n, L]`` (or ``[b, n, L]``) -> ``[L, b, G, 1, n]``, broadcastable over a group's channels."""
    if BC.ndim == 3:
        BC = BC[:, None]  # [b, 1, n, L]
    return BC.permute(3, 0, 1, 2)[:, :, :, None, :]  # [L, b, G, 1, n]


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Reference selective scan (module docstring for the maths); returns ``y [batch, d, L]`` in u's dtype.

    Accumulates in float32 (float64 inputs stay float64). Loops over time (L is at most a few hundred
    frames here) and is vectorised over batch, channels and state; differentiable by autograd.
    """
    decay, drive, c_t, finish = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    x = torch.zeros_like(decay[0])  # [b, G, P, n], the state before t = 0
    states = []
    for decay_t, drive_t in zip(decay.unbind(0), drive.unbind(0), strict=True):  # one frame at a time
        x = decay_t * x + drive_t  # [b, G, P, n]
        states.append(x)
    return finish((torch.stack(states) * c_t).sum(-1))  # [L, b, G, P] -> [b, d, L]


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    chunk: int = 8,
) -> torch.Tensor:
    """The same scan in closed form, two levels deep, with no loop over time.

    Frames are cut into ``C`` chunks of ``K = chunk`` (the last zero-padded: a zero log-decay and a zero
    drive change nothing before them). Within chunk ``c``, with ``S_t = Σ_{r=t0..t} Δ_r A`` (log-decays,
    ≤ 0), the state that starts from zero is::

        h_t = Σ_{s=t0..t} exp(S_t - S_s) Δ_s B_s u_s

    Across chunks, with ``T_c`` the running sum of whole-chunk log-decays, the state at the end of
    chunk ``c`` is ``x_c = Σ_{c' ≤ c} exp(T_c - T_c') h_last(c')`` (the same closed form one level up),
    and ``x_t = exp(S_t) x_{c-1} + h_t``. Every exponent is ≤ 0, so nothing overflows; pairs ``s > t``
    (``c' > c``) are masked to ``-inf`` before ``exp``. Each block is a fixed handful of large kernels
    whatever the length (what a GPU without mamba_ssm needs; a Python loop over chunks launched
    ~14 kernels per chunk), at about ``K / 2`` times the reference's arithmetic. Equal to
    :func:`selective_scan_ref` up to float rounding (tested, values and gradients).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    decay_log, drive, c_t, finish = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, log_decay=True)
    length = decay_log.shape[0]
    k = min(chunk, length)
    n_chunks = -(-length // k)
    pad = n_chunks * k - length

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [L, ...] -> [C, K, ...], zero-padded in time
        if pad:
            x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
        return x.reshape(n_chunks, k, *x.shape[1:])

    lg, dr, ct = chunked(decay_log), chunked(drive), chunked(c_t)  # [C, K, b, G, P, n] ([..., 1, n] for C)
    rest = [1] * (lg.ndim - 2)
    cum = torch.cumsum(lg, dim=1)  # S_t within each chunk
    inner = torch.exp(cum[:, :, None] - cum[:, None, :] + _causal_mask(k, lg).reshape(1, k, k, *rest))
    local = (inner * dr[:, None]).sum(2)  # h_t, [C, K, ...]
    totals = torch.cumsum(cum[:, -1], dim=0)  # T_c, [C, ...]
    across = torch.exp(totals[:, None] - totals[None, :] + _causal_mask(n_chunks, lg).reshape(n_chunks, n_chunks, *rest))
    ends = (across * local[None, :, -1]).sum(1)  # x_c, [C, ...]
    carry = torch.cat([torch.zeros_like(ends[:1]), ends[:-1]])  # the state before chunk c
    states = torch.exp(cum) * carry[:, None] + local  # [C, K, b, G, P, n]
    y = (states * ct).sum(-1).reshape(n_chunks * k, *states.shape[2:-1])  # [C*K, b, G, P]
    return finish(y[:length])


def _causal_mask(k: int, like: torch.Tensor) -> torch.Tensor:
    """``[k, k]``: 0 where ``s <= t`` (row t, column s), ``-inf`` above the diagonal."""
    return torch.full((k, k), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, log_decay: bool = False):
    """Time-major pieces shared by both PyTorch scans: ``(decay or log-decay [L, b, G, P, n], drive
    Δ·B·u [L, b, G, P, n], C [L, b, G, 1, n], finish)``; ``finish(y [L, b, G, P]) -> [b, d, L]`` adds
    ``D u``, the gate, and returns u's dtype. Accumulates in float32 (float64 stays float64)."""
    groups = _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    acc = torch.promote_types(dtype_in, torch.float32)
    b, d, length = u.shape
    n = A.shape[1]
    u, delta, A = u.to(acc), delta.to(acc), A.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]  # [b, d, L]
    if delta_softplus:
        delta = F.softplus(delta)
    # time-major, channels split into groups (channel c = g * P + p): [L, b, G, P]
    ut = u.permute(2, 0, 1).reshape(length, b, groups, d // groups)
    dt = delta.permute(2, 0, 1).reshape(length, b, groups, d // groups)
    log = dt[..., None] * A.reshape(groups, d // groups, n)  # [L, b, G, P, n]
    drive = (dt * ut)[..., None] * _time_major(B.to(acc))  # [L, b, G, P, n]

    def finish(y: torch.Tensor) -> torch.Tensor:
        y = y.reshape(length, b, d).permute(1, 2, 0)  # [b, d, L]
        if D is not None:
            y = y + D.to(acc)[:, None] * u
        if z is not None:
            y = y * F.silu(z.to(acc))
        return y.to(dtype_in)

    return (log if log_decay else torch.exp(log)), drive, _time_major(C.to(acc)), finish


def _kernel_scan(fn, u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> torch.Tensor:
    """Call mamba_ssm's kernel with the dtypes it checks: A, D, delta_bias fp32; the rest in u's dtype."""
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if not all(t.is_cuda for t in tensors):
        raise ValueError("backend='cuda' needs every tensor on a CUDA device; use backend='auto' or 'ref'")
    itype = u.dtype
    return fn(
        u,
        delta.to(itype),
        A.float().contiguous(),
        B.to(itype),
        C.to(itype),
        D=None if D is None else D.float().contiguous(),
        z=None if z is None else z.to(itype),
        delta_bias=None if delta_bias is None else delta_bias.float().contiguous(),
        delta_softplus=delta_softplus,
    )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan through ``backend`` (``"auto"``, ``"ref"``, ``"chunked"`` or ``"cuda"``); ``y [batch, d, L]``.

    ``"cuda"`` raises :class:`KernelUnavailableError` (an ImportError naming the gpu extra) when
    mamba_ssm does not import, and ValueError when a tensor is not on CUDA. ``"auto"`` uses the kernel
    when ``u`` is on CUDA and the kernel imports, else the chunked PyTorch scan on CUDA (few large
    kernels) and the step-by-step reference on the CPU.
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; expected one of {', '.join(SCAN_BACKENDS)}")
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "auto":
        backend = ("cuda" if kernel_available() else "chunked") if u.is_cuda else "ref"
    if backend == "ref":
        return selective_scan_ref(*args)
    if backend == "chunked":
        return selective_scan_chunked(*args)
    _check_shapes(*args[:-1])
    return _kernel_scan(load_kernel(), *args)
