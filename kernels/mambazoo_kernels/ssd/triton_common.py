"""Building blocks shared by the Triton SSD forward and backward kernels.

Only core Triton builtins are used here and in the kernels: ``triton.language.standard``'s
functions (``tl.sum``, ``tl.cumsum``, ``tl.sigmoid``, ``tl.zeros``) are ``@jit`` functions whose
interpreter/compiled mode is fixed when triton is first imported, so a process that imported
triton before setting ``TRITON_INTERPRET=1`` could not run these kernels under the interpreter.

Chunk geometry (both kernels): a program owns one (direction, batch, head, headdim block) and a
run of chunks of Q tokens. Direction 1 (the reversed scan of the bidirectional op) visits the
chunks last to first and reads each chunk backwards: row ``c`` of a chunk tile is token
``k * Q + rev0 + sgn * c`` (``sgn = -1``, ``rev0 = Q - 1``), so both directions run the same code
in "processing order" and nothing is flipped in memory. Padded rows (token >= L) have dt = 0 and
x = B = C = 0: they leave every state unchanged wherever they fall.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

# Triton's interpreter (3.8) multiplies bf16/fp16 dot operands as raw bits; under it the
# low-precision operands are rounded to their dtype and multiplied in fp32 (same rounding, same
# fp32 accumulation as the tensor-core dot).
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, _add)


@triton.jit
def _cumsum(x, axis: tl.constexpr):
    return tl.associative_scan(x, axis, _add)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _softplus(x):
    # log1p(exp(x)) accurate for small exp(x) (Goldberg), identity above 20 like torch.
    e = tl.exp(tl.minimum(x, 20.0))
    v = 1.0 + e
    sp = tl.where(v == 1.0, e, tl.log(v) * (e / (v - 1.0)))
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _mm(a, b, LOWP: tl.constexpr, dtype: tl.constexpr, acc=None):
    """``acc`` + a @ b (fp32 accumulation): operands in ``dtype`` (bf16/fp16 inputs, tensor cores) when
    ``LOWP``, else exact fp32 (fp32 inputs: no tf32 rounding)."""
    if LOWP:
        if _INTERPRETED:
            return tl.dot(a.to(dtype).to(tl.float32), b.to(dtype).to(tl.float32), acc=acc, out_dtype=tl.float32)
        else:
            return tl.dot(a.to(dtype), b.to(dtype), acc=acc, out_dtype=tl.float32)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc=acc, input_precision="ieee", out_dtype=tl.float32)


@triton.jit
def program_setup(A_ptr, bias_ptr, D_ptr, sD_h, sD_p, batch, H, P, N, heads_per_group, n_segs,
                  Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """What a program of either kernel owns and reads once (grid: (batch * heads, headdim blocks,
    2 directions * n_segs segments)). Returns
    (direction, dir64, seg, b, h, g, row, offs_c, offs_p, offs_n, pmask, nmask, pn_mask, pn_offs, sgn, rev0,
    A, bias, Dv): ``row`` indexes (direction, batch, head); ``pn_offs`` / ``pn_mask`` a (BP, BN) state
    tile; ``sgn`` / ``rev0`` the direction's row order (module docstring); ``A``, ``bias`` (0 without
    HAS_BIAS) and ``Dv`` (BP values of D, 0 without HAS_D; D per head has ``sD_p = 0``) the head's
    parameters.
    """
    pid_bh = tl.program_id(0).to(tl.int64)
    direction = tl.program_id(2) // n_segs
    seg = tl.program_id(2) - direction * n_segs
    dir64 = direction.to(tl.int64)
    b = pid_bh // H
    h = pid_bh - b * H
    g = h // heads_per_group
    row = (dir64 * batch + b) * H + h
    offs_c = tl.arange(0, Q)
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pmask = offs_p < P
    nmask = offs_n < N
    pn_mask = pmask[:, None] & nmask[None, :]
    pn_offs = offs_p[:, None] * N + offs_n[None, :]
    sgn = 1 - 2 * direction
    rev0 = direction * (Q - 1)
    A = tl.load(A_ptr + dir64 * H + h)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + dir64 * H + h)
    Dv = 0.0
    if HAS_D:
        Dv = tl.load(D_ptr + (dir64 * H + h) * sD_h + offs_p * sD_p, mask=pmask, other=0.0)
    return (direction, dir64, seg, b, h, g, row, offs_c, offs_p, offs_n, pmask, nmask, pn_mask, pn_offs, sgn, rev0,
            A, bias, Dv)


@triton.jit
def chunk_setup(dt_base, seq_base, k, L, H, A, bias, dt_min, dt_max, sgn, rev0, offs_c,
                Q: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                HAS_LIMIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """One chunk's token indices, processed dt, cumulative log-decay and sequence masks.

    ``dt_base`` points at (direction, batch, token 0, head) of dt (token stride ``H``),
    ``seq_base`` at (batch, token 0) of seq_idx. Returns
    (tok64, valid, dt, dt_grad, cs, cs_last, same_seq, start_ok, end_ok, pass_ok): ``dt_grad`` =
    d dt / d (raw dt), as torch differentiates softplus (1 above its threshold 20) and clamp (0
    where the limit clamps, the bounds themselves passed through); ``cs[c]`` = sum of dt * A over
    rows 0..c (processing order); ``same_seq[i, j]`` whether rows i
    and j are in one sequence; ``start_ok[c]`` whether the state entering the chunk reaches row c;
    ``end_ok[c]`` whether row c reaches the chunk's end state; ``pass_ok`` whether the entering
    state reaches the end state (no sequence boundary inside the chunk).
    """
    tok = k * Q + rev0 + sgn * offs_c
    valid = tok < L
    tok64 = tok.to(tl.int64)
    dt = tl.load(dt_base + tok64 * H, mask=valid, other=0.0).to(tl.float32)
    dt_grad = tl.full([Q], 1.0, tl.float32)
    if HAS_BIAS:
        dt = dt + bias
    if SOFTPLUS:
        e = tl.exp(tl.minimum(dt, 20.0))
        dt_grad = tl.where(dt > 20.0, 1.0, e / (1.0 + e))
        dt = _softplus(dt)
    if HAS_LIMIT:
        dt_grad = tl.where((dt >= dt_min) & (dt <= dt_max), dt_grad, 0.0)
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(valid, dt, 0.0)
    cs = _cumsum(dt * A, 0)
    cs_last = _sum(dt * A, 0)
    if HAS_SEQ:
        sq = tl.load(seq_base + tok64, mask=valid, other=0)
        # The token processed just before the chunk (the first chunk: its own first token, so the
        # initial state reaches the first sequence) and the chunk's last real token.
        prev_tok = tl.minimum(tl.maximum(k * Q + rev0 - sgn, 0), L - 1).to(tl.int64)
        end_tok = tl.minimum(tl.maximum(k * Q + rev0 + sgn * (Q - 1), 0), L - 1).to(tl.int64)
        sq_prev = tl.load(seq_base + prev_tok)
        sq_end = tl.load(seq_base + end_tok)
        same_seq = sq[:, None] == sq[None, :]
        start_ok = sq == sq_prev
        end_ok = sq == sq_end
        pass_ok = sq_end == sq_prev
    else:
        same_seq = offs_c[:, None] >= 0
        start_ok = offs_c >= 0
        end_ok = offs_c >= 0
        pass_ok = k >= 0
    return tok64, valid, dt, dt_grad, cs, cs_last, same_seq, start_ok, end_ok, pass_ok


@triton.jit
def _chain(a1, b1, a2, b2):
    """The maps ``c -> a1 c + b1`` then ``c -> a2 c + b2`` as one."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def segment_combine_kernel(local_ptr, decay_ptr, init_ptr, carry_ptr, n_segs, n_out, every, PN,
                           BLOCK: tl.constexpr, SEGS: tl.constexpr, HAS_INIT: tl.constexpr,
                           REVERSE: tl.constexpr):
    """Chain segment-local results, one row = (direction, batch, head) of ``PN`` state entries;
    grid (rows, PN blocks).

    ``local[row, s]`` is what segment s produces from a zero carry (forward: its end state;
    backward: the adjoint it passes on), ``decay[row, s]`` what the carry through it is multiplied
    by (0 across a sequence boundary). The chain runs left to right (``REVERSE``: right to left)
    from ``init`` (or zero); ``carry[row, o]`` gets the carry entering segment ``o * every``
    (``REVERSE``: entering ``min(o * every + every - 1, n_segs - 1)`` from its right), i.e. what
    the full pass's segment o starts from when its segments are ``every`` of these long. Blocks of
    ``SEGS`` segments are chained at once by a scan of the (decay, local) maps, so the chain costs
    one load latency per block instead of one per segment.
    """
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    if HAS_INIT:
        carry = tl.load(init_ptr + row * PN + offs, mask=mask, other=0.0)
    else:
        carry = tl.full([BLOCK], 0.0, tl.float32)
    pos = tl.arange(0, SEGS)
    for start in range(0, n_segs, SEGS):
        j = start + pos  # chain order
        # The map applied on the way into position j is segment j - 1's (identity at j = 0).
        prev = j - 1
        ok = (prev >= 0) & (prev < n_segs)
        s_prev = (n_segs - 1 - prev) if REVERSE else prev
        a = tl.load(decay_ptr + row * n_segs + s_prev, mask=ok, other=1.0)
        b = tl.load(local_ptr + (row * n_segs + s_prev)[:, None] * PN + offs[None, :],
                    mask=ok[:, None] & mask[None, :], other=0.0)
        a_cum, b_cum = tl.associative_scan((tl.broadcast_to(a[:, None], (SEGS, BLOCK)), b), 0, _chain)
        entering = a_cum * carry[None, :] + b_cum
        s = (n_segs - 1 - j) if REVERSE else j
        if REVERSE:
            chosen = ((s % every) == every - 1) | (s == n_segs - 1)
        else:
            chosen = (s % every) == 0
        chosen = chosen & (j < n_segs)
        tl.store(carry_ptr + (row * n_out + s // every)[:, None] * PN + offs[None, :], entering,
                 mask=chosen[:, None] & mask[None, :])
        carry = _sum(tl.where((pos == SEGS - 1)[:, None], entering, 0.0), 0)
