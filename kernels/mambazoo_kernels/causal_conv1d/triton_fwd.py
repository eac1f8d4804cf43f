"""Triton forward kernel of the depthwise causal conv1d (+SiLU), the Mamba short conv.

Layouts (``triton_op`` prepares them): ``x`` and ``out`` ``(batch, dim, L)`` with any strides
(passed explicitly; the mixer's ``x`` is a channel-contiguous view of ``in_proj``'s output),
``weight`` ``(dim, W)`` contiguous, ``bias`` ``(dim,)``. A program owns a
``[BLOCK_D, BLOCK_L]`` tile of one sample and sums the ``W`` taps in fp32::

    out[t] = act(bias + sum_k weight[k] * x[src(t, k)]),
    src(t, k) = t - (W - 1 - k)   (causal),   t + (W - 1 - k)   (REVERSE, anti-causal)

so the reversed conv reads the sequence backwards by index, with no flipped copy. Offsets are
64-bit. Only core builtins and the helpers below are used (``tl.sum``/``tl.sigmoid`` are jit
functions whose interpreter mode is fixed when Triton is first imported; see the selective scan).
"""
import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _sum_rows(x):
    """Sum over axis 1 of a 2-D tile."""
    return tl.reduce(x, 1, tl.standard._sum_combine)


@triton.jit
def _tap(t, k, W: tl.constexpr, REVERSE: tl.constexpr):
    """The source index of tap ``k`` for output ``t``."""
    if REVERSE:
        return t + (W - 1 - k)
    return t - (W - 1 - k)


@triton.jit
def _load_tile(base, d, t, dim, length, stride_d, stride_l):
    """fp32 ``[BLOCK_D, BLOCK_L]`` tile of ``base[d, t]``, zero outside ``[0, dim) x [0, length)``."""
    mask = (d < dim)[:, None] & ((t >= 0) & (t < length))[None, :]
    ptrs = base + d.to(tl.int64)[:, None] * stride_d + t.to(tl.int64)[None, :] * stride_l
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(x_base, w_ptr, b_ptr, d, t, dim, length, sx_d, sx_l,
                    W: tl.constexpr, HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """``bias + sum_k weight[k] * x[src(t, k)]`` in fp32, ``[BLOCK_D, BLOCK_L]``."""
    dmask = d < dim
    acc = tl.full([BLOCK_D, BLOCK_L], 0.0, tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + d, mask=dmask, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(W):
        w = tl.load(w_ptr + d.to(tl.int64) * W + k, mask=dmask, other=0.0).to(tl.float32)
        acc += w[:, None] * _load_tile(x_base, d, _tap(t, k, W, REVERSE), dim, length, sx_d, sx_l)
    return acc


@triton.jit
def conv_forward_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, dim, length,
    sx_b, sx_d, sx_l, so_b, so_d, so_l,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Grid ``(cdiv(L, BLOCK_L), cdiv(dim, BLOCK_D), batch)``."""
    t = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    batch = tl.program_id(2).to(tl.int64)
    acc = _pre_activation(x_ptr + batch * sx_b, w_ptr, b_ptr, d, t, dim, length, sx_d, sx_l,
                          W, HAS_BIAS, REVERSE, BLOCK_D, BLOCK_L)
    if SILU:
        acc = acc * _sigmoid(acc)
    mask = (d < dim)[:, None] & (t < length)[None, :]
    ptrs = out_ptr + batch * so_b + d.to(tl.int64)[:, None] * so_d + t.to(tl.int64)[None, :] * so_l
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
