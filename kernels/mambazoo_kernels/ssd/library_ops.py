"""``torch.library`` registration of the SSD: the ``mambazoo::ssd`` and ``mambazoo::bidirectional_ssd``
custom ops (each with its ``..._backward`` op), as ``mambazoo_kernels._library`` does for the
selective scan and the conv, with its helpers. Registered on ``import mambazoo_kernels`` (the
public ``ssd`` functions import this module); ``_library.reference_decompositions`` includes
:func:`reference_decompositions`.

The public functions (``ssd``, ``bidirectional_ssd``) validate their arguments and pick the
backend, then call these ops with ``use_triton`` set: the Triton kernels on CUDA (or on the CPU
under ``TRITON_INTERPRET=1``), the PyTorch reference otherwise. The reference forward runs under
``no_grad`` and its backward recomputes it under ``enable_grad`` (the reference checkpoints its
quadratic part, so memory stays bounded); the Triton forward returns what its backward needs
(per-chunk state checkpoints, the bidirectional pre-gate sum ``ypre``, segment decays) as plain
tensor outputs, stored only when ``save_for_backward`` is set ((0,)-shaped otherwise).

``x``, ``B`` and ``C`` of ``bidirectional_ssd`` are shared ``(batch, length, ...)`` or per direction
``(2, batch, length, ...)``; ``seq_idx`` is an input without gradient; ``chunk_size`` only
matters to the reference. Importing this module imports no Triton module.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._library import _placeholder, _reference_grads, _register_scan_autograd
from .reference import bidirectional_ssd_reference, ssd_reference

SSD_INPUTS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _triton_ssd():
    from . import triton_op  # on first use only: importing it imports Triton

    return triton_op


def _ssd_reference(bidirectional: bool, seq_idx, chunk_size: int, softplus: bool, dt_limit, average: bool):
    """The reference as ``f(x, dt, A, B, C, D, z, dt_bias, initial_states) -> (out, final states)``."""
    if bidirectional:
        return lambda *inputs: bidirectional_ssd_reference(
            *inputs[:5], chunk_size, *inputs[5:8], softplus, tuple(dt_limit), inputs[8], seq_idx, True, average)
    return lambda *inputs: ssd_reference(
        *inputs[:5], chunk_size, *inputs[5:8], softplus, tuple(dt_limit), inputs[8], seq_idx, True)


def _final_dtype(inputs: Tuple[Optional[Tensor], ...], use_triton: bool) -> torch.dtype:
    """fp32, or float64 when the reference computes in float64 (one of x, dt, A, B, C is)."""
    if not use_triton and any(t.dtype == torch.float64 for t in inputs[:5]):
        return torch.float64
    return torch.float32


def _ssd_forward(bidirectional, average, inputs, seq_idx, chunk_size, softplus, dt_limit, use_triton, save):
    x = inputs[0]
    if use_triton:
        return _triton_ssd().ssd_forward(*inputs, seq_idx, softplus, dt_limit, 0.5 if average else 1.0,
                                         bidirectional, save)
    with torch.no_grad():
        out, final = _ssd_reference(bidirectional, seq_idx, chunk_size, softplus, dt_limit, average)(*inputs)
    f32 = torch.float32
    # The reference's outputs may be views of its intermediates: outputs must be fresh, plain tensors.
    return (out.contiguous(), final.clone(memory_format=torch.contiguous_format),
            _placeholder(x), _placeholder(x), _placeholder(x, f32))


def _ssd_forward_fake(bidirectional, inputs, use_triton, save):
    x, dt, A, B, C, D, z = inputs[:7]
    batch, length, heads, headdim = x.shape[-4:]
    lead = (2,) if bidirectional else ()
    out = x.new_empty((batch, length, heads, headdim))
    final = x.new_empty((*lead, batch, heads, headdim, B.shape[-1]), dtype=_final_dtype(inputs, use_triton))
    if use_triton:
        ckpt, ypre, segdecay = _triton_ssd().saved_shapes(x, dt, B, z, bidirectional, save)
    else:
        ckpt = ypre = segdecay = (0,)
    f32 = torch.float32
    return out, final, x.new_empty(ckpt), x.new_empty(ypre), x.new_empty(segdecay, dtype=f32)


def _ssd_backward(bidirectional, average, dout, dfinal, inputs, seq_idx, saved, chunk_size, softplus, dt_limit,
                  use_triton):
    if use_triton:
        grads = _triton_ssd().ssd_backward(dout, dfinal, *inputs, seq_idx, *saved, softplus, dt_limit,
                                           0.5 if average else 1.0, bidirectional)
        return tuple(_placeholder(dout) if g is None else g for g in grads)
    reference = _ssd_reference(bidirectional, seq_idx, chunk_size, softplus, dt_limit, average)
    return _reference_grads(reference, inputs, (dout, dfinal))


SSDOutputs = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
SSDGrads = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("mambazoo::ssd", mutates_args=())
def ssd_op(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    dt_bias: Optional[Tensor], initial_states: Optional[Tensor], seq_idx: Optional[Tensor], chunk_size: int,
    dt_softplus: bool, dt_limit: List[float], use_triton: bool, save_for_backward: bool,
) -> SSDOutputs:
    """SSD, arguments as :func:`mambazoo_kernels.ssd` (validated there).

    Returns ``(out, final_states, *saved)``; ``saved`` are the Triton backward's extra inputs.
    """
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    return _ssd_forward(False, False, inputs, seq_idx, chunk_size, dt_softplus, dt_limit, use_triton,
                        save_for_backward)


@torch.library.custom_op("mambazoo::ssd_backward", mutates_args=())
def ssd_backward_op(
    dout: Tensor, dfinal_states: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor], initial_states: Optional[Tensor],
    seq_idx: Optional[Tensor], ckpt: Tensor, ypre: Tensor, segdecay: Tensor, chunk_size: int, dt_softplus: bool,
    dt_limit: List[float], use_triton: bool,
) -> SSDGrads:
    """Gradients of the nine differentiable inputs of ``mambazoo::ssd`` ((0,) for absent ones)."""
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    return _ssd_backward(False, False, dout, dfinal_states, inputs, seq_idx, (ckpt, ypre, segdecay), chunk_size,
                         dt_softplus, dt_limit, use_triton)


@torch.library.custom_op("mambazoo::bidirectional_ssd", mutates_args=())
def bidirectional_ssd_op(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    dt_bias: Optional[Tensor], initial_states: Optional[Tensor], seq_idx: Optional[Tensor], chunk_size: int,
    dt_softplus: bool, dt_limit: List[float], average: bool, use_triton: bool, save_for_backward: bool,
) -> SSDOutputs:
    """Bidirectional SSD in one launch, arguments as :func:`mambazoo_kernels.bidirectional_ssd`.

    Returns ``(out, final_states, *saved)``.
    """
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    return _ssd_forward(True, average, inputs, seq_idx, chunk_size, dt_softplus, dt_limit, use_triton,
                        save_for_backward)


@torch.library.custom_op("mambazoo::bidirectional_ssd_backward", mutates_args=())
def bidirectional_ssd_backward_op(
    dout: Tensor, dfinal_states: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor], initial_states: Optional[Tensor],
    seq_idx: Optional[Tensor], ckpt: Tensor, ypre: Tensor, segdecay: Tensor, chunk_size: int, dt_softplus: bool,
    dt_limit: List[float], average: bool, use_triton: bool,
) -> SSDGrads:
    """Gradients of the nine differentiable inputs of ``mambazoo::bidirectional_ssd``."""
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    return _ssd_backward(True, average, dout, dfinal_states, inputs, seq_idx, (ckpt, ypre, segdecay), chunk_size,
                         dt_softplus, dt_limit, use_triton)


@ssd_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size, dt_softplus, dt_limit, use_triton,
      save_for_backward):
    return _ssd_forward_fake(False, (x, dt, A, B, C, D, z), use_triton, save_for_backward)


@bidirectional_ssd_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, chunk_size, dt_softplus, dt_limit, average,
      use_triton, save_for_backward):
    return _ssd_forward_fake(True, (x, dt, A, B, C, D, z), use_triton, save_for_backward)


# seq_idx: saved for the backward, no gradient
_register_scan_autograd(ssd_op, ssd_backward_op, len(SSD_INPUTS), n_saved_inputs=1)
_register_scan_autograd(bidirectional_ssd_op, bidirectional_ssd_backward_op, len(SSD_INPUTS), n_saved_inputs=1)


def reference_decompositions() -> Dict[torch._ops.OpOverload, Callable]:
    """``{SSD forward op: its reference}``, part of ``mambazoo_kernels.reference_decompositions()``
    (for ``ExportedProgram.run_decompositions``, e.g. before ONNX export)."""
    return {
        torch.ops.mambazoo.ssd.default:
            lambda *args: _ssd_forward(False, False, args[:9], *args[9:13], False, False),
        torch.ops.mambazoo.bidirectional_ssd.default:
            lambda *args: _ssd_forward(True, args[13], args[:9], *args[9:13], False, False),
    }


__all__: List[str] = ["ssd_op", "bidirectional_ssd_op", "reference_decompositions"]
