"""Triton causal conv1d: launchers for the ``mambazoo::causal_conv1d`` ops (imported only when the
backend is used). No ``torch.cuda`` call, so the kernels also run on CPU tensors under
``TRITON_INTERPRET=1``."""
from __future__ import annotations

from typing import Optional

import torch

from .._library import channel_last, empty_in_layout
from .triton_bwd import conv_backward_kernel
from .triton_fwd import conv_forward_kernel

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_WIDTH = 8
BLOCK_D, BLOCK_L, NUM_WARPS = 32, 64, 4


def unsupported_reason(x: torch.Tensor, weight: torch.Tensor) -> Optional[str]:
    """Why the kernels cannot take these arguments, or ``None`` if they can."""
    for name, tensor in (("x", x), ("weight", weight)):
        if tensor.dtype not in KERNEL_DTYPES:
            return f"{name} has dtype {tensor.dtype}; the Triton kernel takes float32, bfloat16 or float16"
    if weight.shape[-1] > MAX_WIDTH:
        return f"width {weight.shape[-1]} > {MAX_WIDTH} is not generated for the Triton kernel"
    return None


def _grid(x: torch.Tensor):
    batch, dim, length = x.shape
    return (-(-length // BLOCK_L), -(-dim // BLOCK_D), batch)


def _flags(weight, bias, silu, reverse):
    return dict(W=weight.shape[-1], HAS_BIAS=bias is not None, SILU=silu, REVERSE=reverse,
                BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L, num_warps=NUM_WARPS)


def conv_forward(x, weight, bias, silu: bool, reverse: bool) -> torch.Tensor:
    """``(batch, dim, L)`` x, ``(dim, W)`` weight -> ``(batch, dim, L)`` in ``x``'s dtype, dense and
    channel-last when ``x`` is a channel-last view (the mixer's scan then reads it in place), else
    contiguous."""
    weight = weight.contiguous()
    out = empty_in_layout(x, x.shape, channel_last(x))
    conv_forward_kernel[_grid(x)](
        x, weight, weight if bias is None else bias.contiguous(), out, x.shape[1], x.shape[2],
        *x.stride(), *out.stride(), **_flags(weight, bias, silu, reverse),
    )
    return out


def conv_backward(dout, x, weight, bias, silu: bool, reverse: bool):
    """``(dx, dweight, dbias)`` in the inputs' dtypes; ``dbias`` is ``None`` without a bias."""
    weight = weight.contiguous()
    grid = _grid(x)
    batch, dim, _ = x.shape
    slots = batch * grid[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dw_part = torch.empty((slots, dim, weight.shape[-1]), dtype=torch.float32, device=x.device)
    db_part = torch.empty((slots, dim), dtype=torch.float32, device=x.device) if bias is not None else dw_part
    conv_backward_kernel[grid](
        x, weight, weight if bias is None else bias.contiguous(), dout, dx, dw_part, db_part, dim, x.shape[2],
        *x.stride(), *dout.stride(), *dx.stride(), **_flags(weight, bias, silu, reverse),
    )
    dbias = None if bias is None else db_part.sum(0).to(bias.dtype)
    return dx, dw_part.sum(0).to(weight.dtype), dbias
