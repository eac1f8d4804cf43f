"""Public SSD (Mamba-2) ops: validate the arguments, pick the backend, then call the registered
``mambazoo::`` op (``library_ops``), which runs the Triton kernels or the PyTorch reference."""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Sequence, Tuple

import torch

from .._backend import needs_grad, use_triton
from .._validation import check_d_state, check_optional, check_tensor
from . import library_ops
from .reference import DEFAULT_DT_LIMIT

SEQ_IDX_DTYPES = (torch.int32, torch.int64)


def _check_shareable(name: str, value, prefix: Sequence[int], shape: Sequence, dims: str, device=None):
    """``x``, ``B`` or ``C``: one tensor of ``shape`` or, with ``prefix`` (2,), also one per direction."""
    if prefix and isinstance(value, torch.Tensor) and value.dim() == len(shape) + 1:
        return check_tensor(name, value, (*prefix, *shape), f"(2, {dims[1:]}", device)
    return check_tensor(name, value, shape, f"{dims} or (2, {dims[1:]}" if prefix else dims, device)


def _check_ssd_args(prefix, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_states, seq_idx):
    """``prefix`` is ``()`` for ``ssd`` and ``(2,)`` for ``bidirectional_ssd``, whose per-direction
    arguments lead with it (``x``, ``B`` and ``C`` may also be shared by the two directions)."""
    lead = "(2, " if prefix else "("
    _check_shareable("x", x, prefix, (None, None, None, None), "(batch, length, heads, headdim)")
    batch, length, heads, headdim = x.shape[-4:]
    if min(x.shape) < 1:
        raise ValueError(f"x must have non-empty batch, length, heads and headdim, got shape {tuple(x.shape)}")
    device = x.device
    check_tensor("dt", dt, (*prefix, batch, length, heads), f"{lead}batch, length, heads)", device)
    check_tensor("A", A, (*prefix, heads), "(2, heads)" if prefix else "(heads,)", device)
    _check_shareable("B", B, prefix, (batch, length, None, None), "(batch, length, groups, d_state)", device)
    groups, d_state = B.shape[-2:]
    if groups < 1 or heads % groups:
        raise ValueError(f"B: groups ({groups}) must divide heads ({heads})")
    check_d_state(d_state)
    bc_lead = lead if B.dim() == 5 else "("
    check_tensor("C", C, B.shape, f"{bc_lead}batch, length, groups, d_state) like B", device)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if isinstance(D, torch.Tensor) and D.dim() == len(prefix) + 2:
        check_tensor("D", D, (*prefix, heads, headdim), f"{lead}heads, headdim)", device)
    else:
        check_optional("D", D, (*prefix, heads), f"{lead}heads{')' if prefix else ',)'} or {lead}heads, headdim)",
                       device)
    check_optional("z", z, (batch, length, heads, headdim), "(batch, length, heads, headdim)", device)
    check_optional("dt_bias", dt_bias, (*prefix, heads), "(2, heads)" if prefix else "(heads,)", device)
    if (
        not isinstance(dt_limit, (tuple, list))
        or len(dt_limit) != 2
        or not all(isinstance(v, Real) and not math.isnan(v) for v in dt_limit)
        or not 0 <= dt_limit[0] <= dt_limit[1]
    ):
        raise ValueError(f"dt_limit must be a pair (low, high) with 0 <= low <= high, got {dt_limit!r}")
    check_optional(
        "initial_states", initial_states, (*prefix, batch, heads, headdim, d_state),
        f"{lead}batch, heads, headdim, d_state)", device,
    )
    check_optional("seq_idx", seq_idx, (batch, length), "(batch, length)", device, dtypes=SEQ_IDX_DTYPES)


def _unsupported(x, dt, A, B, C, z):
    """Why the Triton kernels cannot take these arguments (``None`` if they can).

    The Triton module is imported here, on first use, so that ``import mambazoo_kernels`` never
    imports Triton.
    """
    from . import triton_op

    return triton_op.unsupported_reason(x, dt, A, B, C, z)


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Tuple[float, float] = DEFAULT_DT_LIMIT,
    initial_states: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
    return_final_states: bool = False,
    backend: Optional[str] = None,
):
    """Mamba-2 SSD (state-space duality), chunked.

    Per batch b, head h, channel p and state n:
    ``s[t] = exp(dt[t] * A[h]) * s[t-1] + dt[t] * B[t, n] * x[t, p]``,
    ``y[t] = sum_n C[t, n] * s[t, p, n] + D * x[t, p]``, ``out = y * silu(z)``.

    Args:
        x: ``(batch, length, heads, headdim)``, fp32/bf16/fp16.
        dt: ``(batch, length, heads)``; ``dt = softplus(dt + dt_bias)`` when ``dt_softplus``, then
            clamped to ``dt_limit`` (the default ``(0, inf)`` leaves it untouched, as in mamba_ssm).
        A: ``(heads,)``, negative, kept fp32.
        B, C: ``(batch, length, groups, d_state)``; ``groups`` divides ``heads`` and head h reads
            group ``h // (heads // groups)``.
        chunk_size: tokens per chunk of the reference; changes speed and memory, not the result
            (beyond rounding). The Triton kernels choose their own chunk.
        D: ``(heads,)`` or ``(heads, headdim)`` skip connection, kept fp32.
        z: ``(batch, length, heads, headdim)`` gate: ``out = y * silu(z)``.
        dt_bias: ``(heads,)``, kept fp32.
        initial_states: ``(batch, heads, headdim, d_state)`` state before the first token.
        seq_idx: ``(batch, length)`` int32/int64, non-decreasing (not checked: that would read the
            values), for packed variable-length sequences: the state is reset wherever ``seq_idx``
            changes, so no state crosses from one sequence into the next. ``initial_states`` then
            reach only the first sequence of each row, and the final states are those of the last.
        backend: ``"reference"``, ``"triton"`` or ``None`` (``MAMBAZOO_KERNEL_BACKEND``, else auto).

    Returns:
        ``out`` ``(batch, length, heads, headdim)`` in ``x``'s dtype, and with
        ``return_final_states`` the fp32 (float64 for float64 inputs) state after the last token,
        ``(batch, heads, headdim, d_state)``.
    """
    _check_ssd_args((), x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_states, seq_idx)
    with_triton = use_triton("ssd", backend, x.device, lambda: _unsupported(x, dt, A, B, C, z))
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    out, final_states, *_ = library_ops.ssd_op(
        *tensors, seq_idx, chunk_size, dt_softplus, [float(v) for v in dt_limit], with_triton, needs_grad(*tensors))
    return (out, final_states) if return_final_states else out


def bidirectional_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Tuple[float, float] = DEFAULT_DT_LIMIT,
    initial_states: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
    return_final_states: bool = False,
    average: bool = False,
    backend: Optional[str] = None,
):
    """A left-to-right and a right-to-left SSD with separate per-direction parameters, summed.

    Same conventions as :func:`bidirectional_selective_scan`: every per-direction argument has a
    leading axis of size 2, index 0 scanning left to right and index 1 right to left, and every
    tensor is in natural token order (the reversed direction reads the sequence backwards; the
    caller flips nothing). Per direction the recurrence is :func:`ssd`'s.

    Args:
        x: ``(batch, length, heads, headdim)`` read by both directions, or ``(2, batch, length,
            heads, headdim)`` one per direction (a mixer whose directions have their own conv).
        dt: ``(2, batch, length, heads)``; ``dt_softplus`` and ``dt_limit`` apply to both.
        A: ``(2, heads)``; D: ``(2, heads)`` or ``(2, heads, headdim)``; dt_bias: ``(2, heads)``.
        B, C: shared ``(batch, length, groups, d_state)`` (both directions read the same B/C),
            or per direction ``(2, batch, length, groups, d_state)``; C has B's layout.
        z: ``(batch, length, heads, headdim)``, shared: ``out = (y_fwd + y_rev) * silu(z)``.
        initial_states: ``(2, batch, heads, headdim, d_state)``; the reversed direction's state
            enters after the last token.
        seq_idx: ``(batch, length)``: the state resets at every boundary in BOTH directions (the
            reversed direction restarts at each segment's last token).
        average: halve the sum, before the gate.
        chunk_size, backend: as :func:`ssd`.

    Returns:
        ``out`` ``(batch, length, heads, headdim)`` in ``x``'s dtype; with ``return_final_states``
        also the fp32 (float64 for float64 inputs) states ``(2, batch, heads, headdim, d_state)``:
        forward after the last token, reversed after the first.
    """
    _check_ssd_args((2,), x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_states, seq_idx)
    with_triton = use_triton("bidirectional_ssd", backend, x.device, lambda: _unsupported(x, dt, A, B, C, z))
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    out, final_states, *_ = library_ops.bidirectional_ssd_op(
        *tensors, seq_idx, chunk_size, dt_softplus, [float(v) for v in dt_limit], average, with_triton,
        needs_grad(*tensors))
    return (out, final_states) if return_final_states else out
