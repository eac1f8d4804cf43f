"""Triton backward kernel of the SSD (Mamba-2): one program per (batch x head, headdim block,
direction x segment) walks its chunks last to first, carrying the adjoint ``G`` (the gradient of
the state at the chunk's end) in registers. Layouts as in ``triton_fwd``.

Per chunk, from the forward's checkpoint ``S0`` (the state entering the chunk), with
``W = (C B^T) * exp(cs_i - cs_j) * [j <= i, same sequence]`` and ``u = dt x``, everything is
recomputed in registers instead of storing (chunk, chunk) tiles:

    dy    = dout * silu(z) * scale;  y_ssm = W u + exp(cs) C S0^T          (dz from y_ssm + D x)
    du    = W^T dy + exp(cs_last - cs) B G^T
    dB    = (W' )^T C + exp(cs_last - cs) u G,   W' = (dy u^T) * mask-and-decay
    dC    = W' B + exp(cs) dy S0
    G     = exp(cs_last) G + (exp(cs) dy)^T C           (the adjoint entering the chunk)

The decay gradient: the loss sees ``a[t] = dt[t] A`` only through decays spanning token t, so
``dL/da[t] = sum over pairs (i >= t > j) of M[i, j]``, ``M[i, j] = (dy[i] . u[j]) (C[i] . B[j])
exp(cs_i - cs_j)`` the pair's share of the loss (j = the initial state, i = the final state
included). Split by where i and j lie relative to the chunk, every part is local to it:
both inside (a masked cumulative sum of the [Q, Q] pair tile), i inside and j before
(``dy . y_inter``, suffix sums), i after and j inside (``u . du_inter``, prefix sums), and i
after with j before (``<G, decayed S0>``, one scalar). ``dy . y_inter`` is read off dC's
inter-chunk term, ``sum_n C[i, n] (exp(cs) dy S0)[i, n]``, so the [Q, headdim] ``C S0^T`` of the
forward is recomputed only for the dz of a gated single-direction call (2026-11-29, H200,
``ssd_2026-11-29_s13c.json``: fwd+bwd LM 8k 4.59 -> 4.29 ms, DNA 131k 5.13 -> 4.81, CUDA-graph
Vim-S 224 1.13 -> 0.97, 1024 1.73 -> 1.47; the backward's spill 408 -> 304 B at d_state 128,
248 -> 32 B at 64). Summing the pair shares directly avoids
the cancellation of the telescoped form ``dy . y - u . du`` (O(1) terms cancelling to a small
result, which bf16 operands would swamp), and no carry crosses chunks.

The dt gradient is finished here: ``d dt = (du . x + A da) * dt_grad`` (``chunk_setup``'s softplus /
limit derivative); dA (the sum of ``da dt``) and d dt_bias (of ``d dt``) are summed per chunk. So
the launcher runs no autograd of its own: on the host, each torch op of that chain rule cost more
than a small call's GPU work.

Deterministic: no float atomics. Gradients summed over programs (dB/dC over heads of a group and
headdim blocks, dD over segments, dt over headdim blocks, dA and dt_bias over chunks, a shared x
over directions) are written as per-program partials and summed by ``triton_op`` in fp32. The
partials are fp32, except dB/dC's for bf16 B/C: bf16 like the gradients they sum to, which halves
the largest stores of the backward (4 bytes x d_state per token and head, twice) at the cost of
one bf16 rounding per partial. Storing dA / dt_bias per chunk instead of carrying two sums through
the chunk loop keeps the spill at 288 B (carried: 344; before the dt chain rule moved here: 248;
offline sm_90 compile, LM 8k shape, triton 3.6).

``STATE_PASS`` (long sequences cut into segments): each segment's adjoint from a zero ``G``
(only dy, C and the decays are needed), chained right to left by ``segment_combine_kernel``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import _cumsum, _mm, _sigmoid, _sum, chunk_setup, program_setup

# Sizes and flags that vary per call are plain (unspecialized) arguments, so one compiled kernel
# serves every batch, length and head count; headdim, d_state and the x/B/C strides stay
# specialized (divisibility by 16, unit stride) so that tile loads vectorize.
RUNTIME_ARGS = ["batch", "L", "H", "heads_per_group", "n_chunks", "n_segs", "seg_chunks", "has_ginit"]


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def ssd_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, ckpt_ptr, dout_ptr, ypre_ptr,
    ginit_ptr, dx_ptr, dz_ptr, dB_ptr, dC_ptr, ddt_ptr, dAb_ptr, dD_ptr, dinit_ptr, seg_ptr,
    batch, L, H, P, N, heads_per_group, n_chunks, n_segs, seg_chunks,
    sx_dir, sB_dir, sB_b, sB_t, sB_g, sB_n, sC_dir, sC_b, sC_t, sC_g, sC_n, sD_h, sD_p,
    has_ginit, scale, dt_min, dt_max,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, LOWP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr, HAS_SEQ: tl.constexpr, STATE_PASS: tl.constexpr, BIDIR: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_p = tl.program_id(1)
    n_pb = tl.num_programs(1)
    (direction, dir64, seg, b, h, g, row, offs_c, offs_p, offs_n, pmask, nmask, pn_mask, pn_offs, sgn, rev0,
     A, bias, Dv) = program_setup(A_ptr, bias_ptr, D_ptr, sD_h, sD_p, batch, H, P, N, heads_per_group, n_segs,
                                  Q, BP, BN, HAS_BIAS, HAS_D)
    dtype = x_ptr.dtype.element_ty
    dt_base = dt_ptr + (dir64 * batch + b) * L * H + h
    seq_base = seq_ptr + b * L
    bh_base = b * L * H * P + h * P  # (batch, token 0, head) of x / z / dout
    B_base = B_ptr + dir64 * sB_dir + b * sB_b + g * sB_g
    C_base = C_ptr + dir64 * sC_dir + b * sC_b + g * sC_g
    tokP = H * P
    # (direction, batch, token 0, head, headdim block) of the dB / dC partials, token stride H * n_pb * N
    bc_base = ((dir64 * batch + b) * L * H + h) * n_pb * N + pid_p * N
    # (direction, headdim block, batch, token 0, head) of the dt gradient partials
    tok_base = ((dir64 * n_pb + pid_p) * batch + b) * L * H + h

    if STATE_PASS:
        G = tl.full([BP, BN], 0.0, tl.float32)
    else:
        G = tl.load(ginit_ptr + (row * n_segs + seg) * P * N + pn_offs, mask=pn_mask & (has_ginit != 0), other=0.0)
    dD_acc = tl.full([BP], 0.0, tl.float32)
    i_start = seg * seg_chunks
    i_end = tl.minimum(i_start + seg_chunks, n_chunks)
    for j in range(0, i_end - i_start):
        i = i_end - 1 - j
        k = i + direction * (n_chunks - 1 - 2 * i)
        tok64, valid, dt, dt_grad, cs, cs_last, same_seq, start_ok, end_ok, pass_ok = chunk_setup(
            dt_base, seq_base, k, L, H, A, bias, dt_min, dt_max, sgn, rev0, offs_c,
            Q, HAS_BIAS, SOFTPLUS, HAS_LIMIT, HAS_SEQ)
        qp_mask = valid[:, None] & pmask[None, :]
        qn_mask = valid[:, None] & nmask[None, :]
        offs = bh_base + tok64[:, None] * tokP + offs_p[None, :]
        dout = tl.load(dout_ptr + offs, mask=qp_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + offs, mask=qp_mask, other=0.0).to(tl.float32)
            sig = _sigmoid(zv)
            dy = dout * zv * sig * scale
        else:
            dy = dout * scale
        Ct = tl.load(C_base + tok64[:, None] * sC_t + offs_n[None, :] * sC_n, mask=qn_mask, other=0.0)
        from_start = tl.where(start_ok, tl.exp(cs), 0.0)
        if not STATE_PASS:
            xt = tl.load(x_ptr + dir64 * sx_dir + offs, mask=qp_mask, other=0.0).to(tl.float32)
            Bt = tl.load(B_base + tok64[:, None] * sB_t + offs_n[None, :] * sB_n, mask=qn_mask, other=0.0)
            S0 = tl.load(ckpt_ptr + ((row * n_chunks + k) * P * N) + pn_offs, mask=pn_mask, other=0.0)
            u = xt * dt[:, None]
            causal = (offs_c[:, None] >= offs_c[None, :]) & same_seq
            decay = tl.where(causal, tl.exp(tl.minimum(cs[:, None] - cs[None, :], 0.0)), 0.0)
            W = _mm(Ct, tl.trans(Bt), LOWP, dtype) * decay
            if HAS_Z:
                if BIDIR:
                    if direction == 0:
                        ypre = tl.load(ypre_ptr + offs, mask=qp_mask, other=0.0).to(tl.float32)
                        dz = dout * ypre * sig * (1.0 + zv * (1.0 - sig))
                        tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=qp_mask)
                else:
                    y = _mm(W, u, LOWP, dtype, _mm(Ct, tl.trans(S0), LOWP, dtype) * from_start[:, None])
                    if HAS_D:
                        y += xt * Dv[None, :]
                    dz = dout * y * sig * (1.0 + zv * (1.0 - sig))
                    tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=qp_mask)
            to_end = tl.where(end_ok, tl.exp(cs_last - cs), 0.0)
            du_inter = _mm(Bt, tl.trans(G), LOWP, dtype) * to_end[:, None]
            du = _mm(tl.trans(W), dy, LOWP, dtype) + du_inter
            dyu_raw = _mm(dy, tl.trans(u), LOWP, dtype)
            dyu = dyu_raw * decay
            dB = _mm(u * to_end[:, None], G, LOWP, dtype, _mm(tl.trans(dyu), Ct, LOWP, dtype))
            dC_inter = _mm(dy * from_start[:, None], S0, LOWP, dtype)
            ends_in = _sum(Ct.to(tl.float32) * dC_inter, 1)  # dy . y_inter: (i in the chunk, j before it)
            dC = _mm(dyu, Bt, LOWP, dtype, dC_inter)
            bc_offs = bc_base + tok64[:, None] * (H * n_pb * N) + offs_n[None, :]
            tl.store(dB_ptr + bc_offs, dB.to(dB_ptr.dtype.element_ty), mask=qn_mask)
            tl.store(dC_ptr + bc_offs, dC.to(dC_ptr.dtype.element_ty), mask=qn_mask)
            # dL/da[t]: every pair (i >= t, j < t) whose decay spans token t, split by where i and
            # j lie (in the chunk, after it incl. the final state, before it incl. the initial state).
            pairs = dyu_raw * W  # pair (i, j) of the chunk
            before_t = _cumsum(pairs, 1) - pairs  # [i, t] = sum over j < t
            da = _sum(tl.where(offs_c[:, None] >= offs_c[None, :], before_t, 0.0), 0)
            da += _sum(ends_in, 0) - _cumsum(ends_in, 0) + ends_in
            starts_in = _sum(u * du_inter, 1)  # (i after the chunk, j in it)
            da += _cumsum(starts_in, 0) - starts_in
            across = _sum(_sum(G * S0, 1), 0) * tl.where(pass_ok, tl.exp(cs_last), 0.0)  # (after, before)
            da += across
            # dt reaches the loss through a = dt A and u = dt x, then back through softplus / limit.
            ddt = (_sum(du * xt, 1) + A * da) * dt_grad
            tl.store(ddt_ptr + tok_base + tok64 * H, ddt, mask=valid)
            # per-chunk partials of dA and d dt_bias: planes of (direction, batch, head, headdim block, chunk)
            dAb = dAb_ptr + (row * n_pb + pid_p) * n_chunks + k
            tl.store(dAb, _sum(da * dt, 0))
            tl.store(dAb + tl.num_programs(0) * n_pb * (tl.num_programs(2) // n_segs) * n_chunks,
                     _sum(tl.where(valid, ddt, 0.0), 0))
            dx = du * dt[:, None]
            if HAS_D:
                dx += dy * Dv[None, :]
                dD_acc += _sum(dy * xt, 0)
            if BIDIR:
                tl.store(dx_ptr + dir64 * ((pid_bh * 0 + batch) * L * H * P) + offs, dx, mask=qp_mask)
            else:
                tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=qp_mask)
        # The adjoint entering the chunk, last: the old G's live range ends here (fewer spills at d_state 128).
        G = _mm(tl.trans(dy * from_start[:, None]), Ct, LOWP, dtype, G * tl.where(pass_ok, tl.exp(cs_last), 0.0))

    if STATE_PASS:
        tl.store(seg_ptr + (row * n_segs + seg) * P * N + pn_offs, G, mask=pn_mask)
    else:
        if HAS_D:
            tl.store(dD_ptr + (row * n_segs + seg) * P + offs_p, dD_acc, mask=pmask)
        if seg == 0:
            tl.store(dinit_ptr + row * P * N + pn_offs, G, mask=pn_mask)
