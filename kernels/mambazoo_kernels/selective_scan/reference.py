"""Selective scan (Mamba-1, S6): the PyTorch reference, a chunked parallel algorithm.

For every batch b, channel d and state n::

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[t, n] * u[t]
    y[t] = sum_n C[t, n] * h[t, n] + D[d] * u[t]
    out[t] = y[t] * silu(z[t])

Time is cut into chunks. Inside a chunk the recurrence is solved by a parallel (Hillis-Steele)
prefix scan over (decay, input) pairs; one fp32 state is carried from chunk to chunk. Under
autograd every chunk is checkpointed, so training keeps the chunk-boundary states and one
chunk's working set, never a (batch, dim, length, d_state) tensor. This is the CPU path and the
oracle for the Triton kernels.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Elements of one sample's (dim, chunk, d_state) work tensor: bounds memory, keeps Python loops
# short. Independent of the batch size so that torch.export can keep the batch dynamic.
_CHUNK_ELEMENTS_PER_SAMPLE = 1 << 17


def linear_scan(decay: torch.Tensor, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of ``h[t] = decay[t] * h[t-1] + x[t]`` along dim -2, with ``h[-1] = 0``.

    ``decay`` and ``x`` are ``(..., T, N)``. Returns ``(h, prod_{k<=t} decay[k])``, both ``(..., T, N)``.
    log2(T) out-of-place steps, so autograd can differentiate through it.
    """
    length = x.shape[-2]
    step = 1
    while step < length:
        x = torch.cat([x[..., :step, :], torch.addcmul(x[..., step:, :], decay[..., step:, :], x[..., :-step, :])], -2)
        decay = torch.cat([decay[..., :step, :], decay[..., step:, :] * decay[..., :-step, :]], -2)
        step *= 2
    return x, decay


def _per_channel(bc: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as a tensor broadcastable to (batch, dim, T, d_state)."""
    if bc.dim() == 2:  # constant: (dim, d_state)
        return bc[None, :, None, :]
    groups = bc.shape[1]  # per token: (batch, groups, d_state, T)
    return bc.transpose(-1, -2).repeat_interleave(dim // groups, dim=1)


def _scan_chunk(h0, u, delta, A, B, C):
    """One chunk: ``h0`` (batch, dim, N), ``u``/``delta`` (batch, dim, T), all in the compute dtype.

    Returns ``y`` (batch, dim, T) without the D term and the last state (batch, dim, N).
    """
    dim = u.shape[1]
    log_decay = delta.unsqueeze(-1) * A.unsqueeze(1)
    inputs = (delta * u).unsqueeze(-1) * _per_channel(B, dim).to(u.dtype)
    h, decay_cum = linear_scan(torch.exp(log_decay), inputs)
    h = torch.addcmul(h, decay_cum, h0.unsqueeze(2))
    y = (h * _per_channel(C, dim).to(u.dtype)).sum(-1)
    return y, h[:, :, -1]


def _time_slice(bc: torch.Tensor, start: int, end: int) -> torch.Tensor:
    return bc if bc.dim() == 2 else bc[..., start:end]


def scan_states(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ungated scan: returns ``y`` (batch, dim, length) and the final state (batch, dim, N).

    Both in fp32 (fp64 for fp64 inputs), whatever the input dtype. B/C per token are
    ``(batch, groups, N, length)`` (a 3-D ``(batch, N, length)`` is one group).
    """
    batch, dim, length = u.shape
    d_state = A.shape[-1]
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    compute = torch.promote_types(u.dtype, torch.float32)
    u = u.to(compute)
    delta = delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(compute)
    h = u.new_zeros(batch, dim, d_state) if initial_state is None else initial_state.to(compute)
    if chunk_size is None:
        fitting = max(1, _CHUNK_ELEMENTS_PER_SAMPLE // (dim * d_state))
        chunk_size = min(256, max(16, 1 << (fitting.bit_length() - 1)))  # a power of two
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, h)
    )
    ys = []
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        args = (h, u[..., start:end], delta[..., start:end], A, _time_slice(B, start, end), _time_slice(C, start, end))
        y, h = checkpoint(_scan_chunk, *args, use_reentrant=False) if needs_grad else _scan_chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=-1)
    if D is not None:
        y = torch.addcmul(y, u, D.to(compute)[:, None])
    return y, h


def _gate(y: torch.Tensor, z: Optional[torch.Tensor]) -> torch.Tensor:
    return y if z is None else y * F.silu(z.to(y.dtype))


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, chunk_size=None,
):
    """Reference selective scan; same arguments and returns as :func:`mambazoo_kernels.selective_scan`."""
    y, state = scan_states(u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, chunk_size)
    out = _gate(y, z).to(u.dtype)
    return (out, state) if return_final_state else out


def bidirectional_selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, average=False, chunk_size=None,
):
    """Reference bidirectional scan: two scans, the second over the flipped sequence, flipped back.

    Same arguments and returns as :func:`mambazoo_kernels.bidirectional_selective_scan`.
    """
    per_direction = []
    for direction in range(2):
        flip = (lambda t: t.flip(-1)) if direction == 1 else (lambda t: t)
        B_dir, C_dir = B[direction], C[direction]
        y, state = scan_states(
            flip(u[direction]), flip(delta[direction]), A[direction],
            B_dir if B_dir.dim() == 2 else flip(B_dir), C_dir if C_dir.dim() == 2 else flip(C_dir),
            None if D is None else D[direction], None if delta_bias is None else delta_bias[direction],
            delta_softplus, None if initial_state is None else initial_state[direction], chunk_size,
        )
        per_direction.append((flip(y), state))
    y = per_direction[0][0] + per_direction[1][0]
    if average:
        y = y * 0.5
    out = _gate(y, z).to(u.dtype)
    if return_final_state:
        return out, torch.stack([per_direction[0][1], per_direction[1][1]])
    return out
