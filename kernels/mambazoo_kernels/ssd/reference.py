"""SSD (Mamba-2 state-space duality): the PyTorch reference, a chunked matrix algorithm.

For every batch b, head h, channel p of that head and state n::

    s[t, p, n] = exp(dt[t] * A[h]) * s[t-1, p, n] + dt[t] * B[t, n] * x[t, p]
    y[t, p]    = sum_n C[t, n] * s[t, p, n] + D * x[t, p]
    out[t, p]  = y[t, p] * silu(z[t, p])

A is one scalar per head, so the decay between two tokens is the same for every (p, n) of a
head and the recurrence unrolls into a masked, attention-like matrix: with
``segsum[i, j] = sum_{k=j+1..i} dt[k] * A``, ``y[i] = sum_{j<=i} (C[i] . B[j]) exp(segsum[i, j]) dt[j] x[j]``.
Doing that over the whole sequence is quadratic in length, so time is cut into chunks of Q tokens
(the "minimal SSD" of the Mamba-2 paper):

1. intra-chunk output: the quadratic form restricted to each chunk (all chunks at once);
2. chunk states: the state each chunk alone leaves behind (its tokens decayed to the chunk end);
3. state passing: the states entering each chunk, one short loop over chunks;
4. state-to-output: each entering state decayed to every token of its chunk and read out by C.

Every decay is the exponential of a *direct* sum of non-positive ``dt * A`` terms, never a
difference of two prefix sums: differences of long prefix sums cancel catastrophically, and a
sequence boundary (a log-decay of -inf, see ``seq_idx``) would turn them into nan.

States and accumulation are fp32 (float64 when an input is float64). Under autograd the
quadratic part is checkpointed, so training stores no ``(chunk, chunk)`` matrices. This is the
CPU path and the oracle for the Triton kernels.

The bidirectional SSD adds a second scan that runs right to left. Here it is the same chunked
algorithm on the time-flipped inputs, its output flipped back; the Triton kernels read the
reversed direction by index instead of materialising flipped copies.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DEFAULT_DT_LIMIT = (0.0, math.inf)


def process_dt(
    dt: torch.Tensor,
    dt_bias: Optional[torch.Tensor],
    dt_softplus: bool,
    dt_limit: Tuple[float, float],
) -> torch.Tensor:
    """``dt`` (batch, length, heads) -> ``clamp(softplus(dt + dt_bias))``, at least fp32.

    As in mamba_ssm, the default ``dt_limit = (0, inf)`` leaves ``dt`` untouched; any other limit
    clamps it.
    """
    dt = dt.to(torch.promote_types(dt.dtype, torch.float32))
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != DEFAULT_DT_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def segment_sum(log_decay: torch.Tensor) -> torch.Tensor:
    """Pairwise log-decays inside a chunk, along the last axis.

    ``log_decay`` is ``(..., T)``. Returns ``(..., T, T)`` with ``[..., i, j] = sum_{k=j+1..i}
    log_decay[k]`` for ``i >= j`` (0 on the diagonal) and -inf above it (the future has no
    influence). Each entry sums exactly the terms it covers (a cumsum of a strictly-lower-triangular
    copy), so it is exact up to rounding and -inf stays -inf.
    """
    length = log_decay.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=log_decay.device)
    # terms[..., i, j] = log_decay[i] where i > j, else 0; the cumsum over i then covers (j, i].
    terms = log_decay.unsqueeze(-1).expand(*log_decay.shape, length)
    terms = terms.masked_fill(~ones.tril(-1), 0.0)
    return terms.cumsum(dim=-2).masked_fill(~ones.tril(0), -math.inf)


def _suffix_sum_exclusive(log_decay: torch.Tensor) -> torch.Tensor:
    """``[..., t] = sum_{k>t} log_decay[..., k]``: the log-decay from token t to the chunk end."""
    inclusive = log_decay.flip(-1).cumsum(-1).flip(-1)
    return torch.cat([inclusive[..., 1:], torch.zeros_like(inclusive[..., :1])], dim=-1)


def _chunk_local(
    x_dt: torch.Tensor, log_decay: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 1 and 2, each chunk on its own (zero state entering it).

    Layouts (c = chunk index, Q = chunk length, heads split as (groups g, heads per group r)):
        x_dt: ``(batch, c, Q, g, r, headdim)``, the input ``dt * x``;
        log_decay: ``(batch, c, g, r, Q)``, ``dt * A`` (-inf at a sequence start);
        B, C: ``(batch, c, Q, g, d_state)``.

    Returns the intra-chunk output ``(batch, c, Q, g, r, headdim)`` and the chunk states
    ``(batch, c, g, r, headdim, d_state)``.
    """
    # 1. y[i] = sum_{j<=i} (C[i] . B[j]) * exp(segsum[i, j]) * x_dt[j]; C.B is shared by a group's heads.
    scores = torch.einsum("bcign,bcjgn->bcgij", C, B)
    mixing = scores.unsqueeze(3) * torch.exp(segment_sum(log_decay))
    y_local = torch.einsum("bcgrij,bcjgrp->bcigrp", mixing, x_dt)

    # 2. state[p, n] = sum_j exp(decay from j to the chunk end) * x_dt[j, p] * B[j, n].
    decay_to_end = torch.exp(_suffix_sum_exclusive(log_decay)).permute(0, 1, 4, 2, 3)
    states = torch.einsum("bcjgn,bcjgrp->bcgrpn", B, x_dt * decay_to_end.unsqueeze(-1))
    return y_local, states


def ssd_fp32(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ungated SSD in fp32 (float64 if an input is float64), ``dt`` already processed.

    Layouts: x ``(batch, length, heads, headdim)``, dt ``(batch, length, heads)``, A ``(heads,)``,
    B/C ``(batch, length, groups, d_state)``, D ``(heads,)`` or ``(heads, headdim)``,
    initial_states ``(batch, heads, headdim, d_state)``, seq_idx ``(batch, length)``.

    Returns ``y`` ``(batch, length, heads, headdim)`` and the state after the last token
    ``(batch, heads, headdim, d_state)``, both in the compute dtype.
    """
    batch, length, heads, headdim = x.shape
    groups, d_state = B.shape[-2:]
    per_group = heads // groups
    dtype = torch.float64 if torch.float64 in (x.dtype, dt.dtype, A.dtype, B.dtype, C.dtype) else torch.float32
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))

    log_decay = dt * A  # (batch, length, heads), <= 0 for A < 0 and dt >= 0
    if seq_idx is not None:
        # A new sequence starts wherever seq_idx changes: a log-decay of -inf there zeroes every
        # decay that spans the boundary, so no state crosses it (initial_states reach only the
        # first sequence of each row).
        starts = F.pad(seq_idx[:, 1:] != seq_idx[:, :-1], (1, 0))
        log_decay = log_decay.masked_fill(starts.unsqueeze(-1), -math.inf)

    # Pad the time axis to whole chunks. Padded tokens have dt = 0 (decay 1) and B = C = 0: they
    # leave the state unchanged, so the last chunk's end state is the state after the last token.
    chunk = min(chunk_size, length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    x_dt = F.pad(x * dt.unsqueeze(-1), (0, 0, 0, 0, 0, pad))
    log_decay = F.pad(log_decay, (0, 0, 0, pad))
    B = F.pad(B, (0, 0, 0, 0, 0, pad))
    C = F.pad(C, (0, 0, 0, 0, 0, pad))

    x_dt = x_dt.view(batch, n_chunks, chunk, groups, per_group, headdim)
    log_decay = log_decay.view(batch, n_chunks, chunk, groups, per_group).permute(0, 1, 3, 4, 2)
    B = B.view(batch, n_chunks, chunk, groups, d_state)
    C = C.view(batch, n_chunks, chunk, groups, d_state)

    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x_dt, log_decay, B, C))
    if needs_grad:
        # Recompute the (chunk, chunk) matrices in backward instead of storing them.
        y_local, chunk_states = checkpoint(_chunk_local, x_dt, log_decay, B, C, use_reentrant=False)
    else:
        y_local, chunk_states = _chunk_local(x_dt, log_decay, B, C)

    # 3. State passing: entering[c + 1] = exp(total log-decay of chunk c) * entering[c] + chunk_states[c].
    if initial_states is None:
        state = x_dt.new_zeros(batch, groups, per_group, headdim, d_state)
    else:
        state = initial_states.to(dtype).view(batch, groups, per_group, headdim, d_state)
    chunk_decay = torch.exp(log_decay.sum(-1))[..., None, None]  # (batch, c, g, r, 1, 1)
    entering = []
    for c in range(n_chunks):
        entering.append(state)
        state = chunk_decay[:, c] * state + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # (batch, c, g, r, headdim, d_state)

    # 4. y[t] += exp(decay from the chunk start through t) * C[t] . entering state.
    decay_from_start = torch.exp(log_decay.cumsum(-1)).permute(0, 1, 4, 2, 3).unsqueeze(-1)
    y_carried = torch.einsum("bctgn,bcgrpn->bctgrp", C, entering) * decay_from_start

    y = (y_local + y_carried).reshape(batch, n_chunks * chunk, heads, headdim)[:, :length]
    if D is not None:
        D = D.to(dtype)
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    return y, state.reshape(batch, heads, headdim, d_state)


def ssd_reference(
    x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
    dt_limit=DEFAULT_DT_LIMIT, initial_states=None, seq_idx=None, return_final_states=False,
):
    """Reference SSD; same arguments and returns as :func:`mambazoo_kernels.ssd`."""
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit)
    y, final_states = ssd_fp32(x, dt, A, B, C, chunk_size, D, initial_states, seq_idx)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    out = y.to(x.dtype)
    return (out, final_states) if return_final_states else out


def _of_direction(t: torch.Tensor, direction: int) -> torch.Tensor:
    """``x``, ``B`` or ``C`` of one direction: shared (4-D) or per direction (5-D, leading axis 2)."""
    return t if t.dim() == 4 else t[direction]


def bidirectional_ssd_reference(
    x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
    dt_limit=DEFAULT_DT_LIMIT, initial_states=None, seq_idx=None, return_final_states=False, average=False,
):
    """Reference bidirectional SSD: the forward scan, plus a scan of the flipped sequence flipped back.

    Same arguments and returns as :func:`mambazoo_kernels.bidirectional_ssd`. Flipping ``seq_idx``
    makes the reversed scan restart at every segment's last token (``ssd_fp32`` resets wherever
    the id changes, in either direction).
    """
    outputs, finals = [], []
    for direction in range(2):
        flip = (lambda t: t.flip(1)) if direction == 1 else (lambda t: t)
        dt_dir = process_dt(dt[direction], None if dt_bias is None else dt_bias[direction], dt_softplus, dt_limit)
        y, final = ssd_fp32(
            flip(_of_direction(x, direction)), flip(dt_dir), A[direction],
            flip(_of_direction(B, direction)), flip(_of_direction(C, direction)), chunk_size,
            None if D is None else D[direction],
            None if initial_states is None else initial_states[direction],
            None if seq_idx is None else flip(seq_idx),
        )
        outputs.append(flip(y))
        finals.append(final)
    y = outputs[0] + outputs[1]
    if average:
        y = y * 0.5
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    out = y.to(x.dtype)
    return (out, torch.stack(finals)) if return_final_states else out
