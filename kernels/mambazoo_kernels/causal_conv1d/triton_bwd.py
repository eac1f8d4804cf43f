"""Triton backward kernel of the depthwise causal conv1d (+SiLU); layouts as ``triton_fwd``.

With ``g[t] = dout[t] * act'(pre[t])`` (``pre`` recomputed from ``x``, nothing stored by the
forward)::

    dx[s]      = sum_k weight[k] * g[s + (W - 1 - k)]     (causal; REVERSE: s - (W - 1 - k))
    dweight[k] = sum_{b, t} g[t] * x[src(t, k)]
    dbias      = sum_{b, t} g[t]

A program owns a ``[BLOCK_D, BLOCK_L]`` tile: it recomputes ``g`` on the tile shifted by each
tap (the ``W`` shifted windows overlap, so the re-reads hit the cache) for ``dx``, and writes
its tile's partial ``dweight``/``dbias`` sums to its own slot; ``triton_op`` adds the slots in
a fixed order, so the gradients are deterministic (no atomics).
"""
import triton
import triton.language as tl

from .triton_fwd import _load_tile, _pre_activation, _sigmoid, _sum_rows, _tap


@triton.jit
def _reader(s, k, W: tl.constexpr, REVERSE: tl.constexpr):
    """The output that reads ``x[s]`` through tap ``k`` (the inverse of ``_tap``)."""
    if REVERSE:
        return s - (W - 1 - k)
    return s + (W - 1 - k)


@triton.jit
def _grad_pre(x_base, dout_base, w_ptr, b_ptr, d, t, dim, length, sx_d, sx_l, sg_d, sg_l,
              W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """``dout * act'(pre)`` at positions ``t`` (zero outside the sequence)."""
    g = _load_tile(dout_base, d, t, dim, length, sg_d, sg_l)
    if SILU:
        pre = _pre_activation(x_base, w_ptr, b_ptr, d, t, dim, length, sx_d, sx_l,
                              W, HAS_BIAS, REVERSE, BLOCK_D, BLOCK_L)
        s = _sigmoid(pre)
        g = g * s * (1.0 + pre * (1.0 - s))
    return g


@triton.jit
def conv_backward_kernel(
    x_ptr, w_ptr, b_ptr, dout_ptr, dx_ptr, dw_part_ptr, db_part_ptr, dim, length,
    sx_b, sx_d, sx_l, sg_b, sg_d, sg_l, sdx_b, sdx_d, sdx_l,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Grid ``(cdiv(L, BLOCK_L), cdiv(dim, BLOCK_D), batch)``; partial slot = ``batch * n_l + l``,
    ``dw_part`` ``(slots, dim, W)``, ``db_part`` ``(slots, dim)``, fp32."""
    pid_l = tl.program_id(0)
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    batch = tl.program_id(2).to(tl.int64)
    dmask = d < dim
    x_base = x_ptr + batch * sx_b
    dout_base = dout_ptr + batch * sg_b
    g = _grad_pre(x_base, dout_base, w_ptr, b_ptr, d, t, dim, length, sx_d, sx_l, sg_d, sg_l,
                  W, HAS_BIAS, SILU, REVERSE, BLOCK_D, BLOCK_L)

    slot = batch * tl.num_programs(0) + pid_l
    d64 = d.to(tl.int64)
    if HAS_BIAS:
        tl.store(db_part_ptr + slot * dim + d64, _sum_rows(g), mask=dmask)
    dx = tl.full([BLOCK_D, BLOCK_L], 0.0, tl.float32)
    for k in tl.static_range(W):
        x_k = _load_tile(x_base, d, _tap(t, k, W, REVERSE), dim, length, sx_d, sx_l)
        tl.store(dw_part_ptr + (slot * dim + d64) * W + k, _sum_rows(g * x_k), mask=dmask)
        # dx[t] takes tap k of the output that reads x[t] through it (at offset W-1-k the other way).
        if k == W - 1:
            g_k = g
        else:
            g_k = _grad_pre(x_base, dout_base, w_ptr, b_ptr, d, _reader(t, k, W, REVERSE), dim, length,
                            sx_d, sx_l, sg_d, sg_l, W, HAS_BIAS, SILU, REVERSE, BLOCK_D, BLOCK_L)
        w = tl.load(w_ptr + d64 * W + k, mask=dmask, other=0.0).to(tl.float32)
        dx += w[:, None] * g_k
    mask = dmask[:, None] & (t < length)[None, :]
    ptrs = dx_ptr + batch * sdx_b + d64[:, None] * sdx_d + t.to(tl.int64)[None, :] * sdx_l
    tl.store(ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
