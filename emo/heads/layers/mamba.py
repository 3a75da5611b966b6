"""MH-Mamba, PE-CLIP's temporal module (docs/papers.md#pe-clip; the PE-CLIP paper's §3.1): a Mamba block whose selective SSM
is split into heads, each with its own A and its own input-dependent Δ, B, C computed from its own
slice of the channels.

One block, for ``h [B, T, d_model]`` (T frames)::

    x, z = split(in_proj(h))                  # [B, T, d_inner] each
    u    = silu(causal_depthwise_conv(x))     # kernel d_conv, output t sees inputs <= t
    per head k (channels k*P .. (k+1)*P, P = d_inner / heads):
        Δ_low, B, C = x_proj[k](u_k)          # [dt_rank], [d_state], [d_state] per frame
        Δ = dt_proj[k](Δ_low)                 # [P]; softplus(Δ + dt_bias[k]) inside the scan
        y_k = scan(u_k, Δ, A[k] = -exp(A_log[k]), B, C, D[k])
    out  = LayerNorm(h + W_O(concat_k(y_k) * silu(z)))

Design choices (the paper leaves them open, so they are recorded here):

- **Gate before W_O, z of width d_inner** (as in Mamba). The gate is element-wise, so "heads
  concatenated, gated by silu(z), projected by W_O" is Mamba's own wiring; the paper calls MH-Mamba
  a Mamba variant and says it omits the "auxiliary gated fusion branches" from its equations. It
  also lets the CUDA kernel fuse the gate (``selective_scan_fn``'s ``z``), so the kernel and the
  reference run the very same graph.
- **Post-norm**: ``LN(h + block(h))``, read literally from "residual + LayerNorm around each block";
  with only three blocks post-norm trains stably, and the stack's output is already normalised (no
  extra final norm, so the stack has exactly ``layers`` x the block's parameters).
- **Causal conv + SiLU on x** as in Mamba (the paper is silent). in_proj and W_O have no bias, the
  conv has one (Mamba's defaults).
- **Initialisation** as in Mamba: ``A_log[:, n] = log(n + 1)``, ``D = 1``, ``dt_bias`` =
  softplus⁻¹(dt) with dt log-uniform in [dt_min, dt_max] = [0.001, 0.1], dt_proj weights uniform in
  ``±dt_rank**-0.5``, x_proj weights as nn.Linear's default (uniform ``±P**-0.5``).
- The scan is causal, so the whole block is: frame t's output depends only on frames <= t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .scan import SCAN_BACKENDS, selective_scan

__all__ = ["MHMamba", "MHMambaBlock"]


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0``: ``y + log(1 - exp(-y))``."""
    return y + torch.log(-torch.expm1(-y))


class MHMambaBlock(nn.Module):
    """One MH-Mamba block with its residual and LayerNorm: ``[B, T, d_model] -> [B, T, d_model]``.

    Per-head parameters are stored batched over heads (leading dim ``heads``), and applied by einsum:
    ``x_proj [H, P, dt_rank + 2 d_state]``, ``dt_proj [H, dt_rank, P]``, ``dt_bias [H, P]``,
    ``A_log [H, P, d_state]``, ``D [H, P]`` with ``P = d_inner // heads``. ``scan_backend`` is passed
    to :func:`~emo.heads.layers.scan.selective_scan` (``"auto"``: the kernel on CUDA when installed).
    """

    def __init__(
        self,
        d_model: int = 512,
        heads: int = 8,
        d_inner: int = 384,
        dt_rank: int = 16,
        d_state: int = 4,
        d_conv: int = 4,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        scan_backend: str = "auto",
    ):
        super().__init__()
        if d_inner % heads:
            raise ValueError(f"d_inner={d_inner} must be divisible by heads={heads}")
        if scan_backend not in SCAN_BACKENDS:
            raise ValueError(
                f"unknown scan_backend {scan_backend!r}; expected one of {', '.join(SCAN_BACKENDS)}"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_model, self.heads, self.d_inner = d_model, heads, d_inner
        self.head_dim = d_inner // heads
        self.dt_rank, self.d_state, self.d_conv = dt_rank, d_state, d_conv
        self.dt_min, self.dt_max = dt_min, dt_max
        self.scan_backend = scan_backend
        H, P = heads, self.head_dim
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)  # -> x, z
        self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Parameter(torch.empty(H, P, dt_rank + 2 * d_state))  # -> Δ_low, B, C
        self.dt_proj = nn.Parameter(torch.empty(H, dt_rank, P))
        self.dt_bias = nn.Parameter(torch.empty(H, P))
        self.A_log = nn.Parameter(torch.empty(H, P, d_state))
        self.D = nn.Parameter(torch.empty(H, P))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)  # W_O
        self.norm = nn.LayerNorm(d_model)
        for p in (self.A_log, self.D):
            p._no_weight_decay = True  # as in Mamba: an optimiser may leave these out of weight decay
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """(Re)initialise the per-head SSM parameters (module docstring); the rest keep nn defaults."""
        nn.init.uniform_(self.x_proj, -(self.head_dim**-0.5), self.head_dim**-0.5)
        nn.init.uniform_(self.dt_proj, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand_like(self.dt_bias) * (hi - lo) + lo)  # [H, P], log-uniform
        self.dt_bias.copy_(_inverse_softplus(dt))
        n = torch.arange(1, self.d_state + 1, dtype=self.A_log.dtype)  # [N]: 1 .. d_state
        self.A_log.copy_(torch.log(n).expand_as(self.A_log))
        self.D.fill_(1.0)

    @property
    def A(self) -> torch.Tensor:
        """``-exp(A_log)``: ``[H, P, d_state]``, negative so every state decays."""
        return -torch.exp(self.A_log)

    def conv_input(self, x: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv + SiLU: ``[B, d_inner, T] -> [B, d_inner, T]`` (t sees inputs <= t)."""
        T = x.shape[-1]
        return F.silu(self.conv(x)[..., :T])  # padding d_conv-1 both sides; keep the left-padded part

    def ssm_inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head Δ (before bias and softplus), B, C from each head's own channels of ``u [B, d_inner, T]``.

        Returns ``delta [B, d_inner, T]``, ``B [B, H, d_state, T]``, ``C [B, H, d_state, T]``.
        """
        b, _, T = u.shape
        R, N = self.dt_rank, self.d_state
        uh = u.view(b, self.heads, self.head_dim, T)  # [B, H, P, T]
        dbc = torch.einsum("bhpt,hpk->bhkt", uh, self.x_proj)  # [B, H, R + 2N, T]
        dt_low, Bm, Cm = dbc.split((R, N, N), dim=2)  # [B, H, R, T], [B, H, N, T] x2
        delta = torch.einsum("bhrt,hrp->bhpt", dt_low, self.dt_proj)  # [B, H, P, T]
        return delta.reshape(b, self.d_inner, T), Bm.contiguous(), Cm.contiguous()

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """The block without residual and norm: ``[B, T, d_model] -> [B, T, d_model]``."""
        x, z = self.in_proj(h).chunk(2, dim=-1)  # [B, T, d_inner] each
        u = self.conv_input(x.transpose(1, 2))  # [B, d_inner, T]
        delta, Bm, Cm = self.ssm_inputs(u)
        y = selective_scan(
            u,
            delta,
            self.A.reshape(self.d_inner, self.d_state),  # [d_inner, N], head-major like u
            Bm,  # groups = heads: channel c reads head c // P
            Cm,
            D=self.D.reshape(self.d_inner),
            z=z.transpose(1, 2),  # [B, d_inner, T]; the gate silu(z) is applied inside the scan
            delta_bias=self.dt_bias.reshape(self.d_inner),
            delta_softplus=True,
            backend=self.scan_backend,
        )  # [B, d_inner, T]
        return self.out_proj(y.transpose(1, 2))  # [B, T, d_model]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``LN(h + mix(h))``: ``[B, T, d_model] -> [B, T, d_model]``."""
        return self.norm(h + self.mix(h))


class MHMamba(nn.Module):
    """``layers`` stacked :class:`MHMambaBlock` (keyword arguments passed to each): ``[B, T, D] -> [B, T, D]``."""

    def __init__(self, layers: int = 3, **block_kw):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.blocks = nn.ModuleList(MHMambaBlock(**block_kw) for _ in range(layers))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)  # [B, T, d_model]
        return h
