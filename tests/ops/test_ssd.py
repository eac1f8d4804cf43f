"""The SSD (Mamba-2) references, single and bidirectional, against an independent float64
step-by-step recurrence."""
import math

import pytest
import torch
import torch.nn.functional as F

from mambazoo_kernels import bidirectional_ssd, ssd
from mambazoo_kernels.ssd.reference import segment_sum

GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def oracle(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
           dt_limit=(0.0, math.inf), initial_states=None, seq_idx=None, reverse=False):
    """s[t] = exp(dt A) s[t-1] + dt B x; y = C.s + D x; out = y silu(z), one token at a time, float64.

    A change of seq_idx between t-1 and t zeroes s[t-1]. Returns (out, state after the last token).
    With ``reverse`` the tokens are visited from the last to the first (``t-1`` above is then the
    token after ``t``), and the returned state is the one after the first token.
    """
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    batch, length, heads, headdim = x.shape
    per_group = heads // B.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = torch.log1p(torch.exp(dt))
    if tuple(dt_limit) != (0.0, math.inf):
        dt = dt.clamp(dt_limit[0], dt_limit[1])
    B_head = B.repeat_interleave(per_group, dim=2)  # (batch, length, heads, d_state)
    C_head = C.repeat_interleave(per_group, dim=2)
    if initial_states is None:
        s = torch.zeros(batch, heads, headdim, B.shape[-1], dtype=torch.float64)
    else:
        s = initial_states.double()
    ys = [None] * length
    order = range(length - 1, -1, -1) if reverse else range(length)
    previous = None
    for t in order:
        if seq_idx is not None and previous is not None:
            same = (seq_idx[:, t] == seq_idx[:, previous]).double()
            s = s * same[:, None, None, None]
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        s = decay * s + (dt[:, t, :, None] * x[:, t])[..., None] * B_head[:, t, :, None, :]
        ys[t] = (s * C_head[:, t, :, None, :]).sum(-1)
        previous = t
    y = torch.stack(ys, dim=1)
    if D is not None:
        D = D.double()
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * z.double() * torch.sigmoid(z.double())
    return y, s


def make_seq_idx(batch, length, chunk_size, generator):
    """Non-decreasing ids with gaps, one boundary on a chunk edge when there is one, others random."""
    starts = torch.rand(batch, length, generator=generator) < 0.15
    if chunk_size < length:
        starts[:, chunk_size] = True
    starts[:, 0] = False
    return (3 * starts.long().cumsum(1) + 5).to(torch.int32)


def make_inputs(batch, length, heads, headdim, groups, d_state, chunk_size, *, D=None, z=False,
                bias=False, limit=False, state=False, seq=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    positive = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64) + 0.05
    args = dict(
        x=rand(batch, length, heads, headdim),
        # Raw dt goes through softplus when there is a bias; otherwise it is a positive step, as a model passes it.
        dt=rand(batch, length, heads) if bias else positive(batch, length, heads),
        # Negative A spread over about an order of magnitude (Mamba-2 initialises A in [-16, -1]).
        A=-torch.exp(rand(heads) * 0.8),
        B=rand(batch, length, groups, d_state),
        C=rand(batch, length, groups, d_state),
        chunk_size=chunk_size,
        D={None: None, "head": rand(heads), "channel": rand(heads, headdim)}[D],
        z=rand(batch, length, heads, headdim) if z else None,
        dt_bias=rand(heads) * 0.5 if bias else None,
        dt_softplus=bias,
        # Chosen so that a good share of softplus(dt + bias) values fall on each side.
        dt_limit=(0.3, 1.0) if limit else (0.0, math.inf),
        initial_states=rand(batch, heads, headdim, d_state) if state else None,
        seq_idx=make_seq_idx(batch, length, chunk_size, g) if seq else None,
    )
    for k in ("x", "dt", "B", "C", "z"):
        if args[k] is not None:
            args[k] = args[k].to(dtype)
    return args


def rel_err(value, ref):
    """Relative RMSE: ||value - ref|| / ||ref||."""
    return ((value.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def run_both(args, op=ssd, op_oracle=oracle, seed=1):
    """Outputs, final states and input gradients of ``op`` (``ssd`` or ``bidirectional_ssd``) and of
    its oracle, for one random cotangent."""
    oracle_args = {k: v for k, v in args.items() if k != "chunk_size"}
    results = []
    for fn, kwargs in ((op, dict(args, return_final_states=True)), (op_oracle, oracle_args)):
        leaves = {k: kwargs[k].detach().clone().requires_grad_() for k in GRAD_NAMES if kwargs.get(k) is not None}
        out, final = fn(**{**kwargs, **leaves})
        g = torch.Generator().manual_seed(seed)
        loss = (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum()
        loss = loss + (final.double() * torch.randn(final.shape, generator=g, dtype=torch.float64)).sum()
        loss.backward()
        results.append((out.detach(), final.detach(), {k: v.grad for k, v in leaves.items()}))
    return results


def assert_close_to_oracle(results, out_tol, final_tol, grad_tol):
    """``run_both``'s two results agree (relative RMSE): output, final states, every input gradient."""
    (out, final, grads), (ref_out, ref_final, ref_grads) = results
    assert rel_err(out, ref_out) < out_tol
    assert rel_err(final, ref_final) < final_tol
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert rel_err(grads[name], ref_grads[name]) < grad_tol, name


CASES = [
    # batch, length, heads, headdim, groups, d_state, chunk_size
    (1, 1, 2, 3, 1, 4, 4),     # L = 1, batch 1
    (2, 16, 2, 4, 1, 4, 16),   # exactly one chunk
    (2, 24, 4, 3, 2, 5, 8),    # several whole chunks, groups > 1
    (2, 29, 4, 3, 2, 5, 8),    # ragged last chunk
    (1, 23, 6, 2, 3, 3, 64),   # chunk longer than the sequence, 3 groups
    (3, 13, 4, 2, 4, 6, 1),    # chunk of one token, one head per group
]
VARIANTS = {
    "bare": dict(),
    "full": dict(D="head", z=True, bias=True, state=True),
    "channel_D_limit": dict(D="channel", bias=True, limit=True),
    "packed": dict(D="head", z=True, bias=True, state=True, seq=True),
}


@pytest.mark.parametrize("batch,length,heads,headdim,groups,d_state,chunk_size", CASES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_recurrence_float64(batch, length, heads, headdim, groups, d_state, chunk_size, variant):
    args = make_inputs(batch, length, heads, headdim, groups, d_state, chunk_size, **VARIANTS[variant])
    results = run_both(args)
    out, final, _ = results[0]
    assert out.dtype == final.dtype == torch.float64
    # Both sides are float64 and sum the same terms in another order: only rounding separates them
    # (~1e-16 per operation); the gradients go through a few more exp/log-sum steps, hence 1e-9.
    assert_close_to_oracle(results, 1e-12, 1e-12, 1e-9)


def test_dt_limit_is_active():
    """The limit in the grid really clamps: some steps fall below, some above, and it changes the output."""
    args = make_inputs(2, 29, 4, 3, 2, 5, 8, bias=True, limit=True)
    raw = F.softplus(args["dt"] + args["dt_bias"])
    assert (raw < 0.3).any() and (raw > 1.0).any()
    assert rel_err(ssd(**args), ssd(**dict(args, dt_limit=(0.0, math.inf)))) > 1e-3


@pytest.mark.parametrize("chunk_size", [4, 8, 32])
def test_state_does_not_cross_sequences(chunk_size):
    """A packed row equals each of its sequences run alone (the initial state only for the first)."""
    lengths = [8, 11, 1, 10]  # boundaries at 8 (a chunk edge for 4 and 8), 19, 20
    args = make_inputs(1, sum(lengths), 4, 3, 2, 5, chunk_size, D="channel", z=True, bias=True, state=True)
    args["seq_idx"] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]
    out, final = ssd(**args, return_final_states=True)
    start = 0
    for i, n in enumerate(lengths):
        piece = {k: args[k][:, start:start + n] for k in ("x", "dt", "B", "C", "z")}
        alone, alone_final = ssd(**{**args, **piece, "seq_idx": None,
                                    "initial_states": args["initial_states"] if i == 0 else None},
                                 return_final_states=True)
        # Float64 on both sides: only rounding differs.
        assert rel_err(out[:, start:start + n], alone) < 1e-12, i
        start += n
    assert rel_err(final, alone_final) < 1e-12


def test_packed_seq_idx_int64_and_int32_agree():
    args = make_inputs(2, 29, 4, 3, 2, 5, 8, D="head", bias=True, seq=True)
    assert torch.equal(ssd(**args), ssd(**dict(args, seq_idx=args["seq_idx"].long())))


@pytest.mark.parametrize("seq", [False, True])
def test_gradcheck(seq):
    args = make_inputs(1, 5, 2, 2, 2 if seq else 1, 2, 2, D="channel" if seq else "head", z=True, bias=True,
                       state=True, seq=False)
    if seq:
        args["seq_idx"] = torch.tensor([[0, 1, 1, 1, 2]])  # starts inside a chunk and on a chunk edge
    names = [k for k in GRAD_NAMES if args[k] is not None]

    def fn(*tensors):
        return ssd(**{**args, **dict(zip(names, tensors))}, return_final_states=True)

    inputs = tuple(args[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    args = make_inputs(2, 70, 4, 8, 2, 16, 16, D="head", z=True, bias=True, state=True, seq=True, dtype=dtype)
    args["A"], args["D"], args["dt_bias"], args["initial_states"] = (
        args[k].float() for k in ("A", "D", "dt_bias", "initial_states"))
    results = run_both(args)
    out, final, grads = results[0]
    assert out.dtype == dtype and final.dtype == torch.float32
    assert all(grads[k].dtype == args[k].dtype for k in grads)
    # The oracle sees the same rounded inputs, so what is measured is the op's own error: fp32
    # accumulation (the fp32 final states below agree to ~1e-7) plus roundings to the low precision
    # (unit roundoff 2^-9 = 2.0e-3 for bf16, 2^-11 for fp16) of the output, of the output gradient
    # (autograd hands it over in the output's dtype) and of the input gradients: a relative RMS error
    # of a few 1e-3 at most (measured: bf16 1.8e-3 output, <= 3.6e-3 gradients). 1e-2 is that bound
    # with a ~3x margin. The states stay fp32 and see no rounded cotangent: only fp32 accumulation
    # (unit roundoff 6e-8), 1e-5.
    assert_close_to_oracle(results, 1e-2, 1e-5, 1e-2)


def test_long_sequence_strong_decay_float32():
    """Decays down to exp(-20) per token: the chunk's log-decays reach -1e3, which must give 0, not nan."""
    args = make_inputs(2, 300, 4, 4, 1, 8, 64, D="head", z=True, bias=True, state=True, seq=True,
                       dtype=torch.float32)
    args["A"] = -torch.linspace(0.5, 20.0, 4, dtype=torch.float32)
    args["D"], args["dt_bias"], args["initial_states"] = (
        args[k].float() for k in ("D", "dt_bias", "initial_states"))
    results = run_both(args)
    out, final, grads = results[0]
    assert all(torch.isfinite(t).all() for t in (out, final, *grads.values()))
    # fp32 throughout (unit roundoff 6e-8) and sums of at most a chunk's 64 products plus 5 carried
    # states: the error is a few 1e-7 (measured <= 4e-7); 1e-5 is a loose bound that nan, a lost
    # decay or a cancelled prefix sum would all break.
    assert_close_to_oracle(results, 1e-5, 1e-5, 1e-5)


def test_segment_sum_is_direct_and_masked():
    """Each entry sums only its own terms: a huge earlier term neither leaks in nor cancels precision."""
    log_decay = -torch.rand(3, 7, dtype=torch.float64) * 5
    log_decay[:, 0] = -1e12  # a prefix-sum difference would lose every digit of the later sums
    log_decay[1, 4] = -math.inf  # a sequence start: -inf through it, never nan
    seg = segment_sum(log_decay)
    assert not seg.isnan().any()
    for i in range(7):
        for j in range(7):
            if i < j:
                assert (seg[:, i, j] == -math.inf).all(), (i, j)
            else:
                torch.testing.assert_close(seg[:, i, j], log_decay[:, j + 1:i + 1].sum(-1), rtol=1e-14, atol=0)


def test_chunk_size_does_not_change_result():
    args = make_inputs(2, 50, 4, 3, 2, 5, 1, D="channel", z=True, bias=True, state=True, seq=True)
    results = [ssd(**dict(args, chunk_size=c), return_final_states=True) for c in (1, 7, 16, 50, 256)]
    for out, final in results[1:]:
        assert rel_err(out, results[0][0]) < 1e-12 and rel_err(final, results[0][1]) < 1e-12


def test_backend_choice(monkeypatch):
    args = make_inputs(1, 9, 2, 2, 1, 3, 4)
    assert torch.equal(ssd(**args), ssd(**args, backend="reference"))
    # (test_ssd_triton: backend="triton" under the interpreter, and its refusal of float64.)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors \(got cpu\)"):
        ssd(**args, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        ssd(**args, backend="cuda")
    monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", "fast")
    with pytest.raises(ValueError, match="MAMBAZOO_KERNEL_BACKEND must be one of"):
        ssd(**args)


def _valid(**override):
    batch, length, heads, headdim, groups, d_state = 2, 9, 4, 3, 2, 5
    args = make_inputs(batch, length, heads, headdim, groups, d_state, 4, D="head", z=True, bias=True,
                       state=True, seq=True)
    args.update(override)
    return args


def _r(*shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


BAD_INPUTS = [
    # (override, exception, match)
    (dict(x=[[1.0]]), TypeError, r"x must be a torch.Tensor of shape \(batch, length, heads, headdim\)"),
    (dict(x=torch.ones(2, 9, 4, 3, dtype=torch.int64)), TypeError, r"x must have dtype in"),
    (dict(x=_r(2, 9, 12)), ValueError, r"x must have shape \(batch, length, heads, headdim\)"),
    (dict(x=_r(2, 0, 4, 3)), ValueError, r"x must have non-empty batch, length, heads and headdim"),
    (dict(dt=_r(2, 9)), ValueError, r"dt must have shape \(batch, length, heads\) = \(2, 9, 4\)"),
    (dict(dt=_r(2, 8, 4)), ValueError, r"dt must have shape \(batch, length, heads\)"),
    (dict(dt=torch.ones(2, 9, 4, dtype=torch.int32)), TypeError, r"dt must have dtype in"),
    (dict(dt=_r(2, 9, 4, device="meta")), ValueError, r"dt must be on cpu"),
    (dict(A=_r(4, 5)), ValueError, r"A must have shape \(heads,\) = \(4,?\)"),
    (dict(A=_r(3)), ValueError, r"A must have shape \(heads,\)"),
    (dict(A=_r(4, device="meta")), ValueError, r"A must be on cpu"),
    (dict(B=_r(2, 9, 10)), ValueError, r"B must have shape \(batch, length, groups, d_state\)"),
    (dict(B=_r(3, 9, 2, 5)), ValueError, r"B must have shape \(batch, length, groups, d_state\)"),
    (dict(B=_r(2, 9, 3, 5), C=_r(2, 9, 3, 5)), ValueError, r"B: groups \(3\) must divide heads \(4\)"),
    (dict(B=_r(2, 9, 2, 0), C=_r(2, 9, 2, 0)), ValueError, r"d_state must be in \[1, 256\], got 0"),
    (dict(B=_r(2, 9, 2, 257), C=_r(2, 9, 2, 257)), ValueError, r"d_state must be in \[1, 256\], got 257"),
    (dict(B=torch.ones(2, 9, 2, 5, dtype=torch.bool)), TypeError, r"B must have dtype in"),
    (dict(C=_r(2, 9, 2, 6)), ValueError, r"C must have shape \(batch, length, groups, d_state\) like B"),
    (dict(C=_r(2, 9, 1, 5)), ValueError, r"C must have shape \(batch, length, groups, d_state\) like B"),
    (dict(C=_r(2, 9, 2, 5, device="meta")), ValueError, r"C must be on cpu"),
    (dict(chunk_size=0), ValueError, r"chunk_size must be >= 1, got 0"),
    (dict(chunk_size=-3), ValueError, r"chunk_size must be >= 1"),
    (dict(chunk_size=4.0), TypeError, r"chunk_size must be an int"),
    (dict(chunk_size=True), TypeError, r"chunk_size must be an int"),
    (dict(D=_r(5)), ValueError, r"D must have shape \(heads,\) or \(heads, headdim\)"),
    (dict(D=_r(4, 2)), ValueError, r"D must have shape \(heads, headdim\) = \(4, 3\)"),
    (dict(D=_r(4, 3, 1)), ValueError, r"D must have shape \(heads,\) or \(heads, headdim\)"),
    (dict(z=_r(2, 9, 4)), ValueError, r"z must have shape \(batch, length, heads, headdim\)"),
    (dict(z=_r(2, 9, 4, 3, device="meta")), ValueError, r"z must be on cpu"),
    (dict(dt_bias=_r(4, 1)), ValueError, r"dt_bias must have shape \(heads,\)"),
    (dict(dt_limit=(1.0, 0.5)), ValueError, r"dt_limit must be a pair \(low, high\) with 0 <= low <= high"),
    (dict(dt_limit=(-0.1, 1.0)), ValueError, r"dt_limit must be a pair"),
    (dict(dt_limit=(0.1,)), ValueError, r"dt_limit must be a pair"),
    (dict(dt_limit=(0.1, float("nan"))), ValueError, r"dt_limit must be a pair"),
    (dict(dt_limit=0.1), ValueError, r"dt_limit must be a pair"),
    (dict(initial_states=_r(2, 4, 5, 3)), ValueError,
     r"initial_states must have shape \(batch, heads, headdim, d_state\) = \(2, 4, 3, 5\)"),
    (dict(initial_states=_r(2, 4, 3)), ValueError, r"initial_states must have shape"),
    (dict(seq_idx=torch.zeros(2, 9)), TypeError, r"seq_idx must have dtype in \(int32, int64\)"),
    (dict(seq_idx=torch.zeros(2, 8, dtype=torch.int32)), ValueError, r"seq_idx must have shape \(batch, length\)"),
    (dict(seq_idx=torch.zeros(2, 9, 1, dtype=torch.int64)), ValueError, r"seq_idx must have shape \(batch, length\)"),
    (dict(seq_idx=torch.zeros(2, 9, dtype=torch.int64, device="meta")), ValueError, r"seq_idx must be on cpu"),
]


@pytest.mark.parametrize("override,error,match", BAD_INPUTS)
def test_bad_input_raises_before_running(override, error, match):
    with pytest.raises(error, match=match):
        ssd(**_valid(**override))


# --- bidirectional_ssd ------------------------------------------------------------------------

def bidirectional_oracle(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                         dt_limit=(0.0, math.inf), initial_states=None, seq_idx=None, average=False):
    """Two step recurrences, left to right and right to left, each with its own parameters;
    out = (y_fwd + y_rev) [/ 2] * silu(z). Returns (out, (2, ...) final states)."""
    ys, finals = [], []
    for d in range(2):
        per_direction = lambda t: None if t is None else t[d]  # noqa: E731
        shared_or_own = lambda t: t if t.dim() == 4 else t[d]  # noqa: E731
        y, final = oracle(
            shared_or_own(x), dt[d], A[d], shared_or_own(B), shared_or_own(C), per_direction(D), None,
            per_direction(dt_bias), dt_softplus, dt_limit, per_direction(initial_states), seq_idx, reverse=d == 1,
        )
        ys.append(y)
        finals.append(final)
    y = (ys[0] + ys[1]) * (0.5 if average else 1.0)
    if z is not None:
        y = y * z.double() * torch.sigmoid(z.double())
    return y, torch.stack(finals)


def make_bi_inputs(batch, length, heads, headdim, groups, d_state, chunk_size, *, shared_x=True, shared_bc=True,
                   average=False, seed=0, dtype=torch.float64, **variant):
    """Per-direction arguments stacked from two independent single-direction draws."""
    draws = [make_inputs(batch, length, heads, headdim, groups, d_state, chunk_size, dtype=dtype, seed=seed + d,
                         **variant) for d in range(2)]
    args = dict(draws[0])
    for name in ("dt", "A", "D", "dt_bias", "initial_states"):
        if args[name] is not None:
            args[name] = torch.stack([draws[0][name], draws[1][name]])
    for name, shared in (("x", shared_x), ("B", shared_bc), ("C", shared_bc)):
        if not shared:
            args[name] = torch.stack([draws[0][name], draws[1][name]])
    args["average"] = average
    return args


BI_CASES = [
    # batch, length, heads, headdim, groups, d_state, chunk_size
    (1, 1, 2, 3, 1, 4, 4),     # L = 1, batch 1
    (2, 16, 2, 4, 1, 4, 16),   # exactly one chunk
    (2, 29, 4, 3, 2, 5, 8),    # ragged last chunk, groups > 1
    (3, 13, 4, 2, 4, 6, 1),    # chunk of one token
]
BI_LAYOUTS = {
    "shared_x_bc": dict(),
    "own_bc": dict(shared_bc=False),
    "own_x_bc": dict(shared_x=False, shared_bc=False),
    "own_x": dict(shared_x=False),
}


@pytest.mark.parametrize("batch,length,heads,headdim,groups,d_state,chunk_size", BI_CASES)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("layout", list(BI_LAYOUTS))
def test_bidirectional_matches_recurrence_float64(batch, length, heads, headdim, groups, d_state, chunk_size,
                                                  variant, layout):
    args = make_bi_inputs(batch, length, heads, headdim, groups, d_state, chunk_size, average=variant == "full",
                          **BI_LAYOUTS[layout], **VARIANTS[variant])
    results = run_both(args, bidirectional_ssd, bidirectional_oracle)
    out, final, _ = results[0]
    assert out.shape == (batch, length, heads, headdim) and final.shape == (2, batch, heads, headdim, d_state)
    assert out.dtype == final.dtype == torch.float64
    # Float64 on both sides, the same bounds as the single-direction test.
    assert_close_to_oracle(results, 1e-12, 1e-12, 1e-9)


def test_bidirectional_is_two_explicit_scans():
    """Direction 1 is ssd on the flipped sequence, flipped back; the halving and the gate act on the sum."""
    args = make_bi_inputs(2, 21, 4, 3, 2, 5, 8, shared_bc=False, D="channel", z=True, bias=True, state=True)
    out, final = bidirectional_ssd(**args, return_final_states=True)
    common = dict(chunk_size=8, dt_softplus=True, return_final_states=True)
    fwd, fwd_final = ssd(args["x"], args["dt"][0], args["A"][0], args["B"][0], args["C"][0], D=args["D"][0],
                         dt_bias=args["dt_bias"][0], initial_states=args["initial_states"][0], **common)
    flip = lambda t: t.flip(1)  # noqa: E731
    rev, rev_final = ssd(flip(args["x"]), flip(args["dt"][1]), args["A"][1], flip(args["B"][1]), flip(args["C"][1]),
                         D=args["D"][1], dt_bias=args["dt_bias"][1], initial_states=args["initial_states"][1], **common)
    expected = (fwd + flip(rev)) * F.silu(args["z"])
    assert rel_err(out, expected) < 1e-12
    assert rel_err(final, torch.stack([fwd_final, rev_final])) < 1e-12
    averaged = bidirectional_ssd(**dict(args, average=True))
    assert rel_err(averaged, expected / 2) < 1e-12


@pytest.mark.parametrize("chunk_size", [4, 32])
def test_bidirectional_state_does_not_cross_sequences(chunk_size):
    """A packed row equals each sequence run alone in both directions: the forward initial state
    reaches only the first sequence, the reversed one only the last."""
    lengths = [8, 11, 1, 10]
    args = make_bi_inputs(1, sum(lengths), 4, 3, 2, 5, chunk_size, shared_bc=False, D="head", z=True, bias=True,
                          state=True)
    args["seq_idx"] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]
    out, final = bidirectional_ssd(**args, return_final_states=True)
    start = 0
    alone_finals = []
    for i, n in enumerate(lengths):
        piece = dict(x=args["x"][:, start:start + n], dt=args["dt"][:, :, start:start + n],
                     B=args["B"][:, :, start:start + n], C=args["C"][:, :, start:start + n],
                     z=args["z"][:, start:start + n])
        first, last = i == 0, i == len(lengths) - 1
        states = torch.stack([args["initial_states"][0] * first, args["initial_states"][1] * last])
        alone, alone_final = bidirectional_ssd(**{**args, **piece, "seq_idx": None, "initial_states": states},
                                               return_final_states=True)
        assert rel_err(out[:, start:start + n], alone) < 1e-12, i
        alone_finals.append(alone_final)
        start += n
    # Forward ends in the last sequence; the reversed direction ends (after the first token) in the first.
    assert rel_err(final[0], alone_finals[-1][0]) < 1e-12
    assert rel_err(final[1], alone_finals[0][1]) < 1e-12


@pytest.mark.parametrize("layout", ["shared_x_bc", "own_x_bc"])
def test_bidirectional_gradcheck(layout):
    args = make_bi_inputs(1, 5, 2, 2, 2, 2, 2, D="head", z=True, bias=True, state=True, average=True,
                          **BI_LAYOUTS[layout])
    args["seq_idx"] = torch.tensor([[0, 1, 1, 1, 2]])  # starts inside a chunk and on a chunk edge
    names = [k for k in GRAD_NAMES if args[k] is not None]

    def fn(*tensors):
        return bidirectional_ssd(**{**args, **dict(zip(names, tensors))}, return_final_states=True)

    inputs = tuple(args[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(fn, inputs)


def test_bidirectional_bf16():
    args = make_bi_inputs(2, 70, 4, 8, 2, 16, 16, shared_bc=False, D="head", z=True, bias=True, state=True,
                          seq=True, dtype=torch.bfloat16)
    for name in ("A", "D", "dt_bias", "initial_states"):
        args[name] = args[name].float()
    results = run_both(args, bidirectional_ssd, bidirectional_oracle)
    out, final, grads = results[0]
    assert out.dtype == torch.bfloat16 and final.dtype == torch.float32
    assert all(grads[k].dtype == args[k].dtype for k in grads)
    # As test_low_precision_inputs: the oracle sees the same rounded inputs, the op's error is fp32
    # accumulation plus bf16 roundings (unit roundoff 2^-9 = 2.0e-3) of the output, of its cotangent
    # and of the input gradients; the sum of two directions adds one more rounding. 1e-2 bounds that
    # with a margin; the fp32 states see no bf16 rounding of their own (1e-5).
    assert_close_to_oracle(results, 1e-2, 1e-5, 1e-2)


def test_bidirectional_backend_choice(monkeypatch):
    args = make_bi_inputs(1, 9, 2, 2, 1, 3, 4)
    assert torch.equal(bidirectional_ssd(**args), bidirectional_ssd(**args, backend="reference"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"bidirectional_ssd: backend='triton' needs CUDA tensors \(got cpu\)"):
        bidirectional_ssd(**args, backend="triton")


def _bi_valid(**override):
    args = make_bi_inputs(2, 9, 4, 3, 2, 5, 4, D="head", z=True, bias=True, state=True, seq=True)
    args.update(override)
    return args


BI_BAD_INPUTS = [
    (dict(x=_r(3, 2, 9, 4, 3)), ValueError, r"x must have shape \(2, batch, length, heads, headdim\)"),
    (dict(x=_r(2, 9, 12)), ValueError,
     r"x must have shape \(batch, length, heads, headdim\) or \(2, batch, length, heads, headdim\)"),
    (dict(dt=_r(2, 9, 4)), ValueError, r"dt must have shape \(2, batch, length, heads\) = \(2, 2, 9, 4\)"),
    (dict(A=_r(4)), ValueError, r"A must have shape \(2, heads\) = \(2, 4\)"),
    (dict(B=_r(2, 2, 9, 2)), ValueError, r"B must have shape \(batch, length, groups, d_state\) or \(2, batch"),
    (dict(B=_r(2, 2, 8, 2, 5)), ValueError, r"B must have shape \(2, batch, length, groups, d_state\)"),
    (dict(B=_r(2, 2, 9, 3, 5)), ValueError, r"B: groups \(3\) must divide heads \(4\)"),
    (dict(C=_r(2, 2, 9, 2, 5)), ValueError, r"C must have shape \(batch, length, groups, d_state\) like B"),
    (dict(B=_r(2, 2, 9, 2, 5)), ValueError, r"C must have shape \(2, batch, length, groups, d_state\) like B"),
    (dict(D=_r(4)), ValueError, r"D must have shape \(2, heads\) or \(2, heads, headdim\)"),
    (dict(D=_r(2, 4, 2)), ValueError, r"D must have shape \(2, heads, headdim\) = \(2, 4, 3\)"),
    (dict(z=_r(2, 2, 9, 4, 3)), ValueError, r"z must have shape \(batch, length, heads, headdim\)"),
    (dict(dt_bias=_r(4)), ValueError, r"dt_bias must have shape \(2, heads\)"),
    (dict(initial_states=_r(2, 4, 3, 5)), ValueError,
     r"initial_states must have shape \(2, batch, heads, headdim, d_state\) = \(2, 2, 4, 3, 5\)"),
    (dict(seq_idx=torch.zeros(2, 2, 9, dtype=torch.int64)), ValueError, r"seq_idx must have shape \(batch, length\)"),
    (dict(chunk_size=0), ValueError, r"chunk_size must be >= 1"),
    (dict(dt_limit=(1.0, 0.5)), ValueError, r"dt_limit must be a pair"),
]


@pytest.mark.parametrize("override,error,match", BI_BAD_INPUTS)
def test_bidirectional_bad_input_raises(override, error, match):
    with pytest.raises(error, match=match):
        bidirectional_ssd(**_bi_valid(**override))
