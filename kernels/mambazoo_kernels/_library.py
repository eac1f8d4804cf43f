"""``torch.library`` registration of the kernels: the ``mambazoo::`` custom ops.

Every operation is a forward op and a backward op, both opaque to ``torch.compile`` and
``torch.export``, with fake (meta) implementations for shape propagation and the backward op
registered as the forward's autograd formula:

    mambazoo::selective_scan                 (+ mambazoo::selective_scan_backward)
    mambazoo::bidirectional_selective_scan   (+ mambazoo::bidirectional_selective_scan_backward)
    mambazoo::causal_conv1d                  (+ mambazoo::causal_conv1d_backward)
    mambazoo::selective_state_update, mambazoo::causal_conv1d_update   (decode; state in place)
    mambazoo::ssd, mambazoo::bidirectional_ssd   (+ ..._backward; in ``ssd/library_ops``, with these helpers)

The public functions (``selective_scan``, ...) validate their arguments and pick the backend,
then call these ops with ``use_triton`` set; so the same op runs the Triton kernels on CUDA (or
on the CPU under ``TRITON_INTERPRET=1``) and the PyTorch reference otherwise (CPU, float64,
forced ``backend="reference"``). The reference forward runs under ``no_grad``; its backward
recomputes the reference under ``enable_grad`` and takes ``torch.autograd.grad`` (the scan
reference checkpoints chunk by chunk, so memory stays bounded). The Triton forward returns
what its backward needs (state checkpoints, ...) as extra plain tensor outputs, stored only
when ``save_for_backward`` is set ((0,)-shaped otherwise).

Optional tensors are ``Tensor?`` in the schemas; absent gradients come back from the backward
ops as (0,)-shaped placeholders (schemas cannot return ``None``) and leave autograd as ``None``.
:func:`reference_decompositions` maps each forward op to its reference, for exporters that need
plain ATen graphs (ONNX). Importing this module imports no Triton module.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch._C import DispatchKey

from .causal_conv1d.reference import causal_conv1d_reference
from .decode.reference import causal_conv1d_update_reference, selective_state_update_reference
from .selective_scan.reference import bidirectional_selective_scan_reference, selective_scan_reference

SCAN_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _placeholder(like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    return like.new_empty(0, dtype=dtype)


@contextlib.contextmanager
def _autograd_inside_kernel() -> Iterator[None]:
    """Re-enable autograd inside a custom op's kernel, which runs below autograd (the Autograd and
    ADInplaceOrView dispatch keys excluded, so ``enable_grad`` alone records nothing)."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (DispatchKey.AutogradFunctionality, DispatchKey.ADInplaceOrView):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def _reference_grads(fn: Callable, inputs: Sequence[Optional[Tensor]], grad_outputs: Sequence[Tensor]):
    """Gradients of ``fn(*inputs)`` (a tuple of outputs) for ``grad_outputs``, by recomputation.

    Returns one contiguous gradient per input (the fake implementations promise contiguous
    gradients): zeros for an input the outputs do not depend on, a (0,) placeholder for ``None``.
    A (0,) placeholder among ``grad_outputs`` stands for zeros (an unused final state).
    """
    with _autograd_inside_kernel():
        leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
        outputs = fn(*leaves)
        grad_outputs = [torch.zeros_like(o) if g.numel() == 0 and o.numel() > 0 else g
                        for o, g in zip(outputs, grad_outputs)]
        present = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(outputs, present, grad_outputs, allow_unused=True))
    result = []
    for leaf, given in zip(leaves, inputs):
        if leaf is None:
            result.append(_placeholder(grad_outputs[0]))
        else:
            grad = next(grads)
            result.append(given.new_zeros(given.shape) if grad is None else grad.contiguous())
    return tuple(result)


def _grads_fake(inputs: Sequence[Optional[Tensor]]) -> Tuple[Tensor, ...]:
    """Fake gradients of a scan's differentiable ``inputs``: one per input, (0,) for ``None``."""
    like = inputs[0]
    return tuple(_placeholder(like) if t is None else t.new_empty(t.shape) for t in inputs)


def _register_scan_autograd(forward_op, backward_op, n_grad_inputs: int, n_saved_inputs: int = 0,
                            grads_fake: Optional[Callable] = None) -> None:
    """Autograd of a scan op (selective scan, SSD): save the inputs and the stored outputs, call the
    backward op; and the backward op's fake implementation.

    ``forward_op``'s inputs are ``n_grad_inputs`` differentiable tensors (``None`` allowed),
    ``n_saved_inputs`` tensors without gradient that the backward reads (the SSD's ``seq_idx``),
    then flags, the last being ``save_for_backward``; it returns ``(out, final_state, *saved)``.
    ``backward_op`` takes ``(dout, dfinal_state, *tensor inputs, *saved, *flags but the last)``,
    ``dfinal_state`` a (0,) placeholder when the final state is not used (read as zeros);
    ``grads_fake(inputs)`` (default: contiguous gradients) gets those tensor inputs and flags.
    """
    n_tensors = n_grad_inputs + n_saved_inputs

    def setup_context(ctx, inputs, output):
        ctx.flags = inputs[n_tensors:-1]  # save_for_backward dropped
        ctx.present = [t is not None for t in inputs[:n_grad_inputs]]
        ctx.save_for_backward(*inputs[:n_tensors], *output[2:])
        ctx.mark_non_differentiable(*output[2:])
        # Autograd would otherwise hand the backward a zero gradient for every saved output too,
        # allocated and filled per call (the SSD's checkpoints: 537 MB at LM 8k; H200 2026-11-29,
        # ssd_2026-11-29_s14b.json vs _s14b_base.json: LM 8k forward+backward 3.96 -> 3.80 ms).
        ctx.set_materialize_grads(False)
        ctx.out_meta = dict(size=output[0].shape, dtype=output[0].dtype, device=output[0].device)

    def backward(ctx, dout, dfinal_state, *_):
        # An unused final state (the usual case) reaches the backward op as a (0,) placeholder,
        # read as zeros without a fill; an unused output (rare) as zeros.
        dout = torch.zeros(**ctx.out_meta) if dout is None else dout
        dfinal_state = _placeholder(dout, torch.float32) if dfinal_state is None else dfinal_state
        grads = backward_op(dout, dfinal_state, *ctx.saved_tensors, *ctx.flags)
        return (*(g if present else None for g, present in zip(grads, ctx.present)),
                *(None,) * (n_saved_inputs + len(ctx.flags) + 1))

    forward_op.register_autograd(backward, setup_context=setup_context)
    backward_op.register_fake(grads_fake or (lambda dout, dfinal_state, *inputs: _grads_fake(inputs[:n_grad_inputs])))


# --- selective scan ------------------------------------------------------------------------------

def _triton_scan():
    from .selective_scan import triton_op  # on first use only: importing it imports Triton

    return triton_op


def _scan_reference(bidirectional: bool, average: bool, softplus: bool):
    """The reference as ``f(u, delta, A, B, C, D, z, delta_bias, initial_state) -> (out, state)``."""
    if bidirectional:
        return lambda u, delta, A, B, C, D, z, bias, h0: bidirectional_selective_scan_reference(
            u, delta, A, B, C, D, z, bias, softplus, h0, True, average)
    return lambda u, delta, A, B, C, D, z, bias, h0: selective_scan_reference(
        u, delta, A, B, C, D, z, bias, softplus, h0, True)


def _scan_forward(bidirectional, average, inputs, softplus, use_triton, save):
    u = inputs[0]
    if use_triton:
        return _triton_scan().scan_forward(*inputs, softplus, 0.5 if average else 1.0, bidirectional, save)
    with torch.no_grad():
        out, state = _scan_reference(bidirectional, average, softplus)(*inputs)
    f32 = torch.float32
    # The reference's state is a view into its last chunk: outputs must be fresh, plain tensors.
    state = state.clone(memory_format=torch.contiguous_format)
    return out, state, _placeholder(u, f32), _placeholder(u), _placeholder(u, f32)


def channel_last(*tensors: Optional[Tensor]) -> bool:
    """Whether every given ``(..., dim, L)`` tensor is a channel-last view (``stride(-2) == 1``:
    ``(..., L, dim)`` memory, what linear layers produce). The Triton scan reads u/delta/z in place
    then and writes its output (and bidirectional ``ypre``) channel-last too."""
    return all(t is None or (t.dim() >= 2 and t.stride(-2) == 1 and t.shape[-2] > 1) for t in tensors)


def to_channel_last(t: Tensor) -> Tensor:
    """``t`` (..., dim, L) copied into (..., L, dim) memory and seen as (..., dim, L) again: the
    layout :func:`channel_last` recognizes (what a Mamba mixer's linear layers produce)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def empty_in_layout(like: Tensor, shape: Sequence[int], channel_last_layout: bool) -> Tensor:
    """An empty ``(..., dim, L)`` tensor in time-contiguous or channel-last memory."""
    if channel_last_layout:
        return like.new_empty((*shape[:-2], shape[-1], shape[-2])).transpose(-1, -2)
    return like.new_empty(tuple(shape))


def _scan_forward_fake(bidirectional, inputs, use_triton, save):
    u, delta, A, B, C, D, z = inputs[:7]
    lead = u.shape[:-3]
    batch, dim, length = u.shape[-3:]
    cl = use_triton and channel_last(u, delta, z)
    out = empty_in_layout(u, (batch, dim, length), cl)
    state = u.new_empty((*lead, batch, dim, A.shape[-1]), dtype=torch.promote_types(u.dtype, torch.float32))
    if use_triton:
        ckpt, ypre, segdt = _triton_scan().saved_shapes(u, delta, A, B, C, z, bidirectional, save)
    else:
        ckpt = ypre = segdt = (0,)
    f32 = torch.float32
    ypre = empty_in_layout(u, ypre, cl) if len(ypre) == 3 else u.new_empty(ypre)
    return out, state, u.new_empty(ckpt, dtype=f32), ypre, u.new_empty(segdt, dtype=f32)


def _scan_backward(bidirectional, average, dout, dstate, inputs, saved, softplus, use_triton):
    if use_triton:
        grads = _triton_scan().scan_backward(dout, dstate, *inputs, *saved, softplus, 0.5 if average else 1.0,
                                             bidirectional)
        return tuple(_placeholder(dout) if g is None else g for g in grads)
    return _reference_grads(_scan_reference(bidirectional, average, softplus), inputs, (dout, dstate))


ScanOutputs = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
ScanGrads = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("mambazoo::selective_scan", mutates_args=())
def selective_scan_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], initial_state: Optional[Tensor], delta_softplus: bool, use_triton: bool,
    save_for_backward: bool,
) -> ScanOutputs:
    """Selective scan, arguments as :func:`mambazoo_kernels.selective_scan` (validated there).

    Returns ``(out, final_state, *saved)``; ``saved`` are the Triton backward's extra inputs.
    """
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _scan_forward(False, False, inputs, delta_softplus, use_triton, save_for_backward)


@torch.library.custom_op("mambazoo::selective_scan_backward", mutates_args=())
def selective_scan_backward_op(
    dout: Tensor, dfinal_state: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
    ckpt: Tensor, ypre: Tensor, segdt: Tensor, delta_softplus: bool, use_triton: bool,
) -> ScanGrads:
    """Gradients of the nine tensor inputs of ``mambazoo::selective_scan`` ((0,) for absent ones)."""
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _scan_backward(False, False, dout, dfinal_state, inputs, (ckpt, ypre, segdt), delta_softplus, use_triton)


@torch.library.custom_op("mambazoo::bidirectional_selective_scan", mutates_args=())
def bidirectional_selective_scan_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], initial_state: Optional[Tensor], delta_softplus: bool, average: bool,
    use_triton: bool, save_for_backward: bool,
) -> ScanOutputs:
    """Fused bidirectional scan, arguments as :func:`mambazoo_kernels.bidirectional_selective_scan`.

    Returns ``(out, final_states, *saved)``.
    """
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _scan_forward(True, average, inputs, delta_softplus, use_triton, save_for_backward)


@torch.library.custom_op("mambazoo::bidirectional_selective_scan_backward", mutates_args=())
def bidirectional_selective_scan_backward_op(
    dout: Tensor, dfinal_state: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
    ckpt: Tensor, ypre: Tensor, segdt: Tensor, delta_softplus: bool, average: bool, use_triton: bool,
) -> ScanGrads:
    """Gradients of the nine tensor inputs of ``mambazoo::bidirectional_selective_scan``."""
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _scan_backward(True, average, dout, dfinal_state, inputs, (ckpt, ypre, segdt), delta_softplus, use_triton)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, use_triton, save_for_backward):
    return _scan_forward_fake(False, (u, delta, A, B, C, D, z), use_triton, save_for_backward)


@bidirectional_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, average, use_triton, save_for_backward):
    return _scan_forward_fake(True, (u, delta, A, B, C, D, z), use_triton, save_for_backward)


def _scan_grads_fake(dout, dfinal_state, *inputs):
    """The Triton backward gives channel-last gradients of channel-last u, delta and z."""
    grads = _grads_fake(inputs[:len(SCAN_INPUTS)])
    u, delta, z, use_triton = inputs[0], inputs[1], inputs[6], inputs[-1]
    if not (use_triton and channel_last(u, delta, z)):
        return grads
    return tuple(empty_in_layout(g, g.shape, True) if i in (0, 1, 6) and g.dim() >= 3 else g
                 for i, g in enumerate(grads))


_register_scan_autograd(selective_scan_op, selective_scan_backward_op, len(SCAN_INPUTS), grads_fake=_scan_grads_fake)
_register_scan_autograd(bidirectional_selective_scan_op, bidirectional_selective_scan_backward_op, len(SCAN_INPUTS),
                        grads_fake=_scan_grads_fake)


# --- causal conv1d -------------------------------------------------------------------------------

def _triton_conv():
    from .causal_conv1d import triton_op  # on first use only

    return triton_op


def _conv_reference(silu: bool, reverse: bool):
    return lambda x, weight, bias: causal_conv1d_reference(x, weight, bias, "silu" if silu else None, reverse)


@torch.library.custom_op("mambazoo::causal_conv1d", mutates_args=())
def causal_conv1d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool,
                     use_triton: bool) -> Tensor:
    """Depthwise (anti-)causal conv, arguments as :func:`mambazoo_kernels.causal_conv1d` with a
    ``(dim, width)`` weight and ``silu`` for ``activation="silu"``."""
    if use_triton:
        return _triton_conv().conv_forward(x, weight, bias, silu, reverse)
    with torch.no_grad():
        return _conv_reference(silu, reverse)(x, weight, bias).contiguous()


@torch.library.custom_op("mambazoo::causal_conv1d_backward", mutates_args=())
def causal_conv1d_backward_op(dout: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
                              reverse: bool, use_triton: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``(x, weight, bias)`` (a (0,) placeholder for an absent bias)."""
    if use_triton:
        dx, dweight, dbias = _triton_conv().conv_backward(dout, x, weight, bias, silu, reverse)
        return dx, dweight, _placeholder(dout) if dbias is None else dbias
    return _reference_grads(_conv_reference(silu, reverse), (x, weight, bias), (dout,))


@causal_conv1d_op.register_fake
def _(x, weight, bias, silu, reverse, use_triton):
    return empty_in_layout(x, x.shape, use_triton and channel_last(x))


@causal_conv1d_backward_op.register_fake
def _(dout, x, weight, bias, silu, reverse, use_triton):
    dbias = _placeholder(x) if bias is None else bias.new_empty(bias.shape)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), dbias


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, *flags = inputs
    ctx.flags = flags
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, bias)


def _conv_backward(ctx, dout):
    dx, dweight, dbias = causal_conv1d_backward_op(dout, *ctx.saved_tensors, *ctx.flags)
    return dx, dweight, dbias if ctx.has_bias else None, None, None, None


causal_conv1d_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


# --- decode step (inference only: no autograd) ---------------------------------------------------

def _triton_decode():
    from .decode import triton_op  # on first use only

    return triton_op


@torch.library.custom_op("mambazoo::selective_state_update", mutates_args=("state",))
def selective_state_update_op(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    dt_bias: Optional[Tensor], dt_softplus: bool, use_triton: bool,
) -> Tensor:
    """One token of the scan, ``state`` updated in place; as :func:`mambazoo_kernels.selective_state_update`."""
    update = _triton_decode().selective_state_update if use_triton else selective_state_update_reference
    return update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@torch.library.custom_op("mambazoo::causal_conv1d_update", mutates_args=("conv_state",))
def causal_conv1d_update_op(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
                            use_triton: bool) -> Tensor:
    """One token of the conv, ``conv_state`` rolled in place; as :func:`mambazoo_kernels.causal_conv1d_update`."""
    update = _triton_decode().causal_conv1d_update if use_triton else causal_conv1d_update_reference
    return update(x, conv_state, weight, bias, "silu" if silu else None)


@selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, use_triton):
    return x.new_empty(x.shape)


@causal_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, silu, use_triton):
    return x.new_empty(x.shape)


# --- exporters -----------------------------------------------------------------------------------

def reference_decompositions() -> Dict[torch._ops.OpOverload, Callable]:
    """``{forward op: its reference}`` for ``ExportedProgram.run_decompositions``: turns the
    ``mambazoo::`` ops of an inference graph into ATen ops (e.g. for ONNX)."""
    from .ssd.library_ops import reference_decompositions as ssd_decompositions  # it imports this module

    return {
        **ssd_decompositions(),
        torch.ops.mambazoo.selective_scan.default:
            lambda *args: _scan_forward(False, False, args[:9], args[9], False, False),
        torch.ops.mambazoo.bidirectional_selective_scan.default:
            lambda *args: _scan_forward(True, args[10], args[:9], args[9], False, False),
        torch.ops.mambazoo.causal_conv1d.default:
            lambda x, weight, bias, silu, reverse, use_triton: _conv_reference(silu, reverse)(x, weight, bias),
    }


__all__: List[str] = [
    "selective_scan_op", "bidirectional_selective_scan_op", "causal_conv1d_op", "selective_state_update_op",
    "causal_conv1d_update_op", "reference_decompositions",
]
