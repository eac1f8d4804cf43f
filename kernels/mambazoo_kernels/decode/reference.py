"""Decode step (one token of recurrent generation): the PyTorch reference.

Semantics of mamba_ssm's ``selective_state_update`` and causal-conv1d's ``causal_conv1d_update``
for Mamba-1 shapes; both update their state in place and return the token's output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_channel(bc: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C ``(batch, N)`` / ``(batch, groups, N)`` -> ``(batch, dim, N)``."""
    if bc.dim() == 2:
        return bc[:, None, :]
    return bc.repeat_interleave(dim // bc.shape[1], dim=1)


def selective_state_update_reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Reference for :func:`mambazoo_kernels.selective_state_update` (same arguments and return)::

        dt = softplus(dt + dt_bias);  state = exp(dt * A) * state + dt * B * x
        y = sum_n C[n] * state[n] + D * x;  y = y * silu(z)

    computed in ``state``'s dtype (fp32, or fp64 for an fp64 state).
    """
    compute = state.dtype
    dim = x.shape[1]
    dt = dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)
    xc = x.to(compute)
    decay = torch.exp(dt[..., None] * A.to(compute))
    state.copy_(state * decay + (dt * xc)[..., None] * _per_channel(B, dim).to(compute))
    y = (state * _per_channel(C, dim).to(compute)).sum(-1)
    if D is not None:
        y = y + D.to(compute) * xc
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(x.dtype)


def causal_conv1d_update_reference(x, conv_state, weight, bias=None, activation="silu"):
    """Reference for :func:`mambazoo_kernels.causal_conv1d_update`: shift ``conv_state`` one step
    left, append ``x``, return ``act(bias + sum_k weight[k] * conv_state[k])``."""
    conv_state.copy_(torch.cat([conv_state[..., 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    compute = torch.promote_types(conv_state.dtype, torch.float32)
    out = (conv_state.to(compute) * weight.to(compute)).sum(-1)
    if bias is not None:
        out = out + bias.to(compute)
    if activation == "silu":
        out = F.silu(out)
    return out.to(x.dtype)
