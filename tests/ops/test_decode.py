"""Decode step: selective_state_update / causal_conv1d_update and MambaMixer.step.

Oracles are independent of the decode code: the full-sequence ops (the chunked scan reference,
the F.conv1d reference) and the mixer's full-sequence forward. Stepping through a sequence
token by token must reproduce them; in float64 the only difference is summation order
(asserted to 1e-10). The Triton decode kernels run under Triton's interpreter against the
reference: float32 state and activations differ by float32 rounding (asserted 1e-5 relative);
bf16 activations are rounded once on output (asserted 1e-2 relative).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel modules are imported

import pytest
import torch
import torch.nn.functional as F

from mambazoo.layers import BidirectionalMambaMixer, MambaMixer
from mambazoo_kernels import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def step_inputs(batch, dim, d_state, groups=None, dtype=torch.float64, seed=0, full=True):
    """One token's arguments; ``groups=None`` gives B/C without a groups axis."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    bc_shape = (batch, d_state) if groups is None else (batch, groups, d_state)
    args = dict(
        state=rand(batch, dim, d_state), x=rand(batch, dim).to(dtype), dt=(rand(batch, dim) * 0.5).to(dtype),
        A=-torch.rand(dim, d_state, generator=g, dtype=torch.float64) * 2, B=rand(*bc_shape).to(dtype),
        C=rand(*bc_shape).to(dtype),
    )
    if full:
        args.update(D=rand(dim), z=rand(batch, dim).to(dtype), dt_bias=rand(dim) * 0.3, dt_softplus=True)
    return args


def as_scan(args):
    """The same token as a length-1 selective_scan call (B/C per token gain a length axis)."""
    token = lambda t: None if t is None else t[..., None]
    return dict(
        u=token(args["x"]), delta=token(args["dt"]), A=args["A"], B=token(args["B"]), C=token(args["C"]),
        D=args.get("D"), z=token(args.get("z")), delta_bias=args.get("dt_bias"),
        delta_softplus=args.get("dt_softplus", False), initial_state=args["state"].clone(),
    )


@pytest.mark.parametrize("groups", [None, 1, 2])
@pytest.mark.parametrize("full", [True, False])
def test_state_update_matches_one_scan_step(groups, full):
    args = step_inputs(2, 4, 3, groups, full=full)
    state = args["state"]
    expected, expected_state = selective_scan(**as_scan(args), return_final_state=True, backend="reference")
    y = selective_state_update(**args, backend="reference")
    assert y.shape == (2, 4) and y.dtype == torch.float64
    assert args["state"] is state  # in place
    torch.testing.assert_close(y, expected[..., 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, expected_state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [2, 3, 4])
def test_conv_update_steps_reproduce_the_full_conv(width):
    g = torch.Generator().manual_seed(width)
    x = torch.randn(2, 5, 9, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 1, width, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    expected = causal_conv1d(x, weight, bias, "silu")
    conv_state = torch.zeros(2, 5, width, dtype=torch.float64)
    steps = [causal_conv1d_update(x[..., t], conv_state, weight, bias, "silu", backend="reference") for t in range(9)]
    torch.testing.assert_close(torch.stack(steps, -1), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv_state, x[..., -width:])  # the last `width` inputs, oldest first


@pytest.mark.parametrize("batch,dim,d_state,groups", [(1, 37, 5, None), (2, 8, 16, 2), (3, 4, 1, None)])
@pytest.mark.parametrize("full", [True, False])
def test_triton_state_update_matches_reference(batch, dim, d_state, groups, full):
    args = step_inputs(batch, dim, d_state, groups, dtype=torch.float32, seed=dim, full=full)
    args = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    ref_args = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    y = selective_state_update(**args, backend="triton")
    y_ref = selective_state_update(**ref_args, backend="reference")
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(args["state"], ref_args["state"]) < 1e-5


def test_triton_state_update_bf16_and_strided_state():
    args = step_inputs(2, 6, 4, None, dtype=torch.bfloat16, seed=3)
    big = torch.zeros(2, 6, 8)
    state = big[..., ::2]  # a strided state view: updated in place through its strides
    state.copy_(args["state"])
    args = dict(args, state=state, A=args["A"].float(), D=args["D"].float(), dt_bias=args["dt_bias"].float())
    ref_args = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    y = selective_state_update(**args, backend="triton")
    y_ref = selective_state_update(**ref_args, backend="reference")
    assert y.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 1e-2
    assert rel_err(big[..., ::2], ref_args["state"]) < 1e-5
    assert big[..., 1::2].abs().max() == 0  # untouched


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("silu,with_bias", [(True, True), (False, False)])
def test_triton_conv_update_matches_reference(width, dtype, tol, silu, with_bias):
    g = torch.Generator().manual_seed(width)
    x = torch.randn(3, 37, generator=g).to(dtype)
    conv_state = torch.randn(3, 37, width, generator=g).to(dtype)
    weight, bias = torch.randn(37, width, generator=g), torch.randn(37, generator=g) if with_bias else None
    ref_state = conv_state.clone()
    activation = "silu" if silu else None
    out = causal_conv1d_update(x, conv_state, weight, bias, activation, backend="triton")
    expected = causal_conv1d_update(x, ref_state, weight, bias, activation, backend="reference")
    assert out.dtype == dtype
    assert rel_err(out, expected) < tol
    torch.testing.assert_close(conv_state, ref_state, rtol=0, atol=0)  # a pure shift: exact


@pytest.mark.parametrize("backend,dtype,tol", [("reference", torch.float64, 1e-10), ("triton", torch.float32, 1e-5)])
def test_mixer_step_reproduces_forward(backend, dtype, tol, monkeypatch):
    """Token-by-token steps vs the float64 full-sequence forward (reference kernels)."""
    torch.manual_seed(0)
    mixer = MambaMixer(16, d_state=4, d_conv=4, dtype=torch.float64)
    hidden = torch.randn(2, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = mixer(hidden)
        mixer.to(dtype)
        monkeypatch.setenv("MAMBAZOO_KERNEL_BACKEND", backend)
        conv_state, ssm_state = mixer.allocate_inference_cache(2)
        assert conv_state.shape == (2, 32, 4) and conv_state.dtype == dtype
        assert ssm_state.shape == (2, 32, 4) and ssm_state.dtype == torch.promote_types(dtype, torch.float32)
        steps = [mixer.step(hidden[:, t:t + 1].to(dtype), conv_state, ssm_state) for t in range(7)]
    out = torch.cat(steps, dim=1)
    assert out.shape == (2, 7, 16)
    assert rel_err(out, expected) < tol


def test_bidirectional_mixer_cannot_step():
    mixer = BidirectionalMambaMixer(16, d_state=4)
    with pytest.raises(NotImplementedError, match="both directions"):
        mixer.allocate_inference_cache(1)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(state=torch.zeros(2, 4, 3, dtype=torch.bfloat16)), TypeError, r"state must have dtype"),
    (dict(x=torch.zeros(2, 5)), ValueError, r"x must have shape \(batch, dim\) = \(2, 4\)"),
    (dict(A=torch.zeros(4, 2)), ValueError, r"A must have shape \(dim, d_state\) = \(4, 3\)"),
    (dict(B=torch.zeros(2, 3, 3)), ValueError, r"B: groups \(3\) must divide dim \(4\)"),
    (dict(C=torch.zeros(2, 4)), ValueError, r"C must have shape \(batch, d_state\)"),
    (dict(D=torch.zeros(3)), ValueError, r"D must have shape \(dim,\)"),
])
def test_state_update_bad_input_names_the_argument(kwargs, error, match):
    args = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in step_inputs(2, 4, 3).items()}
    with pytest.raises(error, match=match):
        selective_state_update(**dict(args, **kwargs))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.zeros(2, 4, 1)), ValueError, r"x must have shape \(batch, dim\)"),
    (dict(conv_state=torch.zeros(2, 5, 4)), ValueError, r"conv_state must have shape \(batch, dim, width\)"),
    (dict(weight=torch.zeros(4, 3)), ValueError, r"weight must have shape \(dim, width\) with conv_state's width"),
    (dict(activation="gelu"), ValueError, r"activation must be one of"),
])
def test_conv_update_bad_input_names_the_argument(kwargs, error, match):
    args = dict(x=torch.zeros(2, 4), conv_state=torch.zeros(2, 4, 4), weight=torch.zeros(4, 4), bias=None)
    with pytest.raises(error, match=match):
        causal_conv1d_update(**dict(args, **kwargs))
