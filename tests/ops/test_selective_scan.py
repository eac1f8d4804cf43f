"""The selective-scan reference against an independent float64 step-by-step recurrence."""
import pytest
import torch
import torch.nn.functional as F

from mambazoo_kernels import bidirectional_selective_scan, selective_scan
from mambazoo_kernels.selective_scan.reference import linear_scan, selective_scan_reference


def oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, h0=None):
    """h[t] = exp(delta A) h[t-1] + delta B u; y = C.h + D u; out = y silu(z), one step at a time, float64."""
    u, delta, A = u.double(), delta.double(), A.double()
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    def at(bc, t):
        bc = bc.double()
        if bc.dim() == 2:
            return bc.expand(batch, dim, -1)
        if bc.dim() == 3:
            return bc[:, None, :, t].expand(batch, dim, -1)
        return bc[..., t].repeat_interleave(dim // bc.shape[1], dim=1)

    h = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(length):
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * at(B, t)
        ys.append((h * at(C, t)).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def make_inputs(batch, dim, length, d_state, bc="grouped", groups=1, dtype=torch.float64,
                with_d=True, with_z=True, with_bias=True, with_state=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    shapes = {"constant": (dim, d_state), "token": (batch, d_state, length), "grouped": (batch, groups, d_state, length)}
    args = dict(
        u=rand(batch, dim, length),
        # Without softplus the caller passes positive step sizes, as a real model does.
        delta=rand(batch, dim, length) * 0.5 if with_bias else rand(batch, dim, length).abs() * 0.5,
        # Real Mamba A: negative, spread over two orders of magnitude like the S4D-real init.
        A=-torch.exp(rand(dim, d_state) * 1.5),
        B=rand(*shapes[bc]),
        C=rand(*shapes[bc]),
        D=rand(dim) if with_d else None,
        z=rand(batch, dim, length) if with_z else None,
        delta_bias=rand(dim) * 0.5 if with_bias else None,
        delta_softplus=with_bias,
        initial_state=rand(batch, dim, d_state) if with_state else None,
    )
    for k in ("u", "delta", "B", "C", "z"):
        if args[k] is not None:
            args[k] = args[k].to(dtype)
    return args


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


CASES = [
    # batch, dim, length, d_state, B/C form, groups
    (1, 4, 1, 4, "constant", 1),       # L = 1, batch 1
    (2, 6, 17, 8, "token", 1),         # odd length, one group as 3-D B/C
    (2, 6, 33, 4, "grouped", 3),       # groups
    (1, 8, 70, 16, "grouped", 2),      # crosses several chunks (chunk_size=16 below)
    (3, 5, 131, 3, "constant", 1),     # constant B/C, odd sizes everywhere
]


@pytest.mark.parametrize("batch,dim,length,d_state,bc,groups", CASES)
@pytest.mark.parametrize("variant", ["full", "bare", "state"])
def test_forward_and_grads_match_float64_recurrence(batch, dim, length, d_state, bc, groups, variant):
    args = make_inputs(batch, dim, length, d_state, bc, groups, with_d=variant != "bare",
                       with_z=variant != "bare", with_bias=variant != "bare", with_state=variant == "state")
    leaves = {k: v.requires_grad_() for k, v in args.items() if isinstance(v, torch.Tensor)}
    out, state = selective_scan_reference(**args, return_final_state=True, chunk_size=16)
    ref_out, ref_state = oracle(*(args[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                                delta_softplus=args["delta_softplus"], h0=args["initial_state"])
    # float64 throughout: only summation order differs, so agreement to ~1e-12 is expected.
    assert rel_err(out, ref_out) < 1e-10
    assert rel_err(state, ref_state) < 1e-10
    g = torch.Generator().manual_seed(1)
    grad_out, grad_state = torch.randn(out.shape, generator=g, dtype=out.dtype), torch.randn(state.shape, generator=g, dtype=state.dtype)
    names = list(leaves)
    got = torch.autograd.grad((out, state), [leaves[n] for n in names], (grad_out, grad_state))
    want = torch.autograd.grad((ref_out, ref_state), [leaves[n] for n in names], (grad_out, grad_state))
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) < 1e-9, name


def test_public_op_runs_reference_and_default_chunking():
    args = make_inputs(2, 6, 200, 8, "grouped", 2, dtype=torch.float32)
    out, state = selective_scan(**args, return_final_state=True)
    ref_out, ref_state = oracle(*(args[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                                delta_softplus=True)
    # fp32 accumulation over 200 steps: a few hundred ulps of float32 (1.2e-7) at most.
    assert out.dtype == torch.float32 and state.dtype == torch.float32
    assert rel_err(out, ref_out) < 1e-5 and rel_err(state, ref_state) < 1e-5


def test_long_sequence_is_stable():
    # 4096 steps with large deltas: decays underflow to exactly 0, nothing overflows or NaNs.
    args = make_inputs(1, 4, 4096, 16, "grouped", 1, dtype=torch.float32, with_state=True)
    args["delta"] = args["delta"] * 20
    out, state = selective_scan(**args, return_final_state=True)
    ref_out, ref_state = oracle(*(args[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                                delta_softplus=True, h0=args["initial_state"])
    assert torch.isfinite(out).all()
    assert rel_err(out, ref_out) < 1e-5 and rel_err(state, ref_state) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_keep_fp32_state(dtype):
    args = make_inputs(2, 8, 65, 16, "grouped", 2, dtype=dtype, with_state=True)
    out, state = selective_scan(**args, return_final_state=True)
    ref_out, ref_state = oracle(*(args[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                                delta_softplus=True, h0=args["initial_state"])
    assert out.dtype == dtype and state.dtype == torch.float32
    # The oracle sees the same rounded inputs, so the only error is rounding the output once to
    # dtype: 2^-9 (bf16) or 2^-12 (fp16) relative per element; the state is never rounded.
    assert rel_err(out, ref_out) < (4e-3 if dtype == torch.bfloat16 else 5e-4)
    assert rel_err(state, ref_state) < 1e-5


def test_gradcheck_tiny():
    args = make_inputs(1, 2, 5, 3, "grouped", 1, with_state=True)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    tensors = [args[n].requires_grad_() for n in names]

    def fn(*ts):
        kw = dict(zip(names, ts))
        return selective_scan_reference(**kw, delta_softplus=True, return_final_state=True, chunk_size=2)

    assert torch.autograd.gradcheck(fn, tensors)


def test_linear_scan_matches_loop():
    g = torch.Generator().manual_seed(3)
    decay = torch.rand(3, 37, 2, generator=g, dtype=torch.float64)
    x = torch.randn(3, 37, 2, generator=g, dtype=torch.float64)
    h, cum = linear_scan(decay, x)
    state, prod = torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64)
    for t in range(37):
        state = decay[:, t] * state + x[:, t]
        prod = prod * decay[:, t]
        torch.testing.assert_close(h[:, t], state, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cum[:, t], prod, rtol=1e-12, atol=1e-12)


def stack_directions(a, b):
    return {k: (torch.stack([a[k], b[k]]) if a[k] is not None and k != "z" else a[k])
            for k in a if k != "delta_softplus"}


@pytest.mark.parametrize("bc,groups,average", [("grouped", 2, True), ("constant", 1, False), ("token", 1, True)])
def test_bidirectional_equals_two_scans_on_reversed_inputs(bc, groups, average):
    fwd = make_inputs(2, 6, 23, 8, bc, groups, with_state=True, seed=10)
    rev = make_inputs(2, 6, 23, 8, bc, groups, with_state=True, seed=11)
    stacked = stack_directions(fwd, rev)
    leaves = [v.requires_grad_() for v in stacked.values() if isinstance(v, torch.Tensor)]
    out, states = bidirectional_selective_scan(**stacked, delta_softplus=True, return_final_state=True, average=average)

    flip = lambda t: t.flip(-1)

    def direction(i, order):
        keep_time = lambda k: stacked[k][i] if bc == "constant" else order(stacked[k][i])
        return selective_scan(
            order(stacked["u"][i]), order(stacked["delta"][i]), stacked["A"][i], keep_time("B"), keep_time("C"),
            stacked["D"][i], None, stacked["delta_bias"][i], True, stacked["initial_state"][i], True)

    y_f, s_f = direction(0, lambda t: t)
    y_r, s_r = direction(1, flip)
    expected = (y_f + flip(y_r)) * F.silu(stacked["z"]) * (0.5 if average else 1.0)
    assert rel_err(out, expected) < 1e-12
    assert rel_err(states, torch.stack([s_f, s_r])) < 1e-12
    grads = torch.autograd.grad(out.sum(), leaves)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def valid_args():
    return make_inputs(2, 6, 9, 4, "grouped", 2, dtype=torch.float32, with_state=True)


@pytest.mark.parametrize("change,error,match", [
    (dict(u=torch.randn(6, 9)), ValueError, r"u must have shape \(batch, dim, length\)"),
    (dict(delta=torch.randn(2, 6, 8)), ValueError, r"delta must have shape"),
    (dict(A=torch.randn(5, 4)), ValueError, r"A must have shape \(dim, d_state\) = \(6, \*\)"),
    (dict(A=torch.randn(6, 300)), ValueError, r"d_state must be in"),
    (dict(B=torch.randn(2, 4, 4, 9)), ValueError, r"B: groups \(4\) must divide dim \(6\)"),
    (dict(C=torch.randn(2, 2, 5, 9)), ValueError, r"C must have shape"),
    (dict(B=torch.randn(6, 5)), ValueError, r"B must have shape \(dim, d_state\)"),
    (dict(D=torch.randn(5)), ValueError, r"D must have shape \(dim,\)"),
    (dict(z=torch.randn(2, 6, 10)), ValueError, r"z must have shape"),
    (dict(delta_bias=torch.randn(2, 6)), ValueError, r"delta_bias must have shape"),
    (dict(initial_state=torch.randn(2, 6, 5)), ValueError, r"initial_state must have shape \(batch, dim, d_state\)"),
    (dict(u=torch.randint(0, 3, (2, 6, 9))), TypeError, r"u must have dtype"),
    (dict(A=torch.randn(6, 4, dtype=torch.complex64)), TypeError, r"A must have dtype"),
    (dict(u=[[1.0]]), TypeError, r"u must be a torch.Tensor"),
    (dict(u=torch.randn(2, 6, 0), delta=torch.randn(2, 6, 0)), ValueError, r"non-empty"),
    (dict(D=torch.randn(6, device="meta")), ValueError, r"D must be on cpu"),
])
def test_bad_input_names_the_argument(change, error, match):
    with pytest.raises(error, match=match):
        selective_scan(**dict(valid_args(), **change))


def test_bad_backend_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**valid_args(), backend="cuda")
    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", "fast")
    with pytest.raises(ValueError, match="MAMBAZOO_KERNEL_BACKEND must be one of"):
        selective_scan(**valid_args())


def test_bidirectional_bad_input_names_the_argument():
    stacked = stack_directions(valid_args(), valid_args())
    with pytest.raises(ValueError, match=r"u must have shape \(2, batch, dim, length\)"):
        bidirectional_selective_scan(**dict(stacked, u=stacked["u"][0]))
    with pytest.raises(ValueError, match=r"A must have shape \(2, dim, d_state\)"):
        bidirectional_selective_scan(**dict(stacked, A=stacked["A"][0]))


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors \(got cpu\)"):
        selective_scan(**valid_args(), backend="triton")
