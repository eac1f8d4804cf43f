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

from mambazoo_kernels import bidirectional_ssd, ssd
from mambazoo_kernels._backend import DEFAULT_SMS
from mambazoo_kernels.ssd import triton_op
from mambazoo_kernels.ssd.reference import bidirectional_ssd_reference, ssd_reference

from test_ssd import GRAD_NAMES, VARIANTS, make_inputs, oracle


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
    return ssd(**kw, backend="triton")


def bidirectional_kernels(**kw):
    return bidirectional_ssd(**kw, backend="triton")


def step_recurrence(chunk_size, return_final_states, **kw):
    return oracle(**kw)


CASES = [
    # batch, length, heads, headdim, groups, d_state
    (1, 1, 2, 3, 1, 4),     # L = 1, batch 1
    (2, 16, 2, 4, 1, 4),    # exactly one chunk
    (2, 29, 4, 3, 2, 5),    # ragged second chunk, 2 groups
    (1, 50, 3, 20, 3, 3),   # 4 chunks, 3 groups of one head, headdim over two blocks
]


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
@pytest.mark.parametrize("segments,state_split", [(3, 1), (3, 2), (2, 2)])
def test_segmented_long_sequence_path(small_tiles, variant, segments, state_split):
    # Six chunks in three segments of two (or two of four, the last ragged: chunks 4-5), state
    # passes on segments of one or two chunks, the combine, forward and backward.
    small_tiles(segments=segments, state_split=state_split)
    args = inputs(1, 90, 2, 3, 1, 4, **VARIANTS[variant], seed=3)
    assert_close(run(ssd_kernels, args), run(ssd_reference, args, cast=torch.Tensor.double), FP32_TOL, GRAD_TOL)


@pytest.mark.parametrize("reverse,init", [(False, False), (False, True), (True, True)])
def test_segment_combine_matches_a_loop(reverse, init):
    """70 segment-local states (two scan blocks of 64) chained, the carry kept every 3rd segment."""
    gen = torch.Generator().manual_seed(16)
    local = torch.randn(1, 2, 1, 70, 2, 3, generator=gen)
    decay = torch.rand(1, 2, 1, 70, generator=gen) * 1.2
    decay[0, 1, 0, 33] = 0.0  # a sequence boundary
    h0 = torch.randn(1, 2, 1, 2, 3, generator=gen) if init else None
    every, n_out = 3, 24
    got = triton_op._combine(local, decay, h0, every, n_out, reverse)
    order = range(69, -1, -1) if reverse else range(70)
    carry, want = torch.zeros(1, 2, 1, 2, 3) if h0 is None else h0.clone(), torch.empty_like(got)
    for s in order:
        if (min(s // every * every + every - 1, 69) == s) if reverse else s % every == 0:
            want[:, :, :, s // every] = carry
        carry = decay[:, :, :, s, None, None] * carry + local[:, :, :, s]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


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
    out = ssd_kernels(**args)
    changed = dict(args, x=args["x"].clone(), B=args["B"].clone())
    changed["x"][:, :23] = torch.randn(1, 23, 2, 3) * 10
    changed["B"][:, :23] = torch.randn(1, 23, 1, 4) * 10
    leaves = {k: changed[k].requires_grad_() for k in ("x", "B", "C")}
    out2 = ssd_kernels(**changed)
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
    out = ssd_kernels(**args)
    assert out.dtype == torch.float16
    ref = ssd_reference(**{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                           for k, v in args.items()})
    assert rel_err(out, ref) < 1e-2


def test_backward_is_deterministic(small_tiles):
    small_tiles(segments=2)
    args = inputs(1, 40, 2, 3, 1, 4, **VARIANTS["packed"], seed=8)
    first, second = run(ssd_kernels, args), run(ssd_kernels, args)
    assert all(torch.equal(first[2][k], second[2][k]) for k in first[2])


def test_unsupported_reason(monkeypatch):
    """float64 is not a kernel dtype: auto falls back to the reference, backend="triton" refuses."""
    args = make_inputs(1, 4, 2, 3, 1, 4, 4)  # float64
    assert "float64" in triton_op.unsupported_reason(args["x"], args["dt"], args["A"], args["B"], args["C"])
    with pytest.raises(NotImplementedError, match="ssd: x has dtype torch.float64; the Triton kernels take"):
        ssd(**args, backend="triton")
    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", "triton")
    bi = dict(args, **{k: torch.stack([args[k]] * 2) for k in ("dt", "A")})
    with pytest.raises(NotImplementedError, match="bidirectional_ssd: x has dtype torch.float64"):
        bidirectional_ssd(**bi)
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
    y_f, s_f = ssd_reference(per_dir(x, 0), dt[0], A[0], per_dir(B, 0), per_dir(C, 0), D=D[0], dt_bias=dt_bias[0],
                             initial_states=initial_states[0], seq_idx=seq_idx, **common)
    y_r, s_r = ssd_reference(flip(per_dir(x, 1)), flip(dt[1]), A[1], flip(per_dir(B, 1)), flip(per_dir(C, 1)),
                             D=D[1], dt_bias=dt_bias[1], initial_states=initial_states[1], seq_idx=flip(seq_idx),
                             **common)
    y = (y_f + y_r.flip(1)) * (0.5 if average else 1.0) * F.silu(z)
    return y, torch.stack([s_f, s_r])


@pytest.mark.parametrize("x_per_dir,shared_bc,average,seq,segments", [
    (False, True, True, False, None), (False, False, False, True, None), (False, True, False, True, 2),
    # x per direction (a mixer with one conv per direction, as vim2), B/C per direction or shared
    (True, False, True, True, None), (True, True, False, True, 2),
])
def test_bidirectional_matches_two_reference_runs(small_tiles, x_per_dir, shared_bc, average, seq, segments):
    """Both directions against two reference runs (the reversed one on flipped inputs), with
    seq_idx boundaries and initial states: output, final states and every gradient (a shared x,
    B or C gets the sum of both directions')."""
    small_tiles(segments=segments)
    length = 35
    fwd = inputs(2, length, 2, 3, 2, 4, D="channel", z=True, bias=True, state=True, seq=seq, seed=10)
    rev = inputs(2, length, 2, 3, 2, 4, D="channel", z=True, bias=True, state=True, seed=11)
    args = dict(fwd, **{k: torch.stack([fwd[k], rev[k]]) for k in BIDIR_NAMES})
    if not shared_bc:
        args["B"], args["C"] = torch.stack([fwd["B"], rev["B"]]), torch.stack([fwd["C"], rev["C"]])
    if x_per_dir:
        args["x"] = torch.stack([fwd["x"], rev["x"]])
    got = run(bidirectional_kernels, args, average=average)
    want = run(two_reference_runs, args, cast=torch.Tensor.double, average=average)
    assert got[1].shape == (2, 2, 2, 3, 4)
    assert got[2]["x"].shape == args["x"].shape and got[2]["B"].shape == args["B"].shape
    assert_close(got, want, FP32_TOL, GRAD_TOL)


def test_bidirectional_per_direction_x_bf16(small_tiles):
    """bf16 data, per-direction x with per-head D and no gate (the vim2 mixer's call), against the
    reference on the same rounded inputs."""
    fwd = inputs(2, 37, 4, 8, 1, 8, dtype=torch.bfloat16, D="head", bias=True, seq=True, seed=12)
    rev = inputs(2, 37, 4, 8, 1, 8, dtype=torch.bfloat16, D="head", bias=True, seed=13)
    args = dict(fwd, **{k: torch.stack([fwd[k], rev[k]]) for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")})
    args["initial_states"] = None
    got = run(bidirectional_kernels, args, average=True)
    assert got[0].dtype == torch.bfloat16 and got[2]["x"].dtype == torch.bfloat16
    assert_close(got, run(bidirectional_ssd_reference, args, cast=torch.Tensor.double, average=True), 2e-2, 2e-2)


# ---------------------------------------------------------------------------------------------
# dispatch and the vim2 mixer


def test_public_ops_dispatch_to_the_kernels(monkeypatch):
    """backend="triton" (argument or environment) runs the Triton forward and backward; auto on
    the CPU and backend="reference" never do. Same numbers as the reference."""
    calls = []
    for name in ("ssd_forward", "ssd_backward"):
        real = getattr(triton_op, name)
        monkeypatch.setattr(triton_op, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name),
                                                                                      _real(*a, **k))[1])
    args = inputs(1, 20, 2, 3, 1, 4, **VARIANTS["full"], seed=14)
    want = run(ssd_reference, args, cast=torch.Tensor.double)
    assert_close(run(ssd_kernels, args), want, FP32_TOL, GRAD_TOL)
    assert calls == ["ssd_forward", "ssd_backward"]
    calls.clear()
    run(ssd, args)  # auto, CPU tensors: the reference
    run(ssd, args, backend="reference")
    assert calls == []
    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", "triton")
    bi = dict(args, **{k: torch.stack([args[k], args[k] * 0.5]) for k in BIDIR_NAMES})
    assert_close(run(bidirectional_ssd, bi), run(bidirectional_ssd_reference, bi, cast=torch.Tensor.double),
                 FP32_TOL, GRAD_TOL)
    assert calls == ["ssd_forward", "ssd_backward"]


def test_vim2_mixer_through_the_kernels(monkeypatch):
    """The bidirectional Mamba-2 mixer (per-direction x, B, C; per-head D; no gate in the SSD)
    gives the same output and parameter gradients through the Triton kernels as through the
    reference (float32: 1e-4 relative; the conv runs its own Triton kernel too)."""
    from mambazoo.layers import BidirectionalMamba2Mixer

    torch.manual_seed(0)
    mixer = BidirectionalMamba2Mixer(16, d_state=8, headdim=8, chunk_size=8)  # 4 heads
    hidden = torch.randn(2, 21, 16)
    params = dict(mixer.named_parameters())
    results = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", backend)
        out = mixer(hidden)
        results[backend] = out, torch.autograd.grad((out * out.detach().cos()).sum(), list(params.values()))
    (out, grads), (ref_out, ref_grads) = results["triton"], results["reference"]
    assert rel_err(out, ref_out) < 1e-4
    for name, got, want in zip(params, grads, ref_grads):
        assert rel_err(got, want) < 1e-4, (name, rel_err(got, want))


def test_segment_plan_fills_one_wave():
    """Segments only for SMs that would idle: one 8-warp program fills an SM (d_state 128), so LM
    8k's 128 (batch, head) programs run unsegmented (the old plan, aiming at 4 programs per SM, cut
    them into 5 segments = 5 waves plus a state pass); DNA 131k's 8 are cut into as many segments
    as fill one wave, the 4-warp forward of inference into twice as many as the 8-warp backward."""
    cpu = torch.device("cpu")
    triton_op.CONFIG = None
    lm = triton_op._plan(4, 8192, 32, 64, 128, 1, True, cpu)
    assert (lm.n_segs, lm.seg_chunks) == (1, lm.n_chunks)
    dna = triton_op._plan(1, 131072, 8, 64, 128, 1, True, cpu)
    assert DEFAULT_SMS - 8 < 8 * dna.n_segs <= DEFAULT_SMS
    assert (dna.n_segs - 1) * dna.seg_chunks < dna.n_chunks <= dna.n_segs * dna.seg_chunks
    # The state passes: as many 4-warp programs as the SMs hold, whole ones per segment.
    assert lm.state_split == 1 and dna.state_split == triton_op.STATE_PROGRAMS_PER_SM
    assert dna.seg_chunks % dna.state_split == 0 and dna.n_state_segs == dna.n_segs * dna.state_split
    packed = [triton_op._plan(1, 8 * 4097, 12, 64, 64, 1, grad, cpu).n_segs for grad in (False, True)]
    assert packed == [2 * DEFAULT_SMS // 12, DEFAULT_SMS // 12]
    assert triton_op._plan(1, 300, 1, 64, 64, 1, False, cpu).n_segs == 5  # 10 chunks: at most half of them
    assert triton_op._plan(128, 197, 12, 64, 64, 2, True, cpu).n_segs == 1  # Vim-S 224: 3072 programs


# (bidirectional, CUDA-graph forward ms with / without the L1 prefetch), H200 2026-11-29,
# benchmarks/results/ssd_2026-11-29_s12c.json: Vim-S 224 / 1024 both layouts, then single Vim-S
# 1024, LM 8k, DNA 131k, packed (single Vim-S 224, 0.141 / 0.145, is within noise and left out).
PREFETCH_MEASURED = [(True, 0.401, 0.430), (True, 0.353, 0.388), (True, 0.609, 0.671), (True, 0.542, 0.609),
                     (False, 0.244, 0.223), (False, 0.711, 0.627), (False, 1.036, 0.900), (False, 0.202, 0.185)]


def test_prefetch_rule_picks_the_faster_measured_kernel():
    for bidirectional, with_prefetch, without in PREFETCH_MEASURED:
        assert triton_op.prefetch_default(bidirectional) == (with_prefetch < without)


def test_headdim_below_the_block_at_large_d_state():
    """A partly filled headdim block (headdim 24 in a 32-channel block) at d_state 128."""
    triton_op.CONFIG = triton_op.SSDConfig(chunk=16)
    args = inputs(1, 20, 2, 24, 1, 128, **VARIANTS["full"], seed=15)
    assert_close(run(ssd_kernels, args), run(ssd_reference, args, cast=torch.Tensor.double), FP32_TOL, GRAD_TOL)


@pytest.mark.parametrize("fields,name", [({"chunk": 24}, "chunk"), ({"block_p": 8}, "block_p"),
                                         ({"bwd_warps": 3}, "bwd_warps"), ({"segments": 0}, "segments"),
                                         ({"state_split": 0}, "state_split")])
def test_bad_tiling_is_named(fields, name):
    with pytest.raises(ValueError, match=name):
        triton_op.SSDConfig(**fields)
