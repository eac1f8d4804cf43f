"""Triton forward kernel of the SSD (Mamba-2), all stages of a chunk fused in one program.

Layouts (``triton_op`` prepares them; ``ndir`` is 1, or 2 for the bidirectional op):

    x                 (ndir, batch, L, heads, headdim), contiguous per direction (direction
                      stride ``sx_dir``: 0 when both directions read one x)
    z, out, ypre      (batch, L, heads, headdim) contiguous, fp32/bf16/fp16
    dt                (ndir, batch, L, heads) contiguous, raw (bias/softplus/limit applied here)
    A, dt_bias        (ndir, heads) fp32;  D (ndir, heads) or (ndir, heads, headdim) fp32
    B, C              (ndir, batch, L, groups, d_state), any strides (direction stride 0 = shared)
    seq_idx           (batch, L) int32/int64
    states            (ndir, batch, heads, headdim, d_state) fp32 (initial, final)
    checkpoints       (ndir, batch, heads, n_chunks, headdim, d_state) in x's dtype: the state entering
                      each chunk (the backward feeds it to bf16/fp16 dots; only its fp32 <G, S0> term
                      sees the rounding)

A program owns one (batch x head, headdim block, direction x segment) and walks its chunks in
order, carrying the [headdim block, d_state] state in registers. Per chunk of Q tokens it loads
dt (and applies bias, softplus, limit), x, B, C once and computes, with ``cs`` the cumulative
log-decay of the chunk:

    intra-chunk   y  = ((C B^T) * exp(cs_i - cs_j) * [j <= i, same sequence]) @ (dt x)
    inter-chunk   y += exp(cs_i) [same sequence as the entering state] * C @ state^T
    chunk state   state = exp(cs_last) [no boundary] state + (exp(cs_last - cs_j) [same seq] dt x)^T @ B
    output        out = (y + D x) * silu(z)

so nothing but the outputs (and, for training, one fp32 state per chunk) goes to memory: the
five mamba_ssm kernels (cumsum, chunk state, state passing, C B^T, chunk scan) become one.

Few (batch, head) pairs and long sequences would leave most SMs idle, so the sequence can be cut
into segments (grid axis 2 = direction x segment): a state pass (``STATE_PASS``: no C, no
outputs) writes each segment's end state from a zero start and its total decay,
``segment_combine_kernel`` chains them, and the full pass runs every segment from its true
starting state. This costs a second read of x, dt and B. The state pass runs on segments
``state_split`` times shorter (``triton_op._state_split``): one small product per chunk leaves
it waiting on each chunk's loads, so more, shorter programs finish it sooner.

The bidirectional combine: the two directions meet once per (batch x head, headdim block,
chunk), counted by an int32 flag. A program announces itself when it starts the chunk (a relaxed
atomic whose answer it reads only at the chunk's end, so its latency hides behind the chunk's
work, and which orders nothing: an acquiring one would hold the chunk's loads back); the
first to arrive stores its fp32 ``y`` tile to a scratch buffer and publishes it (adds 4 to the
flag; the arrivals add 1 each); the second waits for a flag of 4 or more (reached already unless
both ran the chunk at the same time), reads the tile and writes ``(y_f + y_r) * scale * silu(z)``.
fp32 addition is commutative, so the result does not depend on which direction came first. The
first never waits, and the second waits only for a program that has started (is resident), so
the protocol cannot deadlock.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import _INTERPRETED, _mm, _sigmoid, chunk_setup, program_setup

# Sizes and flags that vary per call are plain (unspecialized) arguments, so one compiled kernel
# serves every batch, length and head count; headdim, d_state and the x/B/C strides stay
# specialized (divisibility by 16, unit stride) so that tile loads vectorize.
RUNTIME_ARGS = ["batch", "L", "H", "heads_per_group", "n_chunks", "n_segs", "seg_chunks",
                "has_init", "store_ckpt", "store_ypre"]


@triton.jit
def prefetch_rows(row_ptrs, ROW_BYTES: tl.constexpr):
    """Ask L1 for the cache lines of a tile's rows (``row_ptrs``: each row's first element, every
    pointer valid), e.g. the next chunk's, so that its loads find them there; no registers are held
    for them. Compiled kernels only: the interpreter runs no PTX, and there it is a no-op."""
    if not _INTERPRETED:
        lines: tl.constexpr = max(1, ROW_BYTES // 128)
        step: tl.constexpr = 128 * 8 // row_ptrs.dtype.element_ty.primitive_bitwidth
        ptrs = row_ptrs[:, None] + (tl.arange(0, lines) * step)[None, :]
        tl.inline_asm_elementwise("prefetch.global.L1 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, init_ptr,
    out_ptr, final_ptr, ckpt_ptr, ybuf_ptr, flag_ptr, ypre_ptr, seg_ptr, segdecay_ptr,
    batch, L, H, P, N, heads_per_group, n_chunks, n_segs, seg_chunks,
    sx_dir, sB_dir, sB_b, sB_t, sB_g, sB_n, sC_dir, sC_b, sC_t, sC_g, sC_n, sD_h, sD_p,
    has_init, store_ckpt, store_ypre, scale, dt_min, dt_max,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, LOWP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr, HAS_SEQ: tl.constexpr, STATE_PASS: tl.constexpr, BIDIR: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_p = tl.program_id(1)
    (direction, dir64, seg, b, h, g, row, offs_c, offs_p, offs_n, pmask, nmask, pn_mask, pn_offs, sgn, rev0,
     A, bias, Dv) = program_setup(A_ptr, bias_ptr, D_ptr, sD_h, sD_p, batch, H, P, N, heads_per_group, n_segs,
                                  Q, BP, BN, HAS_BIAS, HAS_D)
    dtype = x_ptr.dtype.element_ty
    dt_base = dt_ptr + (dir64 * batch + b) * L * H + h
    seq_base = seq_ptr + b * L
    x_base = x_ptr + dir64 * sx_dir + b * L * H * P + h * P
    B_base = B_ptr + dir64 * sB_dir + b * sB_b + g * sB_g
    C_base = C_ptr + dir64 * sC_dir + b * sC_b + g * sC_g
    tokP = H * P  # token stride of x / z / out
    x_bytes: tl.constexpr = x_ptr.dtype.element_ty.primitive_bitwidth // 8
    B_bytes: tl.constexpr = B_ptr.dtype.element_ty.primitive_bitwidth // 8

    if STATE_PASS:
        state = tl.full([BP, BN], 0.0, tl.float32)
    else:
        state = tl.load(init_ptr + (row * n_segs + seg) * P * N + pn_offs, mask=pn_mask & (has_init != 0), other=0.0)
    log_decay = A * 0.0
    passes = seg >= 0
    i_start = seg * seg_chunks
    i_end = tl.minimum(i_start + seg_chunks, n_chunks)
    for i in range(i_start, i_end):
        k = i + direction * (n_chunks - 1 - 2 * i)  # the chunk's natural index
        tok64, valid, dt, _, cs, cs_last, same_seq, start_ok, end_ok, pass_ok = chunk_setup(
            dt_base, seq_base, k, L, H, A, bias, dt_min, dt_max, sgn, rev0, offs_c,
            Q, HAS_BIAS, SOFTPLUS, HAS_LIMIT, HAS_SEQ)
        if PREFETCH:  # the next chunk's rows into L1 while this one computes (clamped: always valid)
            nxt = tl.minimum(tl.maximum(tok64 + sgn * Q, 0), L - 1)
            prefetch_rows(dt_base + nxt * H, 4)
            prefetch_rows(x_base + nxt * tokP + pid_p * BP, BP * x_bytes)
            prefetch_rows(B_base + nxt * sB_t, BN * B_bytes)
            if not STATE_PASS:
                prefetch_rows(C_base + nxt * sC_t, BN * B_bytes)
                if HAS_Z:
                    prefetch_rows(z_ptr + nxt * tokP + (b * L * H * P + h * P + pid_p * BP), BP * x_bytes)
        if BIDIR and not STATE_PASS:
            flag = flag_ptr + (pid_bh * tl.num_programs(1) + pid_p) * n_chunks + k
            arrival = tl.atomic_add(flag, 1, sem="relaxed")  # read at the chunk's end
        if store_ckpt != 0:
            tl.store(ckpt_ptr + ((row * n_chunks + k) * P * N) + pn_offs, state.to(ckpt_ptr.dtype.element_ty),
                     mask=pn_mask)
        qp_mask = valid[:, None] & pmask[None, :]
        qn_mask = valid[:, None] & nmask[None, :]
        xt = tl.load(x_base + tok64[:, None] * tokP + offs_p[None, :], mask=qp_mask, other=0.0).to(tl.float32)
        Bt = tl.load(B_base + tok64[:, None] * sB_t + offs_n[None, :] * sB_n, mask=qn_mask, other=0.0)
        u = xt * dt[:, None]
        to_end = tl.where(end_ok, tl.exp(cs_last - cs), 0.0)
        chunk_state = _mm(tl.trans(u * to_end[:, None]), Bt, LOWP, dtype)
        if not STATE_PASS:
            Ct = tl.load(C_base + tok64[:, None] * sC_t + offs_n[None, :] * sC_n, mask=qn_mask, other=0.0)
            scores = _mm(Ct, tl.trans(Bt), LOWP, dtype)
            causal = (offs_c[:, None] >= offs_c[None, :]) & same_seq
            decay = tl.exp(tl.minimum(cs[:, None] - cs[None, :], 0.0))
            y = _mm(tl.where(causal, scores * decay, 0.0), u, LOWP, dtype)
            from_start = tl.where(start_ok, tl.exp(cs), 0.0)
            y += _mm(Ct, tl.trans(state), LOWP, dtype) * from_start[:, None]
            if HAS_D:
                y += xt * Dv[None, :]
            offs = tok64[:, None] * tokP + offs_p[None, :] + (b * L * H * P + h * P)
            if BIDIR:
                if arrival == 0:  # first here: hand the tile over
                    tl.store(ybuf_ptr + offs, y, mask=qp_mask)
                    tl.debug_barrier()
                    tl.atomic_add(flag, 4, sem="release")
                else:
                    seen = arrival * 0  # an int32 zero: the loop carries a tensor
                    while seen < 4:  # acquiring: the tile's read comes after the flag's
                        seen = tl.atomic_add(flag, 0, sem="acquire")
                    other = tl.load(ybuf_ptr + offs, mask=qp_mask, other=0.0, cache_modifier=".cg")
                    y = (y + other) * scale
                    if store_ypre != 0:
                        tl.store(ypre_ptr + offs, y.to(ypre_ptr.dtype.element_ty), mask=qp_mask)
                    if HAS_Z:
                        zv = tl.load(z_ptr + offs, mask=qp_mask, other=0.0).to(tl.float32)
                        y = y * zv * _sigmoid(zv)
                    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=qp_mask)
            else:
                if HAS_Z:
                    zv = tl.load(z_ptr + offs, mask=qp_mask, other=0.0).to(tl.float32)
                    y = y * zv * _sigmoid(zv)
                tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=qp_mask)
        state = state * tl.where(pass_ok, tl.exp(cs_last), 0.0) + chunk_state
        log_decay += cs_last
        passes = passes & pass_ok

    if STATE_PASS:
        tl.store(seg_ptr + (row * n_segs + seg) * P * N + pn_offs, state, mask=pn_mask)
        if pid_p == 0:
            tl.store(segdecay_ptr + row * n_segs + seg, tl.where(passes, tl.exp(log_decay), 0.0))
    elif seg == n_segs - 1:
        tl.store(final_ptr + row * P * N + pn_offs, state, mask=pn_mask)
