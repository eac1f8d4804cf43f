"""Public causal-conv1d op: validate the arguments, pick the backend, then call the registered
``mambazoo::causal_conv1d`` op (``_library``), which runs the Triton kernel or the reference."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _library
from .._backend import use_triton
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
    with_triton = use_triton("causal_conv1d", backend, x.device, lambda: _unsupported(x, weight))
    return _library.causal_conv1d_op(x, weight, bias, activation == "silu", reverse, with_triton)


def _unsupported(x: torch.Tensor, weight: torch.Tensor):
    """Why the Triton kernel cannot take these arguments (``None`` if it can)."""
    from . import triton_op  # on first use only: importing it imports Triton

    return triton_op.unsupported_reason(x, weight)
