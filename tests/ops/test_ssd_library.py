"""The SSD's ``mambazoo::`` torch.library ops: opcheck, fake implementations, autograd, export, compile.

- ``torch.library.opcheck`` checks each op's schema, fake implementation (against the real
  kernel's output metadata), registered autograd and AOT dispatch with dynamic shapes, on the
  reference (float64) and, under Triton's interpreter, the Triton kernels (float32).
- Autograd through the ops (a backward op that recomputes the reference) must equal the
  reference's own autograd in float64 (same arithmetic, sums in another order: 1e-10).
- ``torch.export`` of test_vim2 and of a Mamba-2 mixer: in test_library.py, with test_vim's.
- ``torch.compile(fullgraph=True)`` (``aot_eager``) of a tiny Mamba-2 mixer traces without graph
  breaks and matches eager (float32, same kernels: 1e-5 relative).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel modules are imported

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mambazoo  # noqa: F401  (registers the models)
from mambazoo.layers import BidirectionalMamba2Mixer, Mamba2Mixer
from mambazoo_kernels import bidirectional_ssd, ssd
from mambazoo_kernels.ssd import triton_op
from mambazoo_kernels.ssd.reference import bidirectional_ssd_reference, ssd_reference

ops = torch.ops.mambazoo
SSD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states", "seq_idx")
NO_LIMIT = [0.0, math.inf]


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def ssd_inputs(bidirectional=False, x_per_dir=False, bc_per_dir=False, batch=2, length=11, heads=4, headdim=3,
               groups=2, d_state=5, full=True, dtype=torch.float64, seed=0):
    """SSD arguments; data in ``dtype``, parameters and states in fp32 (fp64 for fp64)."""
    g = torch.Generator().manual_seed(seed)
    param = torch.promote_types(dtype, torch.float32)
    rand = lambda *shape, to=dtype: torch.randn(*shape, generator=g, dtype=torch.float64).to(to)  # noqa: E731
    lead = (2,) if bidirectional else ()
    x_lead = (2,) if x_per_dir else ()
    bc_lead = (2,) if bc_per_dir else ()
    args = dict(
        x=rand(*x_lead, batch, length, heads, headdim), dt=rand(*lead, batch, length, heads) * 0.5,
        A=-(torch.rand(*lead, heads, generator=g, dtype=torch.float64) + 0.2).to(param),
        B=rand(*bc_lead, batch, length, groups, d_state), C=rand(*bc_lead, batch, length, groups, d_state),
        D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
    )
    if full:
        args.update(D=rand(*lead, heads, to=param), z=rand(batch, length, heads, headdim),
                    dt_bias=rand(*lead, heads, to=param),
                    initial_states=rand(*lead, batch, heads, headdim, d_state, to=param),
                    seq_idx=torch.tensor([[0] * 4 + [1] * (length - 4)] * batch, dtype=torch.int32))
    return args


def op_args(args, *flags):
    return (*(args[name] for name in SSD_NAMES), *flags)


def with_grad(args):
    return {k: v.requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in args.items()}


# --- opcheck -----------------------------------------------------------------------------------

@pytest.mark.parametrize("full", [True, False])
def test_opcheck_ssd_reference(full):
    args = with_grad(ssd_inputs(full=full))
    torch.library.opcheck(ops.ssd.default, op_args(args, 4, True, NO_LIMIT, False, False))
    g = torch.Generator().manual_seed(1)
    out_grads = (torch.randn(2, 11, 4, 3, generator=g, dtype=torch.float64),
                 torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64))
    empty = torch.empty(0)
    torch.library.opcheck(ops.ssd_backward.default,
                          (*out_grads, *op_args(ssd_inputs(full=full)), empty, empty, empty, 4, True, NO_LIMIT, False))


@pytest.mark.parametrize("x_per_dir,bc_per_dir,average", [(True, True, True), (False, False, False)])
def test_opcheck_bidirectional_ssd_reference(x_per_dir, bc_per_dir, average):
    args = with_grad(ssd_inputs(True, x_per_dir, bc_per_dir))
    torch.library.opcheck(ops.bidirectional_ssd.default, op_args(args, 4, True, [0.0, 2.0], average, False, False))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_opcheck_triton_ssd(bidirectional):
    """The Triton path (interpreter): the fake implementation's saved-tensor shapes match."""
    args = with_grad(ssd_inputs(bidirectional, x_per_dir=bidirectional, length=9, heads=2, groups=1, d_state=4,
                                dtype=torch.float32, seed=3))
    if bidirectional:
        op, flags = ops.bidirectional_ssd.default, (4, True, NO_LIMIT, True, True, True)
    else:
        op, flags = ops.ssd.default, (4, True, NO_LIMIT, True, True)
    torch.library.opcheck(op, op_args(args, *flags))


# --- fake implementations ------------------------------------------------------------------------

@pytest.mark.parametrize("use_triton", [False, True])
def test_fake_outputs_match_real(use_triton, monkeypatch):
    """Ops on fake tensors: shapes and dtypes of every output equal the real run's, also for the
    Triton path's stored tensors with the long-sequence (segmented) plan."""
    if use_triton:
        monkeypatch.setattr(triton_op, "CONFIG", triton_op.SSDConfig(chunk=16, block_p=16, segments=3))
    dtype = torch.bfloat16 if use_triton else torch.float64
    for bidirectional, op in ((False, ops.ssd.default), (True, ops.bidirectional_ssd.default)):
        args = ssd_inputs(bidirectional, x_per_dir=bidirectional, length=50, dtype=dtype, seed=1)
        flags = (8, True, NO_LIMIT) + ((True,) if bidirectional else ()) + (use_triton, True)
        real = op(*op_args(args, *flags))
        with FakeTensorMode() as mode:
            fake = op(*op_args({k: None if v is None else mode.from_tensor(v) for k, v in args.items()}, *flags))
        assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]
        if use_triton:
            assert real[2].numel() > 0 and real[4].numel() > 0  # checkpoints and segment decays stored
            assert (real[3].numel() > 0) == bidirectional  # ypre: bidirectional with z only


def test_fake_public_ops():
    with FakeTensorMode() as mode:
        args = {k: None if v is None else mode.from_tensor(v) for k, v in ssd_inputs(True, x_per_dir=True).items()}
        out, final = bidirectional_ssd(**args, return_final_states=True)
        assert out.shape == (2, 11, 4, 3) and final.shape == (2, 2, 4, 3, 5) and final.dtype == torch.float64


# --- autograd through the ops vs the reference's own autograd ---------------------------------

@pytest.mark.parametrize("full,used", [(True, "both"), (False, "both"), (True, "out"), (True, "final_states")])
@pytest.mark.parametrize("bidirectional,x_per_dir,bc_per_dir", [(False, False, False), (True, True, True),
                                                                (True, False, False)])
def test_op_autograd_matches_reference_autograd(full, used, bidirectional, x_per_dir, bc_per_dir):
    """Also with only one of (out, final states) in the loss: autograd gives the op no gradient
    for the other (not materialized), which must count as zeros (the final states' reaches the
    backward op as a (0,) placeholder)."""
    args = with_grad(ssd_inputs(bidirectional, x_per_dir, bc_per_dir, full=full, seed=5))
    leaves = [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    extra = dict(average=True) if bidirectional else {}
    public, reference = (bidirectional_ssd, bidirectional_ssd_reference) if bidirectional else (ssd, ssd_reference)
    common = dict(chunk_size=4, dt_softplus=True, return_final_states=True, **extra)
    out, final = public(**args, backend="reference", **common)
    ref_out, ref_final = reference(**args, **common)
    assert out.grad_fn is not None and "mambazoo" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    g = torch.Generator().manual_seed(2)
    dout, dfinal = (torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (out, final))
    pick = {"both": slice(0, 2), "out": slice(0, 1), "final_states": slice(1, 2)}[used]
    grads = torch.autograd.grad((out, final)[pick], leaves, (dout, dfinal)[pick], allow_unused=True)
    ref_grads = torch.autograd.grad((ref_out, ref_final)[pick], leaves, (dout, dfinal)[pick], allow_unused=True)
    for got, expected in zip(grads, ref_grads):
        if expected is None:  # D or z without the output in the loss
            assert got is None or not got.any()
            continue
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


# --- torch.compile (export of test_vim2 and Mamba2Mixer: test_library.py) -------------------

@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_compile_fullgraph_mamba2_mixers(backend, monkeypatch):
    """Both Mamba-2 mixers compiled whole (aot_eager): no graph break, same output and gradients
    as eager (reference: 1e-5 relative; Triton under the interpreter: same kernels, 1e-6)."""
    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", backend)
    torch.manual_seed(0)
    hidden = torch.randn(1, 20, 16)
    for cls in (Mamba2Mixer, BidirectionalMamba2Mixer):
        torch._dynamo.reset()
        mixer = cls(16, d_state=4, headdim=8, chunk_size=8)
        compiled = torch.compile(mixer, backend="aot_eager", fullgraph=True)
        out, expected = compiled(hidden), mixer(hidden)
        assert rel_err(out, expected) < 1e-5
        params = list(mixer.parameters())
        for got, ref in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(expected.sum(), params)):
            assert rel_err(got, ref) < 1e-5
    torch._dynamo.reset()
