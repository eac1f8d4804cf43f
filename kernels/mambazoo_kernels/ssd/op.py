"""Public SSD (Mamba-2) op: validate the arguments, then run the chosen backend."""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Tuple

import torch

from .._backend import select_backend
from .._validation import check_d_state, check_optional, check_tensor
from .reference import DEFAULT_DT_LIMIT, ssd_reference

SEQ_IDX_DTYPES = (torch.int32, torch.int64)


def _check_ssd_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_states, seq_idx):
    check_tensor("x", x, (None, None, None, None), "(batch, length, heads, headdim)")
    batch, length, heads, headdim = x.shape
    if min(x.shape) < 1:
        raise ValueError(f"x must have non-empty batch, length, heads and headdim, got shape {tuple(x.shape)}")
    device = x.device
    check_tensor("dt", dt, (batch, length, heads), "(batch, length, heads)", device)
    check_tensor("A", A, (heads,), "(heads,)", device)
    check_tensor("B", B, (batch, length, None, None), "(batch, length, groups, d_state)", device)
    groups, d_state = B.shape[-2:]
    if groups < 1 or heads % groups:
        raise ValueError(f"B: groups ({groups}) must divide heads ({heads})")
    check_d_state(d_state)
    check_tensor("C", C, (batch, length, groups, d_state), "(batch, length, groups, d_state) like B", device)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if isinstance(D, torch.Tensor) and D.dim() == 2:
        check_tensor("D", D, (heads, headdim), "(heads, headdim)", device)
    else:
        check_optional("D", D, (heads,), "(heads,) or (heads, headdim)", device)
    check_optional("z", z, (batch, length, heads, headdim), "(batch, length, heads, headdim)", device)
    check_optional("dt_bias", dt_bias, (heads,), "(heads,)", device)
    if (
        not isinstance(dt_limit, (tuple, list))
        or len(dt_limit) != 2
        or not all(isinstance(v, Real) and not math.isnan(v) for v in dt_limit)
        or not 0 <= dt_limit[0] <= dt_limit[1]
    ):
        raise ValueError(f"dt_limit must be a pair (low, high) with 0 <= low <= high, got {dt_limit!r}")
    check_optional(
        "initial_states", initial_states, (batch, heads, headdim, d_state), "(batch, heads, headdim, d_state)", device
    )
    check_optional("seq_idx", seq_idx, (batch, length), "(batch, length)", device, dtypes=SEQ_IDX_DTYPES)


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
        chunk_size: tokens per chunk; changes speed and memory, not the result (beyond rounding).
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
    _check_ssd_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_states, seq_idx)
    select_backend("ssd", backend, x.device, has_triton=False)
    return ssd_reference(
        x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states, seq_idx,
        return_final_states,
    )
