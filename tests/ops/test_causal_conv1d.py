"""Causal depthwise conv1d against an explicit float64 sum over taps."""
import pytest
import torch
import torch.nn.functional as F

from mambazoo_kernels import causal_conv1d


def oracle(x, weight, bias, activation, reverse):
    x, weight = x.double(), weight.double()
    batch, dim, length = x.shape
    width = weight.shape[-1]
    out = torch.zeros(batch, dim, length, dtype=torch.float64) + (0 if bias is None else bias.double()[:, None])
    for t in range(length):
        for k in range(width):
            # causal: tap k reads x[t - (width-1) + k]; reversed: tap k reads x[t + (width-1) - k]
            src = t + (width - 1 - k) if reverse else t - (width - 1 - k)
            if 0 <= src < length:
                out[..., t] += weight[:, k] * x[..., src]
    return F.silu(out) if activation == "silu" else out


@pytest.mark.parametrize("batch,dim,length,width", [(1, 3, 1, 4), (2, 5, 17, 4), (3, 8, 64, 2), (1, 4, 3, 4)])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_explicit_sum(batch, dim, length, width, activation, reverse, with_bias):
    g = torch.Generator().manual_seed(length * 7 + width)
    x = torch.randn(batch, dim, length, generator=g, dtype=torch.float64)
    weight = torch.randn(dim, width, generator=g, dtype=torch.float64)
    bias = torch.randn(dim, generator=g, dtype=torch.float64) if with_bias else None
    out = causal_conv1d(x, weight, bias, activation, reverse)
    torch.testing.assert_close(out, oracle(x, weight, bias, activation, reverse), rtol=1e-12, atol=1e-12)


def test_reverse_equals_flipped_causal_and_conv_weight_layout():
    x, weight, bias = torch.randn(2, 6, 11), torch.randn(6, 1, 4), torch.randn(6)
    flipped = causal_conv1d(x.flip(-1), weight, bias, "silu").flip(-1)
    torch.testing.assert_close(causal_conv1d(x, weight, bias, "silu", reverse=True), flipped)


def test_bf16_and_gradcheck():
    x, weight = torch.randn(2, 4, 9), torch.randn(4, 4)
    out = causal_conv1d(x.bfloat16(), weight, None, "silu")
    assert out.dtype == torch.bfloat16
    # bf16 operands and output: relative error of a few 2^-8 roundings.
    ref = oracle(x.bfloat16().float(), weight.bfloat16().float(), None, "silu", False)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2
    xs = torch.randn(1, 3, 6, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bs = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: causal_conv1d(a, b, c, "silu", True), (xs, ws, bs))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.randn(4, 9)), ValueError, r"x must have shape \(batch, dim, length\)"),
    (dict(weight=torch.randn(5, 4)), ValueError, r"weight must have shape \(dim, width\) = \(4, \*\)"),
    (dict(weight=torch.randn(4, 2, 4)), ValueError, r"weight must have shape \(dim, 1, width\)"),
    (dict(bias=torch.randn(3)), ValueError, r"bias must have shape \(dim,\)"),
    (dict(activation="relu"), ValueError, r"activation must be one of"),
    (dict(x=torch.ones(2, 4, 9, dtype=torch.int64)), TypeError, r"x must have dtype"),
])
def test_bad_input_names_the_argument(kwargs, error, match):
    args = dict(x=torch.randn(2, 4, 9), weight=torch.randn(4, 4), bias=torch.randn(4), activation=None)
    with pytest.raises(error, match=match):
        causal_conv1d(**dict(args, **kwargs))
