"""Public selective-scan ops: validate the arguments, pick the backend, then call the registered
``mambazoo::`` op (``_library``), which runs the Triton kernels or the PyTorch reference."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._backend import needs_grad, use_triton
from .._validation import check_d_state, check_optional, check_tensor
from .. import _library


def _check_bc(name: str, value, prefix: Sequence[int], batch: int, dim: int, d_state: int, length: int, device):
    """B or C: constant ``(dim, N)`` or per token ``(batch, N, length)`` / ``(batch, groups, N, length)``."""
    lead = "(2, " if prefix else "("
    if isinstance(value, torch.Tensor) and value.dim() == len(prefix) + 4:
        check_tensor(name, value, (*prefix, batch, None, d_state, length), f"{lead}batch, groups, d_state, length)", device)
        groups = value.shape[len(prefix) + 1]
        if groups < 1 or dim % groups:
            raise ValueError(f"{name}: groups ({groups}) must divide dim ({dim})")
    elif isinstance(value, torch.Tensor) and value.dim() == len(prefix) + 3:
        check_tensor(name, value, (*prefix, batch, d_state, length), f"{lead}batch, d_state, length)", device)
    else:
        check_tensor(
            name, value, (*prefix, dim, d_state),
            f"{lead}dim, d_state) or {lead}batch, [groups,] d_state, length)", device,
        )


def _check_scan_args(prefix, u, delta, A, B, C, D, z, delta_bias, initial_state):
    lead = "(2, " if prefix else "("
    check_tensor("u", u, (*prefix, None, None, None), f"{lead}batch, dim, length)")
    batch, dim, length = u.shape[len(prefix):]
    if length < 1 or batch < 1 or dim < 1:
        raise ValueError(f"u must have non-empty batch, dim and length, got shape {tuple(u.shape)}")
    device = u.device
    check_tensor("delta", delta, (*prefix, batch, dim, length), f"{lead}batch, dim, length)", device)
    check_tensor("A", A, (*prefix, dim, None), f"{lead}dim, d_state)", device)
    d_state = A.shape[-1]
    check_d_state(d_state)
    _check_bc("B", B, prefix, batch, dim, d_state, length, device)
    _check_bc("C", C, prefix, batch, dim, d_state, length, device)
    vector = "(2, dim)" if prefix else "(dim,)"
    check_optional("D", D, (*prefix, dim), vector, device)
    check_optional("z", z, (batch, dim, length), "(batch, dim, length)", device)
    check_optional("delta_bias", delta_bias, (*prefix, dim), vector, device)
    check_optional("initial_state", initial_state, (*prefix, batch, dim, d_state), f"{lead}batch, dim, d_state)", device)


def _unsupported(u, delta, A, B, C, z):
    """Why the Triton kernels cannot take these arguments (``None`` if they can).

    The Triton module is imported here, on first use, so that ``import mambazoo_kernels`` never
    imports Triton.
    """
    from . import triton_op

    return triton_op.unsupported_reason(u, delta, A, B, C, z)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    backend: Optional[str] = None,
):
    """Mamba-1 selective scan (S6).

    Args:
        u, delta: ``(batch, dim, length)``, fp32/bf16/fp16.
        A: ``(dim, d_state)``, real (negative for a stable scan), kept fp32.
        B, C: constant ``(dim, d_state)``, or per token ``(batch, d_state, length)`` or
            ``(batch, groups, d_state, length)`` with ``groups`` dividing ``dim``.
        D, delta_bias: ``(dim,)`` or ``None``. ``delta = softplus(delta + delta_bias)`` when
            ``delta_softplus``.
        z: ``(batch, dim, length)`` gate: ``out = y * silu(z)``.
        initial_state: ``(batch, dim, d_state)`` state before the first token.
        backend: ``"reference"``, ``"triton"`` or ``None`` (``MAMBAZOO_KERNEL_BACKEND``, else auto).

    Returns:
        ``out`` ``(batch, dim, length)`` in ``u``'s dtype, and with ``return_final_state`` the fp32
        state after the last token, ``(batch, dim, d_state)``.
    """
    _check_scan_args((), u, delta, A, B, C, D, z, delta_bias, initial_state)
    with_triton = use_triton("selective_scan", backend, u.device, lambda: _unsupported(u, delta, A, B, C, z))
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    out, state, *_ = _library.selective_scan_op(*tensors, delta_softplus, with_triton, needs_grad(*tensors))
    return (out, state) if return_final_state else out


def bidirectional_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    average: bool = False,
    backend: Optional[str] = None,
):
    """Forward and reversed selective scans with separate per-direction parameters (Vim v2).

    Every per-direction argument has a leading axis of size 2: index 0 scans left to right,
    index 1 right to left. All tensors are in natural token order (the reversed direction reads
    the sequence backwards; nothing is flipped by the caller).

    Args:
        u, delta: ``(2, batch, dim, length)``.
        A: ``(2, dim, d_state)``; B, C: ``(2, dim, d_state)`` or ``(2, batch, [groups,] d_state, length)``.
        D, delta_bias: ``(2, dim)``; initial_state: ``(2, batch, dim, d_state)``, the reversed
            direction's state enters after the last token.
        z: ``(batch, dim, length)``, shared: ``out = (y_fwd + y_rev) * silu(z)``.
        average: halve the sum (Vim's ``if_devide_out``).

    Returns:
        ``out`` ``(batch, dim, length)``; with ``return_final_state`` also ``(2, batch, dim, d_state)``
        fp32 states (forward after the last token, reversed after the first).
    """
    _check_scan_args((2,), u, delta, A, B, C, D, z, delta_bias, initial_state)
    with_triton = use_triton("bidirectional_selective_scan", backend, u.device,
                             lambda: _unsupported(u, delta, A, B, C, z))
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    out, state, *_ = _library.bidirectional_selective_scan_op(
        *tensors, delta_softplus, average, with_triton, needs_grad(*tensors))
    return (out, state) if return_final_state else out
