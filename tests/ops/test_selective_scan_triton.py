"""The Triton selective-scan kernels, run on the CPU by Triton's interpreter, against float64 oracles.

The interpreter executes the real kernel code (the same source the GPU compiles) with numpy, so
shapes stay tiny. The backward's chunk is 16 steps for these lengths (see
``triton_op.default_config``) and the forward's tile 8, so lengths 17, 33 and 50 cross one to
three chunk boundaries; ``segments`` forces the long-sequence path (state pass + combine + full
pass) on short sequences. Gradient tests run both backward kernels (``bwd_kind``: the
sequential ``seq`` kernel (the default), whose sub-tiles of 2 steps split every chunk, and the
time-parallel ``chunk`` kernel).

Tolerances: with float32 inputs the kernels differ from float64 only by float32 rounding in
exp2 / scans / sums over at most a few hundred terms: ~1e-7 relative in practice; we assert 2e-5
(forward) and 1e-4 (gradients, which sum more terms). With bf16 inputs the oracle sees the same
rounded inputs, so the error is the final rounding of each output to bf16 (2^-9 relative per
element, ~2e-3 as a norm ratio): we assert 1e-2.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel modules are imported

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mambazoo_kernels import bidirectional_selective_scan, selective_scan, to_channel_last
from mambazoo_kernels._backend import DEFAULT_SMS
from mambazoo_kernels.selective_scan import triton_op

from test_selective_scan import make_inputs, oracle, rel_err, stack_directions

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


@pytest.fixture
def config(monkeypatch):
    """Set the kernels' tiling (e.g. force segments) for one test."""

    def set_config(**kwargs):
        base = triton_op.default_config(kwargs.pop("length"))
        monkeypatch.setattr(triton_op, "CONFIG", triton_op.ScanConfig(**{**base.__dict__, **kwargs}))

    return set_config


@pytest.fixture(params=triton_op.BWD_KINDS)
def bwd_kind(request, monkeypatch):
    """Run the test with each backward kernel (what ``MAMBAZOO_SCAN_BWD`` selects); the other
    kernel's factory fails if called."""
    monkeypatch.setattr(triton_op, "BWD_KIND", request.param)
    other = "chunk_backward_kernel" if request.param == "seq" else "seq_backward_kernel"

    def refuse(*args):
        raise AssertionError(f"{other} used with bwd_kind {request.param}")

    monkeypatch.setattr(triton_op, other, refuse)
    return request.param


def leaves_of(args):
    return {k: v.requires_grad_() for k, v in args.items() if isinstance(v, torch.Tensor)}


def oracle_of(args):
    return oracle(*(args[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                  delta_softplus=args["delta_softplus"], h0=args["initial_state"])


def check_against_oracle(args, fwd_tol, grad_tol):
    leaves = leaves_of(args)
    out, state = selective_scan(**args, return_final_state=True, backend="triton")
    ref_out, ref_state = oracle_of(args)
    assert out.dtype == args["u"].dtype and state.dtype == torch.float32
    assert rel_err(out, ref_out) < fwd_tol
    assert rel_err(state, ref_state) < fwd_tol
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(out.shape, generator=g).to(out.dtype)
    grad_state = torch.randn(state.shape, generator=g)
    names = list(leaves)
    got = torch.autograd.grad((out, state), [leaves[n] for n in names], (grad_out, grad_state))
    want = torch.autograd.grad((ref_out, ref_state), [leaves[n] for n in names], (grad_out.double(), grad_state.double()))
    for name, a, b in zip(names, got, want):
        assert a.dtype == leaves[name].dtype, name
        assert rel_err(a, b) < grad_tol, (name, rel_err(a, b))


CASES = [
    # batch, dim, length, d_state, B/C form, groups, variant
    (1, 4, 1, 4, "constant", 1, "full"),    # L = 1, batch 1, constant B/C
    (2, 6, 17, 4, "token", 1, "bare"),      # odd length across one chunk boundary; no D/z/bias/softplus
    (2, 6, 33, 2, "grouped", 3, "state"),   # 3 groups of 2 channels, initial + final state
    (1, 5, 50, 3, "grouped", 1, "state"),   # odd dim and d_state, 4 chunks
]


@pytest.mark.parametrize("batch,dim,length,d_state,bc,groups,variant", CASES)
def test_forward_and_grads_match_float64_oracle(batch, dim, length, d_state, bc, groups, variant, bwd_kind):
    args = make_inputs(batch, dim, length, d_state, bc, groups, dtype=torch.float32, with_d=variant != "bare",
                       with_z=variant != "bare", with_bias=variant != "bare", with_state=variant == "state")
    check_against_oracle(args, 2e-5, 1e-4)


def test_segmented_long_sequence_path(config, bwd_kind):
    # Three segments of two chunks: state pass, combine, full pass; and the same in the backward.
    args = make_inputs(1, 4, 90, 4, "grouped", 2, dtype=torch.float32, with_state=True, seed=3)
    config(length=90, segments=3)
    check_against_oracle(args, 2e-5, 1e-4)


@pytest.mark.parametrize("segments,layout,ahead", [
    (None, "time", True), (3, "time", True), (3, "channel_last", True), (None, "channel_last", False)])
def test_loads_ahead_or_not_match_float64_oracle(config, segments, layout, ahead):
    # The lookaheads against each layout's default: the forward's B/C one step and z one tile
    # ahead, the backward's sub-tiles one sub-tile ahead, across tiles, chunks and segment ends.
    args = make_inputs(2, 6, 50, 4, "grouped", 3, dtype=torch.float32, with_state=True, seed=5)
    if layout == "channel_last":
        args.update({name: to_channel_last(args[name]) for name in ("u", "delta", "z")})
    config(length=50, bc_ahead=ahead, z_ahead=ahead, bwd_ahead=ahead, segments=segments)
    check_against_oracle(args, 2e-5, 1e-4)


# H200 measurements (NOTES.md, stop 11) of the fused bidirectional channel-last forward: (programs,
# ms with the 128-register cap, ms without) at Vim-S 224 / 448 px / 8k and (batch, 768, 4097) for
# batch 8, 12, 16, 24, 32.
CAP_MEASURED = [(6144, 0.530, 0.668), (1536, 0.633, 0.931), (512, 2.860, 3.444), (384, 1.061, 1.341),
                (576, 2.898, 2.180), (768, 3.028, 2.257), (1152, 3.181, 4.631), (1536, 3.283, 4.794)]


def test_register_cap_rule_picks_the_faster_measured_kernel():
    for programs, capped, uncapped in CAP_MEASURED:
        cap = triton_op.fwd_maxnreg_default(True, True, False, programs, DEFAULT_SMS)
        assert (cap == 128) == (capped < uncapped), (programs, cap)
    # Only the bidirectional channel-last kernel without the B/C lookahead is capped.
    for cl, bidir, ahead in ((False, True, False), (True, False, False), (True, True, True)):
        assert triton_op.fwd_maxnreg_default(cl, bidir, ahead, 6144, DEFAULT_SMS) is None


@pytest.mark.parametrize("batch,dim,length,segmented", [
    (128, 768, 197, False),  # Vim-S 224: 3,072 one-warp programs, about 3 waves already
    (32, 768, 785, False),
    (8, 768, 4097, True),  # Vim-S 1024: 192 programs
    (1, 512, 131072, True),  # DNA 131k: 16 programs
])
def test_segment_plan_fills_whole_waves(batch, dim, length, segmented):
    # The plan's cost model: waves x chunks per segment, segmenting costs a state pass. A segmented
    # plan must not leave a short last wave (the first plan made second waves of 24-56 programs).
    cfg = triton_op.default_config(length)
    n_chunks = -(-length // cfg.chunk)
    block_d = cfg.block_d(False)
    n_segs, seg_chunks = triton_op._segment_plan(cfg, batch, dim, 1, n_chunks, block_d, torch.device("cpu"))
    assert (n_segs > 1) == segmented and (n_segs - 1) * seg_chunks < n_chunks <= n_segs * seg_chunks
    if segmented:
        slots = DEFAULT_SMS * triton_op.WARPS_PER_SM // (block_d // 32)
        programs = batch * (dim // block_d) * n_segs
        assert programs % slots == 0 or programs % slots > slots * 3 // 4, (programs, slots)


def test_sequential_backward_scratch_has_a_slot_per_program(config, monkeypatch):
    # The programs of different segments run at the same time on a GPU (the interpreter runs them
    # one after another, so a shared scratch slot would never show here; it did on the H200): the
    # sub-tile scratch (argument 12 of the launch) must give every grid program its own slot.
    config(length=90, segments=3, bwd_kind="seq")
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((grid, args[12].shape))

    monkeypatch.setattr(triton_op, "seq_backward_kernel", lambda *args: Recorder())
    args = make_inputs(2, 4, 90, 4, "token", dtype=torch.float32)
    leaves = {k: v.requires_grad_() for k, v in args.items() if k in ("u", "delta")}
    selective_scan(**args, backend="triton").sum().backward()
    assert launches and leaves["u"].grad is not None
    for grid, scratch in launches:
        assert grid[2] == 3 and scratch[0] == grid[0] * grid[1] * grid[2], (grid, scratch)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_tiles_smaller_than_backward_chunks(bidirectional, config, bwd_kind):
    # The forward walks tiles of 4 steps and stores checkpoints only on the backward's 32-step
    # chunk edges (every 8th tile; L = 75 pads the last chunk), with two segments; the sequential
    # backward splits each chunk into 4 sub-tiles of 8 steps.
    config(length=75, chunk=32, fwd_tile=4, bwd_vec=4, bwd_tile=8, segments=2)
    if not bidirectional:
        args = make_inputs(1, 4, 75, 4, "grouped", 2, dtype=torch.float32, with_state=True, seed=12)
        check_against_oracle(args, 2e-5, 1e-4)
        return
    stacked = stack_directions(make_inputs(1, 4, 75, 4, "token", dtype=torch.float32, with_state=True, seed=13),
                               make_inputs(1, 4, 75, 4, "token", dtype=torch.float32, with_state=True, seed=14))
    leaves = leaves_of(stacked)
    out = bidirectional_selective_scan(**stacked, delta_softplus=True, backend="triton")
    ref = bidirectional_selective_scan(**{k: v.double() for k, v in stacked.items()}, delta_softplus=True,
                                       backend="reference")
    assert rel_err(out, ref) < 2e-5
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(out, list(leaves.values()), grad_out)
    want = torch.autograd.grad(ref, list(leaves.values()), grad_out.double())
    for name, a, b in zip(leaves, got, want):
        assert rel_err(a, b) < 1e-4, (name, rel_err(a, b))


def test_constant_B_with_per_token_C(bwd_kind):
    args = make_inputs(2, 4, 20, 3, "grouped", 2, dtype=torch.float32, with_state=True, seed=4)
    args["B"] = make_inputs(2, 4, 20, 3, "constant", dtype=torch.float32, seed=5)["B"]
    check_against_oracle(args, 2e-5, 1e-4)


def test_bf16_inputs_keep_fp32_state(bwd_kind):
    args = make_inputs(2, 4, 37, 4, "grouped", 2, dtype=torch.bfloat16, with_state=True, seed=6)
    check_against_oracle(args, 1e-2, 1e-2)


def test_fp16_forward():
    args = make_inputs(1, 4, 21, 4, "token", 1, dtype=torch.float16, seed=7)
    out = selective_scan(**args, backend="triton")
    assert out.dtype == torch.float16
    assert rel_err(out, oracle_of(args)[0]) < 2e-3  # 2^-11 rounding of the output


def test_fp16_gradients(bwd_kind):
    # fp16 gradients are the fp32 results rounded to fp16 (2^-11 relative per element).
    args = make_inputs(1, 4, 21, 4, "token", 1, dtype=torch.float16, with_state=True, seed=9)
    check_against_oracle(args, 2e-3, 2e-3)


def test_backward_is_deterministic(bwd_kind):
    args = make_inputs(1, 4, 40, 2, "grouped", 1, dtype=torch.float32, with_state=True, seed=8)
    leaves = leaves_of(args)

    def grads():
        out, state = selective_scan(**args, return_final_state=True, backend="triton")
        return torch.autograd.grad((out.square().sum() + state.sum()), list(leaves.values()))

    assert all(torch.equal(a, b) for a, b in zip(grads(), grads()))


def flip(t):
    return t.flip(-1)


@pytest.mark.parametrize("bc,groups,average,segments", [
    ("grouped", 2, True, None), ("constant", 1, False, None), ("token", 1, True, 2),
])
def test_bidirectional_matches_two_reversed_scans(bc, groups, average, segments, config, bwd_kind):
    length = 35
    if segments:
        config(length=length, segments=segments)
    fwd = make_inputs(2, 4, length, 2, bc, groups, dtype=torch.float32, with_state=True, seed=10)
    rev = make_inputs(2, 4, length, 2, bc, groups, dtype=torch.float32, with_state=True, seed=11)
    stacked = stack_directions(fwd, rev)
    leaves = leaves_of(stacked)
    out, states = bidirectional_selective_scan(**stacked, delta_softplus=True, return_final_state=True,
                                               average=average, backend="triton")

    # Two unidirectional Triton scans, the second on flipped inputs, flipped back.
    def direction(i, order):
        time = (lambda k: stacked[k][i]) if bc == "constant" else (lambda k: order(stacked[k][i]))
        return selective_scan(order(stacked["u"][i]), order(stacked["delta"][i]), stacked["A"][i], time("B"), time("C"),
                              stacked["D"][i], None, stacked["delta_bias"][i], True, stacked["initial_state"][i], True,
                              backend="triton")

    y_f, s_f = direction(0, lambda t: t)
    y_r, s_r = direction(1, flip)
    two_scans = (y_f + flip(y_r)) * F.silu(stacked["z"]) * (0.5 if average else 1.0)
    assert rel_err(out, two_scans) < 2e-6
    assert rel_err(states, torch.stack([s_f, s_r])) < 2e-6

    # And both against float64 oracles, gradients included.
    def oracle_direction(i, order):
        time = (lambda k: stacked[k][i]) if bc == "constant" else (lambda k: order(stacked[k][i]))
        return oracle(order(stacked["u"][i]), order(stacked["delta"][i]), stacked["A"][i], time("B"), time("C"),
                      stacked["D"][i], None, stacked["delta_bias"][i], True, stacked["initial_state"][i])

    o_f, os_f = oracle_direction(0, lambda t: t)
    o_r, os_r = oracle_direction(1, flip)
    ref = (o_f + flip(o_r)) * F.silu(stacked["z"].double()) * (0.5 if average else 1.0)
    ref_states = torch.stack([os_f, os_r])
    assert rel_err(out, ref) < 2e-5 and rel_err(states, ref_states) < 2e-5
    g = torch.Generator().manual_seed(2)
    grad_out, grad_states = torch.randn(out.shape, generator=g), torch.randn(states.shape, generator=g)
    names = list(leaves)
    got = torch.autograd.grad((out, states), [leaves[n] for n in names], (grad_out, grad_states))
    want = torch.autograd.grad((ref, ref_states), [leaves[n] for n in names], (grad_out.double(), grad_states.double()))
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) < 1e-4, (name, rel_err(a, b))


@pytest.mark.parametrize("bidirectional,bc_ahead,segments,bwd_kind", [
    (False, False, None, "seq"), (False, True, 3, "seq"), (True, False, 3, "seq"), (True, True, None, "seq"),
    (True, False, None, "chunk"),
])
def test_channel_last_inputs_match_float64_oracle(bidirectional, bc_ahead, segments, bwd_kind, config):
    # u/delta/z as views of (batch, L, dim) memory (the mixers' layout): read in place by the
    # channel-last kernels (forward and sequential backward; the chunk backward gets contiguous
    # copies); output and their gradients come back channel-last.
    length = 37
    config(length=length, bc_ahead=bc_ahead, segments=segments, bwd_kind=bwd_kind)
    fwd = make_inputs(2, 6, length, 4, "grouped", 2, dtype=torch.float32, with_state=True, seed=12)
    if bidirectional:
        rev = make_inputs(2, 6, length, 4, "grouped", 2, dtype=torch.float32, with_state=True, seed=13)
        args = stack_directions(fwd, rev)
    else:
        args = {k: v for k, v in fwd.items() if k != "delta_softplus"}
    args.update({name: to_channel_last(args[name]) for name in ("u", "delta", "z")})
    leaves = leaves_of(args)
    op = bidirectional_selective_scan if bidirectional else selective_scan
    out, states = op(**args, delta_softplus=True, return_final_state=True, backend="triton")
    ref_out, ref_states = op(**{k: v.double() for k, v in args.items()}, delta_softplus=True,
                             return_final_state=True, backend="reference")
    assert out.stride(-2) == 1
    assert rel_err(out, ref_out) < 2e-5 and rel_err(states, ref_states) < 2e-5
    g = torch.Generator().manual_seed(2)
    grad_out, grad_states = torch.randn(out.shape, generator=g), torch.randn(states.shape, generator=g)
    names = list(leaves)
    got = torch.autograd.grad((out, states), [leaves[n] for n in names], (grad_out, grad_states))
    for name, grad in zip(names, got):
        if name in ("u", "delta", "z"):
            assert grad.stride(-2) == 1, name
    want = torch.autograd.grad((ref_out, ref_states), [leaves[n] for n in names],
                               (grad_out.double(), grad_states.double()))
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) < 1e-4, (name, rel_err(a, b))


@pytest.mark.parametrize("dim,channel_last,segments,bwd_sum", [
    (6, False, None, "transpose"), (40, True, 2, "transpose"), (40, False, None, "shuffle"),
])
def test_channel_sums_match_float64_oracle(dim, channel_last, segments, bwd_sum, config):
    # ScanConfig.bwd_sum: dB/dC summed over a program's channels (8 or 32 here) by halving the
    # channel axis ("transpose", the default) or by shuffle trees; partial last block at dim 6 / 40.
    length = 29
    config(length=length, bwd_sum=bwd_sum, segments=segments, bwd_kind="seq")
    args = make_inputs(2, dim, length, 4, "token", 1, dtype=torch.float32, with_state=True, seed=14)
    args = {k: v for k, v in args.items() if k != "delta_softplus"}
    if channel_last:
        args.update({name: to_channel_last(args[name]) for name in ("u", "delta", "z")})
    check_against_oracle({**args, "delta_softplus": True}, 2e-5, 1e-4)


TRANSPOSED_CHECK = """
import os, sys, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
from test_selective_scan import make_inputs, oracle, rel_err, stack_directions
from mambazoo_kernels import bidirectional_selective_scan, selective_scan
from mambazoo_kernels.selective_scan import triton_fwd
assert triton_fwd.TRANSPOSED
args = make_inputs(2, 4, 37, 3, "grouped", 2, dtype=torch.float32, with_state=True)
leaves = [v.requires_grad_() for v in args.values() if isinstance(v, torch.Tensor)]
out, state = selective_scan(**args, return_final_state=True, backend="triton")
ref, ref_state = oracle(*(args[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                        delta_softplus=True, h0=args["initial_state"])
assert rel_err(out, ref) < 2e-5 and rel_err(state, ref_state) < 2e-5
for a, b in zip(torch.autograd.grad(out.sum() + state.sum(), leaves),
                torch.autograd.grad(ref.sum() + ref_state.sum(), leaves)):
    assert rel_err(a, b) < 1e-4
st = stack_directions(make_inputs(1, 4, 20, 2, "token", seed=1, dtype=torch.float32),
                      make_inputs(1, 4, 20, 2, "token", seed=2, dtype=torch.float32))
fused = bidirectional_selective_scan(**st, delta_softplus=True, backend="triton")
assert rel_err(fused, bidirectional_selective_scan(**st, delta_softplus=True, backend="reference")) < 2e-5
"""


def test_transposed_piece_form_used_with_triton_3_6(tmp_path):
    # Triton 3.6 (the GPU image) gets tiles loaded as transposed pieces (triton_fwd.TRANSPOSED);
    # the interpreter checks that form's arithmetic in a fresh process.
    script = tmp_path / "check.py"
    script.write_text(TRANSPOSED_CHECK)
    env = {**os.environ, "TRITON_INTERPRET": "1", "MAMBAZOO_TRANSPOSED_PIECES": "1"}
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_selective_scan.py")
    done = subprocess.run([sys.executable, str(script), here], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_backward_kind_is_validated(monkeypatch):
    with pytest.raises(ValueError, match="bwd_kind must be one of"):
        triton_op.ScanConfig(bwd_kind="fast")
    monkeypatch.setenv("MAMBAZOO_SCAN_BWD", "fast")
    with pytest.raises(ValueError, match="MAMBAZOO_SCAN_BWD must be one of"):
        triton_op._bwd_kind_from_env()
    monkeypatch.setenv("MAMBAZOO_SCAN_BWD", "seq")
    assert triton_op._bwd_kind_from_env() == "seq"
    monkeypatch.delenv("MAMBAZOO_SCAN_BWD")
    assert triton_op._bwd_kind_from_env() == "seq"


def test_auto_backend_keeps_cpu_tensors_on_the_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(triton_op, "scan_forward", lambda *a, **k: calls.append(1))
    selective_scan(**make_inputs(1, 2, 5, 2, "token", dtype=torch.float32))
    assert not calls


def test_float64_is_refused_by_an_explicit_triton_backend():
    with pytest.raises(NotImplementedError, match="float64"):
        selective_scan(**make_inputs(1, 2, 5, 2, "token"), backend="triton")


def test_importing_the_package_imports_no_triton():
    code = "import sys, mambazoo_kernels; sys.exit('triton' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "0"}).returncode == 0


@pytest.mark.parametrize("fields,name", [({"bwd_sum": "tree"}, "bwd_sum"), ({"fwd_maxnreg": 300}, "fwd_maxnreg"),
                                         ({"fwd_maxnreg": -1}, "fwd_maxnreg")])
def test_bad_tiling_is_named(fields, name):
    with pytest.raises(ValueError, match=name):
        triton_op.ScanConfig(**fields)
