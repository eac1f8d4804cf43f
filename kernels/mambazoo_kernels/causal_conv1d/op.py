"""Public causal-conv1d op: validate the arguments, pick the backend, then call the registered
``mambazoo::causal_conv1d`` op (``_library``), which runs the Triton kernel or the reference."""
from __future__ import annotations

import os
from typing import Optional

import torch

from .. import _library
from .._backend import BACKEND_ENV, select_backend
from .._validation import check_optional, check_tensor

ACTIVATIONS = (None, "silu")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    reverse: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Depthwise causal conv over time: ``out[t] = act(bias + sum_k weight[k] * x[t - width + 1 + k])``.

    Args:
        x: ``(batch, dim, length)``.
        weight: ``(dim, width)`` (a conv weight ``(dim, 1, width)`` also works); bias: ``(dim,)``.
        activation: ``None`` or ``"silu"``.
        reverse: anti-causal (reads ``x[t .. t+width-1]``, the kernel applied right to left), which
            equals running the causal conv on the flipped sequence and flipping back.

    Returns:
        ``(batch, dim, length)`` in ``x``'s dtype.
    """
    check_tensor("x", x, (None, None, None), "(batch, dim, length)")
    dim = x.shape[1]
    if isinstance(weight, torch.Tensor) and weight.dim() == 3:
        check_tensor("weight", weight, (dim, 1, None), "(dim, 1, width)", x.device)
        weight = weight.squeeze(1)
    check_tensor("weight", weight, (dim, None), "(dim, width)", x.device)
    check_optional("bias", bias, (dim,), "(dim,)", x.device)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    use_triton = _use_triton(backend, x, weight)
    return _library.causal_conv1d_op(x, weight, bias, activation == "silu", reverse, use_triton)


def _use_triton(backend: Optional[str], x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the chosen backend is Triton and the kernel takes these arguments (as the scan's)."""
    if select_backend("causal_conv1d", backend, x.device, has_triton=True) != "triton":
        return False
    from . import triton_op  # on first use only: importing it imports Triton

    reason = triton_op.unsupported_reason(x, weight)
    if reason is None:
        return True
    if (backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")) == "triton":
        raise NotImplementedError(f"causal_conv1d: {reason}; use backend='reference'")
    return False
