"""Triton decode-step kernels and launchers (imported only when the backend is used).

One program per (channel block, sample); states are read and written through explicit strides,
in place, 64-bit offsets. Like the other kernels, only core builtins are used, and the launchers
make no ``torch.cuda`` call, so the kernels also run on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..causal_conv1d.triton_fwd import _sigmoid
from ..ssd.triton_common import _softplus

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_D = 32


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def unsupported_reason(*tensors: torch.Tensor, ssm_state: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why the kernels cannot take these arguments (e.g. float64), or ``None`` if they can."""
    if ssm_state is not None and ssm_state.dtype != torch.float32:
        return f"state has dtype {ssm_state.dtype}; the Triton kernel updates float32 states"
    for tensor in tensors:
        if tensor.dtype not in KERNEL_DTYPES:
            return f"dtype {tensor.dtype}; the Triton kernels take float32, bfloat16 or float16"
    return None


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    dim, d_state, cpg_b, cpg_c,
    s_sb, s_sd, s_sn, s_xb, s_xd, s_dtb, s_dtd, s_ad, s_an, s_bb, s_bg, s_bn, s_cb, s_cg, s_cn,
    s_zb, s_zd, s_yb, s_yd,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, NP: tl.constexpr,
):
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(1).to(tl.int64)
    n = tl.arange(0, NP)
    dmask = d < dim
    mask = dmask[:, None] & (n < d_state)[None, :]
    d64, n64 = d.to(tl.int64), n.to(tl.int64)
    x = tl.load(x_ptr + b * s_xb + d64 * s_xd, mask=dmask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_dtb + d64 * s_dtd, mask=dmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    group_b = (d // cpg_b).to(tl.int64)
    group_c = (d // cpg_c).to(tl.int64)
    A = tl.load(A_ptr + d64[:, None] * s_ad + n64[None, :] * s_an, mask=mask, other=0.0).to(tl.float32)
    B = tl.load(B_ptr + b * s_bb + group_b[:, None] * s_bg + n64[None, :] * s_bn, mask=mask, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + b * s_cb + group_c[:, None] * s_cg + n64[None, :] * s_cn, mask=mask, other=0.0).to(tl.float32)
    state_ptrs = state_ptr + b * s_sb + d64[:, None] * s_sd + n64[None, :] * s_sn
    state = tl.load(state_ptrs, mask=mask, other=0.0)
    state = state * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * B
    tl.store(state_ptrs, state, mask=mask)
    y = tl.reduce(state * C, 1, tl.standard._sum_combine)
    if HAS_D:
        y += tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32) * x
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_zb + d64 * s_zd, mask=dmask, other=0.0).to(tl.float32)
        y = y * zv * _sigmoid(zv)
    tl.store(y_ptr + b * s_yb + d64 * s_yd, y.to(y_ptr.dtype.element_ty), mask=dmask)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Launcher; arguments as :func:`mambazoo_kernels.selective_state_update` (validated there)."""
    batch, dim, d_state = state.shape
    B3 = B if B.dim() == 3 else B.unsqueeze(1)
    C3 = C if C.dim() == 3 else C.unsqueeze(1)
    # A tile of BLOCK_D channels may span B/C groups: each channel reads its own group's row.
    y = torch.empty((batch, dim), dtype=x.dtype, device=x.device)
    D = None if D is None else D.contiguous()
    dt_bias = None if dt_bias is None else dt_bias.contiguous()
    _state_update_kernel[(triton.cdiv(dim, BLOCK_D), batch)](
        state, x, dt, A, B3, C3, x if D is None else D, x if z is None else z, x if dt_bias is None else dt_bias, y,
        dim, d_state, dim // B3.shape[1], dim // C3.shape[1],
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B3.stride(), *C3.stride(),
        *(z.stride() if z is not None else (0, 0)), *y.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        BLOCK_D=BLOCK_D, NP=_pow2(d_state),
    )
    return y


@triton.jit
def _conv_update_kernel(
    x_ptr, state_ptr, w_ptr, b_ptr, out_ptr, dim, width,
    s_xb, s_xd, s_sb, s_sd, s_sw, s_wd, s_ww, s_ob, s_od,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr, WP: tl.constexpr,
):
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(1).to(tl.int64)
    k = tl.arange(0, WP)
    dmask = d < dim
    mask = dmask[:, None] & (k < width)[None, :]
    d64, k64 = d.to(tl.int64), k.to(tl.int64)
    rows = state_ptr + b * s_sb + d64[:, None] * s_sd
    # The state shifted one step left, then x in the last slot (all loads precede the store).
    shifted = tl.load(rows + (k64[None, :] + 1) * s_sw, mask=dmask[:, None] & (k < width - 1)[None, :], other=0.0)
    x = tl.load(x_ptr + b * s_xb + d64 * s_xd, mask=dmask, other=0.0)
    new = tl.where((k == width - 1)[None, :], x.to(shifted.dtype)[:, None], shifted)
    tl.store(rows + k64[None, :] * s_sw, new, mask=mask)
    w = tl.load(w_ptr + d64[:, None] * s_wd + k64[None, :] * s_ww, mask=mask, other=0.0).to(tl.float32)
    out = tl.reduce(new.to(tl.float32) * w, 1, tl.standard._sum_combine)
    if HAS_BIAS:
        out += tl.load(b_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    if SILU:
        out = out * _sigmoid(out)
    tl.store(out_ptr + b * s_ob + d64 * s_od, out.to(out_ptr.dtype.element_ty), mask=dmask)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation="silu"):
    """Launcher; arguments as :func:`mambazoo_kernels.causal_conv1d_update` (validated there)."""
    batch, dim, width = conv_state.shape
    out = torch.empty((batch, dim), dtype=x.dtype, device=x.device)
    bias = None if bias is None else bias.contiguous()
    _conv_update_kernel[(triton.cdiv(dim, BLOCK_D), batch)](
        x, conv_state, weight, x if bias is None else bias, out, dim, width,
        *x.stride(), *conv_state.stride(), *weight.stride(), *out.stride(),
        HAS_BIAS=bias is not None, SILU=activation == "silu", BLOCK_D=BLOCK_D, WP=_pow2(width),
    )
    return out
