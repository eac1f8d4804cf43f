"""The Triton SSD (Mamba-2) kernels, run on the CPU by Triton's interpreter, against the float64
chunked reference and the float64 step-by-step recurrence of ``test_ssd``.

The interpreter executes the real kernel code with numpy, so shapes stay tiny. Most tests use
16-token chunks and 16-channel headdim blocks (the smallest ``tl.dot`` tiles), so lengths 29, 50
and 70 cross one to four chunk boundaries and headdim 20 spans two programs; ``segments`` forces
the long-sequence path (state pass + combine + full pass) on short sequences.

Tolerances: with float32 inputs the kernels compute in fp32 (exact fp32 dots), so they differ
from float64 by fp32 rounding over sums of at most a few hundred terms: ~1e-7 relative in
practice; we assert 2e-5 (outputs, states) and 1e-4 (gradients: dA and dt sum many
cancelling terms). With bf16 inputs the matmul operands (dt x, the decayed C B^T tile, the
state) are rounded to bf16 for the tensor cores and the outputs to bf16 (2^-9 relative per
element): we assert 2e-2 against the reference on the same rounded inputs.

Errors are ``||value - ref|| / max(||ref||, 1e-3)``: a gradient that is exactly zero in float64
(dA at L = 1 without an initial state) comes out of the kernels as the fp32 rounding of
cancelling O(1) terms (the pair identity of ``triton_bwd``), ~1e-8.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel modules are imported

import pytest
import torch
import torch.nn.functional as F

from mambazoo_kernels.ssd import triton_op
from mambazoo_kernels.ssd.reference import ssd_reference

from test_ssd import GRAD_NAMES, make_inputs, oracle


def rel_err(value, ref):
    return ((value.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-3)).item()

FP32_TOL, GRAD_TOL = 2e-5, 1e-4
PARAM_NAMES = ("A", "D", "dt_bias", "initial_states")


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """16-token chunks and 16-channel headdim blocks; ``small_tiles(segments=n)`` forces segments."""

    def set_config(**kwargs):
        monkeypatch.setattr(triton_op, "CONFIG", triton_op.SSDConfig(**{"chunk": 16, "block_p": 16, **kwargs}))

    set_config()
    return set_config


def inputs(*shape, dtype=torch.float32, **variant):
    """``test_ssd.make_inputs`` with parameters in fp32 (as a model keeps them) and data in ``dtype``."""
    args = make_inputs(*shape, 16, dtype=dtype, **variant)
    for k in PARAM_NAMES:
        if args[k] is not None:
            args[k] = args[k].float()
    return args


def run(fn, args, cast=lambda t: t, seed=1, **extra):
    """Outputs, final states and the gradients of every tensor input for one random cotangent."""
    args = {k: (cast(v).detach().clone() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in args.items()}
    leaves = {k: args[k].requires_grad_() for k in GRAD_NAMES if args.get(k) is not None}
    out, final = fn(**args, return_final_states=True, **extra)
    g = torch.Generator().manual_seed(seed)
    loss = (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum()
    loss = loss + (final.double() * torch.randn(final.shape, generator=g, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out.detach(), final.detach(), dict(zip(leaves, grads))


def assert_close(got, want, tol, grad_tol):
    (out, final, grads), (ref_out, ref_final, ref_grads) = got, want
    assert rel_err(out, ref_out) < tol, rel_err(out, ref_out)
    assert rel_err(final, ref_final) < tol, rel_err(final, ref_final)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert rel_err(grads[name], ref_grads[name]) < grad_tol, (name, rel_err(grads[name], ref_grads[name]))


def ssd_kernels(**kw):
    return triton_op.ssd_triton(**kw)


def step_recurrence(chunk_size, return_final_states, **kw):
    return oracle(**kw)


CASES = [
    # batch, length, heads, headdim, groups, d_state
    (1, 1, 2, 3, 1, 4),     # L = 1, batch 1
    (2, 16, 2, 4, 1, 4),    # exactly one chunk
    (2, 29, 4, 3, 2, 5),    # ragged second chunk, 2 groups
    (1, 50, 3, 20, 3, 3),   # 4 chunks, 3 groups of one head, headdim over two blocks
]
VARIANTS = {
    "bare": dict(),
    "full": dict(D="head", z=True, bias=True, state=True),
    "channel_D_limit": dict(D="channel", bias=True, limit=True),
    "packed": dict(D="head", z=True, bias=True, state=True, seq=True),
}


@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_reference_float32(shape, variant):
    args = inputs(*shape, **VARIANTS[variant])
    got = run(ssd_kernels, args)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert_close(got, run(ssd_reference, args, cast=torch.Tensor.double), FP32_TOL, GRAD_TOL)


@pytest.mark.parametrize("variant", ["full", "packed"])
def test_matches_step_recurrence_float64(variant):
    args = inputs(2, 45, 4, 5, 2, 6, **VARIANTS[variant])
    assert_close(run(ssd_kernels, args), run(step_recurrence, args, cast=torch.Tensor.double),
                 FP32_TOL, GRAD_TOL)


@pytest.mark.parametrize("variant", ["full", "packed"])
def test_segmented_long_sequence_path(small_tiles, variant):
    # Three segments of two chunks, both passes and the combine, forward and backward.
    small_tiles(segments=3)
    args = inputs(1, 90, 2, 3, 1, 4, **VARIANTS[variant], seed=3)
    assert_close(run(ssd_kernels, args), run(ssd_reference, args, cast=torch.Tensor.double), FP32_TOL, GRAD_TOL)


def test_default_tiles():
    # The GPU tiling (64-token chunks, 64-channel blocks) on a sequence of two chunks, one ragged.
    triton_op.CONFIG = None
    args = inputs(1, 100, 2, 8, 1, 16, **VARIANTS["packed"], seed=4)
    assert_close(run(ssd_kernels, args), run(ssd_reference, args, cast=torch.Tensor.double), FP32_TOL, GRAD_TOL)


@pytest.mark.parametrize("segments", [None, 2])
def test_state_does_not_cross_sequences(small_tiles, segments):
    small_tiles(segments=segments)
    args = inputs(1, 64, 2, 3, 1, 4, D="head", z=True, bias=True, state=True, seed=5)
    args["seq_idx"] = torch.tensor([[0] * 23 + [1] * 41], dtype=torch.int64)
    out = triton_op.ssd_triton(**args)
    changed = dict(args, x=args["x"].clone(), B=args["B"].clone())
    changed["x"][:, :23] = torch.randn(1, 23, 2, 3) * 10
    changed["B"][:, :23] = torch.randn(1, 23, 1, 4) * 10
    leaves = {k: changed[k].requires_grad_() for k in ("x", "B", "C")}
    out2 = triton_op.ssd_triton(**changed)
    assert torch.equal(out[:, 23:], out2[:, 23:].detach())
    assert not torch.equal(out[:, :23], out2[:, :23].detach())
    grads = torch.autograd.grad(out2[:, 23:].sum(), list(leaves.values()))
    assert all(bool((gr[:, :23] == 0).all()) for gr in grads)


def test_bf16_inputs_keep_fp32_state():
    args = inputs(2, 37, 4, 8, 2, 8, dtype=torch.bfloat16, **VARIANTS["packed"], seed=6)
    got = run(ssd_kernels, args)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert all(got[2][k].dtype == args[k].dtype for k in got[2])
    assert_close(got, run(ssd_reference, args, cast=torch.Tensor.double), 2e-2, 2e-2)


def test_fp16_forward():
    args = inputs(1, 21, 2, 4, 1, 4, dtype=torch.float16, seed=7, z=True)
    out = triton_op.ssd_triton(**args)
    assert out.dtype == torch.float16
    ref = ssd_reference(**{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                           for k, v in args.items()})
    assert rel_err(out, ref) < 1e-2


def test_backward_is_deterministic(small_tiles):
    small_tiles(segments=2)
    args = inputs(1, 40, 2, 3, 1, 4, **VARIANTS["packed"], seed=8)
    first, second = run(ssd_kernels, args), run(ssd_kernels, args)
    assert all(torch.equal(first[2][k], second[2][k]) for k in first[2])


def test_unsupported_reason():
    args = make_inputs(1, 4, 2, 3, 1, 4, 4)  # float64
    assert "float64" in triton_op.unsupported_reason(args["x"], args["dt"], args["A"], args["B"], args["C"])
    args = inputs(1, 4, 2, 3, 1, 4)
    assert triton_op.unsupported_reason(args["x"], args["dt"], args["A"], args["B"], args["C"]) is None


# ---------------------------------------------------------------------------------------------
# bidirectional

BIDIR_NAMES = ("dt", "A", "D", "dt_bias", "initial_states")


def two_reference_runs(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states,
                       seq_idx, return_final_states, average):
    """The reversed direction as the reference on time-flipped inputs, flipped back."""
    flip = lambda t: None if t is None else t.flip(1)  # noqa: E731
    per_dir = lambda t, i: t[i] if t.dim() == 5 else t  # noqa: E731
    common = dict(chunk_size=chunk_size, dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=True)
    y_f, s_f = ssd_reference(x, dt[0], A[0], per_dir(B, 0), per_dir(C, 0), D=D[0], dt_bias=dt_bias[0],
                             initial_states=initial_states[0], seq_idx=seq_idx, **common)
    y_r, s_r = ssd_reference(flip(x), flip(dt[1]), A[1], flip(per_dir(B, 1)), flip(per_dir(C, 1)), D=D[1],
                             dt_bias=dt_bias[1], initial_states=initial_states[1], seq_idx=flip(seq_idx), **common)
    y = (y_f + y_r.flip(1)) * (0.5 if average else 1.0) * F.silu(z)
    return y, torch.stack([s_f, s_r])


@pytest.mark.parametrize("shared_bc,average,seq,segments", [
    (True, True, False, None), (False, False, True, None), (True, False, True, 2),
])
def test_bidirectional_matches_two_reference_runs(small_tiles, shared_bc, average, seq, segments):
    small_tiles(segments=segments)
    length = 35
    fwd = inputs(2, length, 2, 3, 2, 4, D="channel", z=True, bias=True, state=True, seq=seq, seed=10)
    rev = inputs(2, length, 2, 3, 2, 4, D="channel", z=True, bias=True, state=True, seed=11)
    args = dict(fwd, **{k: torch.stack([fwd[k], rev[k]]) for k in BIDIR_NAMES})
    if not shared_bc:
        args["B"], args["C"] = torch.stack([fwd["B"], rev["B"]]), torch.stack([fwd["C"], rev["C"]])
    got = run(triton_op.bidirectional_ssd_triton, args, average=average)
    want = run(two_reference_runs, args, cast=torch.Tensor.double, average=average)
    assert got[1].shape == (2, 2, 2, 3, 4)
    assert_close(got, want, FP32_TOL, GRAD_TOL)
