"""The ``mambazoo::`` torch.library ops: opcheck, fake implementations, autograd, export, compile.

- ``torch.library.opcheck`` checks each op's schema, fake implementation (against the real
  kernel's output metadata), registered autograd and AOT dispatch with dynamic shapes, on both
  the reference kernels and (under Triton's interpreter) the Triton ones.
- Autograd through the ops (a backward op that recomputes the reference) must equal the
  reference's own autograd in float64 (same arithmetic, different order of a few sums: 1e-10).
- ``torch.export`` of test_vim (test_vim2) keeps the scan (the SSD) and the conv as single
  ``mambazoo`` nodes and runs; ``reference_decompositions`` turns them back into ATen ops with the
  same result (1e-6); so for the single-direction Mamba / Mamba-2 mixers.
- ``torch.compile(fullgraph=True)`` (``aot_eager``: dynamo + AOT autograd, no C++ compile, to
  keep CI fast) of test_vim traces without graph breaks; its forward and gradients equal eager's
  (float32, same kernels: 1e-5 relative).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel modules are imported

import pytest
import timm
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mambazoo  # noqa: F401  (registers the models)
from mambazoo.layers import Mamba2Mixer, MambaMixer
from mambazoo_kernels import (
    bidirectional_selective_scan, causal_conv1d, causal_conv1d_update, reference_decompositions, selective_scan,
    selective_state_update, to_channel_last,
)
from mambazoo_kernels.causal_conv1d.reference import causal_conv1d_reference
from mambazoo_kernels.selective_scan import triton_op
from mambazoo_kernels.selective_scan.reference import (
    bidirectional_selective_scan_reference, selective_scan_reference,
)

ops = torch.ops.mambazoo
SCAN_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def scan_inputs(prefix=(), batch=2, dim=4, length=9, d_state=3, bc="grouped", full=True,
                dtype=torch.float64, seed=0):
    """Scan arguments; activations in ``dtype``, parameters and state in fp32 (fp64 for fp64)."""
    g = torch.Generator().manual_seed(seed)
    param = torch.promote_types(dtype, torch.float32)
    rand = lambda *shape, to=dtype: torch.randn(*shape, generator=g, dtype=torch.float64).to(to)
    bc_shape = {"grouped": (*prefix, batch, 2, d_state, length), "token": (*prefix, batch, d_state, length),
                "const": (*prefix, dim, d_state)}[bc]
    args = dict(
        u=rand(*prefix, batch, dim, length), delta=rand(*prefix, batch, dim, length) * 0.5,
        A=-torch.rand(*prefix, dim, d_state, generator=g, dtype=torch.float64).to(param),
        B=rand(*bc_shape), C=rand(*bc_shape), D=None, z=None, delta_bias=None, initial_state=None,
    )
    if full:
        args.update(D=rand(*prefix, dim, to=param), z=rand(batch, dim, length),
                    delta_bias=rand(*prefix, dim, to=param), initial_state=rand(*prefix, batch, dim, d_state, to=param))
    return args


def op_args(args, *flags):
    return (*(args[name] for name in SCAN_NAMES), *flags)


def with_grad(args):
    return {k: v.requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


# --- opcheck -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bc,full", [("grouped", True), ("const", False), ("token", True)])
def test_opcheck_selective_scan_reference(bc, full):
    args = with_grad(scan_inputs(bc=bc, full=full))
    torch.library.opcheck(ops.selective_scan.default, op_args(args, True, False, False))
    # Its backward op, on the gradient of both outputs.
    out_grads = (torch.randn(2, 4, 9, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64))
    empty = torch.empty(0)
    torch.library.opcheck(ops.selective_scan_backward.default,
                          (*out_grads, *op_args(scan_inputs(bc=bc, full=full)), empty, empty, empty, True, False))


@pytest.mark.parametrize("average,full", [(True, True), (False, False)])
def test_opcheck_bidirectional_reference(average, full):
    args = with_grad(scan_inputs(prefix=(2,), bc="token", full=full))
    torch.library.opcheck(ops.bidirectional_selective_scan.default, op_args(args, True, average, False, False))


@pytest.mark.parametrize("channel_last", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_opcheck_triton_scan(bidirectional, channel_last):
    """The Triton path (interpreter): the fake implementation's saved-tensor shapes match, and with
    channel-last u/delta/z the channel-last strides of the output, ypre and the gradients."""
    prefix = (2,) if bidirectional else ()
    args = scan_inputs(prefix=prefix, length=20, bc="token", dtype=torch.float32, seed=3)
    if channel_last:
        args.update({name: to_channel_last(args[name]) for name in ("u", "delta", "z")})
    args = with_grad(args)
    if bidirectional:
        op, flags = ops.bidirectional_selective_scan.default, (True, True, True, True)
    else:
        op, flags = ops.selective_scan.default, (True, True, True)
    torch.library.opcheck(op, op_args(args, *flags))


@pytest.mark.parametrize("use_triton", [False, True])
@pytest.mark.parametrize("with_bias,silu,reverse,channel_last", [
    (True, True, False, False), (False, False, True, False), (True, True, True, True),
])
def test_opcheck_causal_conv1d(use_triton, with_bias, silu, reverse, channel_last):
    dtype = torch.float32 if use_triton else torch.float64
    x = torch.randn(2, 5, 11, dtype=dtype)
    x = (to_channel_last(x) if channel_last else x).requires_grad_()
    weight = torch.randn(5, 4, dtype=dtype, requires_grad=True)
    bias = torch.randn(5, dtype=dtype, requires_grad=True) if with_bias else None
    torch.library.opcheck(ops.causal_conv1d.default, (x, weight, bias, silu, reverse, use_triton))


@pytest.mark.parametrize("use_triton", [False, True])
def test_opcheck_decode_ops(use_triton):
    g = torch.Generator().manual_seed(0)
    state, x, dt, z = torch.randn(2, 4, 3, generator=g), *torch.randn(3, 2, 4, generator=g)
    A, B, C = -torch.rand(4, 3, generator=g), torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    torch.library.opcheck(ops.selective_state_update.default,
                          (state, x, dt, A, B, C, torch.ones(4), z, torch.zeros(4), True, use_triton))
    torch.library.opcheck(ops.causal_conv1d_update.default,
                          (x, torch.randn(2, 4, 4, generator=g), torch.randn(4, 4, generator=g), None, True,
                           use_triton))


# --- fake implementations ------------------------------------------------------------------------

@pytest.mark.parametrize("use_triton", [False, True])
def test_fake_scan_outputs_match_real(use_triton, monkeypatch):
    """Public ops on fake tensors: shapes and dtypes of every output equal the real run's, also for
    the Triton path's stored tensors with the long-sequence (segmented) plan."""
    if use_triton:
        base = triton_op.default_config(50)
        monkeypatch.setattr(triton_op, "CONFIG", triton_op.ScanConfig(**{**base.__dict__, "segments": 3}))
    dtype = torch.bfloat16 if use_triton else torch.float64
    for prefix, op in (((), ops.selective_scan.default), ((2,), ops.bidirectional_selective_scan.default)):
        args = scan_inputs(prefix=prefix, length=50, bc="grouped", dtype=dtype, seed=1)
        flags = (True, True, use_triton, True) if prefix else (True, use_triton, True)
        real = op(*op_args(args, *flags))
        with FakeTensorMode() as mode:
            fake = op(*op_args({k: mode.from_tensor(v) for k, v in args.items()}, *flags))
        assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]
        if use_triton:
            assert real[2].numel() > 0 and real[4].numel() > 0  # checkpoints and segment sums stored
            assert (real[3].numel() > 0) == bool(prefix)  # ypre: bidirectional with z only


def test_fake_conv_and_decode_shapes():
    with FakeTensorMode():
        x = torch.empty(3, 6, 10, dtype=torch.bfloat16)
        out = causal_conv1d(x, torch.empty(6, 1, 4), torch.empty(6), "silu", reverse=True)
        assert out.shape == (3, 6, 10) and out.dtype == torch.bfloat16
        y = selective_state_update(torch.empty(3, 6, 4), x[..., 0], x[..., 0], torch.empty(6, 4),
                                   torch.empty(3, 4), torch.empty(3, 4))
        assert y.shape == (3, 6) and y.dtype == torch.bfloat16
        y = causal_conv1d_update(x[..., 0], torch.empty(3, 6, 4, dtype=torch.bfloat16), torch.empty(6, 4))
        assert y.shape == (3, 6) and y.dtype == torch.bfloat16


# --- autograd through the ops vs the reference's own autograd ---------------------------------

@pytest.mark.parametrize("bc,full,used", [("grouped", True, "both"), ("const", True, "out"), ("token", False, "both"),
                                          ("grouped", True, "final_state")])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_op_autograd_matches_reference_autograd(bc, full, used, bidirectional):
    """Also with only one of (out, final state) in the loss: autograd gives the op no gradient
    for the other (not materialized), which must count as zeros (the final state's reaches the
    backward op as a (0,) placeholder)."""
    prefix = (2,) if bidirectional else ()
    args = with_grad(scan_inputs(prefix=prefix, length=21, bc=bc, full=full, seed=5))
    leaves = [v for v in args.values() if isinstance(v, torch.Tensor)]
    extra = dict(average=True) if bidirectional else {}
    public, reference = ((bidirectional_selective_scan, bidirectional_selective_scan_reference) if bidirectional
                         else (selective_scan, selective_scan_reference))
    out, state = public(**args, delta_softplus=True, return_final_state=True, backend="reference", **extra)
    ref_out, ref_state = reference(**args, delta_softplus=True, return_final_state=True, **extra)
    assert out.grad_fn is not None and "mambazoo" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    g = torch.Generator().manual_seed(2)
    dout, dstate = torch.randn(out.shape, generator=g, dtype=out.dtype), torch.randn(state.shape, generator=g,
                                                                                   dtype=state.dtype)
    pick = {"both": slice(0, 2), "out": slice(0, 1), "final_state": slice(1, 2)}[used]
    grads = torch.autograd.grad((out, state)[pick], leaves, (dout, dstate)[pick], allow_unused=True)
    ref_grads = torch.autograd.grad((ref_out, ref_state)[pick], leaves, (dout, dstate)[pick], allow_unused=True)
    for got, expected in zip(grads, ref_grads):
        if expected is None:  # z without the output in the loss
            assert got is None or not got.any()
            continue
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_conv_op_autograd_matches_reference_autograd():
    x = torch.randn(2, 5, 13, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out = causal_conv1d(x, weight, bias, "silu", reverse=True, backend="reference")
    ref = causal_conv1d_reference(x, weight, bias, "silu", reverse=True)
    dout = torch.randn_like(out)
    for got, expected in zip(torch.autograd.grad(out, (x, weight, bias), dout),
                             torch.autograd.grad(ref, (x, weight, bias), dout)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# --- torch.export and torch.compile of a whole model -----------------------------------------

def mambazoo_targets(graph):
    return {str(node.target) for node in graph.nodes if str(node.target).startswith("mambazoo.")}


@pytest.mark.parametrize("model_name, scan_op", [
    ("test_vim", "mambazoo.bidirectional_selective_scan.default"),
    ("test_vim2", "mambazoo.bidirectional_ssd.default"),
])
def test_export_keeps_the_ops_and_decomposes_to_reference(model_name, scan_op, monkeypatch):
    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", "reference")
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        program = torch.export.export(model, (images,))
        expected = model(images)
        assert mambazoo_targets(program.graph) == {scan_op, "mambazoo.causal_conv1d.default"}
        torch.testing.assert_close(program.module()(images), expected, rtol=0, atol=0)
        table = torch.export.default_decompositions()
        table.update(reference_decompositions())
        decomposed = program.run_decompositions(table)
        assert not mambazoo_targets(decomposed.graph)
        torch.testing.assert_close(decomposed.module()(images), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mixer_cls, kwargs, scan_op", [
    (MambaMixer, dict(d_state=4), "mambazoo.selective_scan.default"),
    (Mamba2Mixer, dict(d_state=4, headdim=8), "mambazoo.ssd.default"),
])
def test_export_single_direction_mixer(mixer_cls, kwargs, scan_op):
    mixer = mixer_cls(16, **kwargs).eval()
    hidden = torch.randn(1, 7, 16)
    with torch.no_grad():
        program = torch.export.export(mixer, (hidden,))
        assert scan_op in mambazoo_targets(program.graph)
        torch.testing.assert_close(program.module()(hidden), mixer(hidden), rtol=0, atol=0)


def test_compile_fullgraph_without_graph_breaks(monkeypatch):
    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", "reference")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model("test_vim", depth=2)
    images = torch.randn(2, 3, 32, 32)
    explanation = torch._dynamo.explain(model)(images)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(images)
    expected = model(images)
    assert rel_err(out, expected) < 1e-5
    params = [p for p in model.parameters() if p.requires_grad]
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, params, dout)
    ref_grads = torch.autograd.grad(expected, params, dout)
    for got, ref in zip(grads, ref_grads):
        assert rel_err(got, ref) < 1e-5
    torch._dynamo.reset()


def test_compile_triton_path_under_the_interpreter(monkeypatch):
    """The Triton ops in a compiled graph (fake saved-tensor shapes, backward op), fused
    bidirectional mixer: same output and gradients as eager (same kernels: exact)."""
    from mambazoo.layers import BidirectionalMambaMixer

    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", "triton")
    torch._dynamo.reset()
    torch.manual_seed(0)
    mixer = BidirectionalMambaMixer(16, d_state=4)
    hidden = torch.randn(1, 20, 16)
    compiled = torch.compile(mixer, backend="aot_eager", fullgraph=True)
    out, expected = compiled(hidden), mixer(hidden)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    params = list(mixer.parameters())
    for got, ref in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(expected.sum(), params)):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("mixer_cls", [MambaMixer, "BidirectionalMambaMixer"])
def test_mixers_pass_channel_last_activations_to_the_triton_scan(mixer_cls, monkeypatch):
    """The conv output, dt_proj output and in_proj's z reach the scan kernels as channel-last
    views (read in place, no transposing copies), and the mixer matches the reference backend."""
    from mambazoo.layers import BidirectionalMambaMixer

    mixer_cls = BidirectionalMambaMixer if mixer_cls == "BidirectionalMambaMixer" else mixer_cls
    layouts = []
    forward = triton_op._forward

    def recording(u, delta, A, B, C, D, z, *args):
        layouts.append((u.stride(-2), delta.stride(-2), z.stride(-2)))
        return forward(u, delta, A, B, C, D, z, *args)

    monkeypatch.setattr(triton_op, "_forward", recording)
    torch.manual_seed(0)
    mixer = mixer_cls(16, d_state=4)
    hidden = torch.randn(2, 11, 16)
    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", "triton")
    out = mixer(hidden)
    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", "reference")
    assert layouts == [(1, 1, 1)]
    assert rel_err(out, mixer(hidden)) < 1e-5
