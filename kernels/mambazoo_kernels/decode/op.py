"""Public decode-step ops: validate the arguments, pick the backend, then call the registered
``mambazoo::`` op (``_library``), which updates the state in place with the Triton kernel or the
PyTorch reference."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _library
from .._backend import use_triton
from .._validation import check_d_state, check_optional, check_tensor

STATE_DTYPES = (torch.float32, torch.float64)
ACTIVATIONS = (None, "silu")


def _unsupported(*tensors: torch.Tensor, ssm_state: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why the Triton kernels cannot take these arguments (``None`` if they can)."""
    from . import triton_op  # on first use only: importing it imports Triton

    return triton_op.unsupported_reason(*tensors, ssm_state=ssm_state)


def _check_bc(name: str, value, batch: int, dim: int, d_state: int, device) -> None:
    if isinstance(value, torch.Tensor) and value.dim() == 3:
        check_tensor(name, value, (batch, None, d_state), "(batch, groups, d_state)", device)
        if dim % value.shape[1]:
            raise ValueError(f"{name}: groups ({value.shape[1]}) must divide dim ({dim})")
    else:
        check_tensor(name, value, (batch, d_state), "(batch, d_state) or (batch, groups, d_state)", device)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """One token of the selective scan, updating ``state`` in place (mamba_ssm's semantics).

    ``dt = softplus(dt + dt_bias)``; ``state = exp(dt * A) * state + dt * B * x``;
    ``y = (C . state + D * x) * silu(z)``.

    Args:
        state: ``(batch, dim, d_state)`` fp32 (fp64 accepted, reference only); updated in place.
        x, dt: ``(batch, dim)``; z: ``(batch, dim)`` or ``None``.
        A: ``(dim, d_state)``; B, C: ``(batch, d_state)`` or ``(batch, groups, d_state)``.
        D, dt_bias: ``(dim,)`` or ``None``.
        backend: ``"reference"``, ``"triton"`` or ``None`` (``MAMBAZOO_KERNEL_BACKEND``, else auto).

    Returns:
        ``y`` ``(batch, dim)`` in ``x``'s dtype.
    """
    check_tensor("state", state, (None, None, None), "(batch, dim, d_state)", dtypes=STATE_DTYPES)
    batch, dim, d_state = state.shape
    check_d_state(d_state)
    device = state.device
    check_tensor("x", x, (batch, dim), "(batch, dim)", device)
    check_tensor("dt", dt, (batch, dim), "(batch, dim)", device)
    check_tensor("A", A, (dim, d_state), "(dim, d_state)", device)
    _check_bc("B", B, batch, dim, d_state, device)
    _check_bc("C", C, batch, dim, d_state, device)
    check_optional("D", D, (dim,), "(dim,)", device)
    check_optional("z", z, (batch, dim), "(batch, dim)", device)
    check_optional("dt_bias", dt_bias, (dim,), "(dim,)", device)
    with_triton = use_triton("selective_state_update", backend, device,
                             lambda: _unsupported(x, dt, B, C, ssm_state=state))
    return _library.selective_state_update_op(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, with_triton)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = "silu",
    backend: Optional[str] = None,
) -> torch.Tensor:
    """One token of the causal conv, rolling ``conv_state`` in place (causal-conv1d's semantics).

    ``conv_state`` holds the last ``width`` inputs, oldest first: it shifts one step left, ``x``
    enters the last slot, and the output is ``act(bias + sum_k weight[k] * conv_state[k])``.

    Args:
        x: ``(batch, dim)``.
        conv_state: ``(batch, dim, width)``, updated in place.
        weight: ``(dim, width)`` (a conv weight ``(dim, 1, width)`` also works); bias: ``(dim,)``.
        activation: ``None`` or ``"silu"``.

    Returns:
        ``(batch, dim)`` in ``x``'s dtype.
    """
    check_tensor("x", x, (None, None), "(batch, dim)")
    batch, dim = x.shape
    check_tensor("conv_state", conv_state, (batch, dim, None), "(batch, dim, width)", x.device)
    width = conv_state.shape[-1]
    if isinstance(weight, torch.Tensor) and weight.dim() == 3:
        check_tensor("weight", weight, (dim, 1, width), "(dim, 1, width)", x.device)
        weight = weight.squeeze(1)
    check_tensor("weight", weight, (dim, width), "(dim, width) with conv_state's width", x.device)
    check_optional("bias", bias, (dim,), "(dim,)", x.device)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    with_triton = use_triton("causal_conv1d_update", backend, x.device, lambda: _unsupported(x, conv_state, weight))
    return _library.causal_conv1d_update_op(x, conv_state, weight, bias, activation == "silu", with_triton)
