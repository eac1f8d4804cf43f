"""The Triton causal-conv1d kernels, run on the CPU by Triton's interpreter, against float64.

The oracle is the explicit float64 sum over taps of ``test_causal_conv1d`` (no F.conv1d), and
its float64 autograd for the gradients. Tolerances: float32 inputs differ from float64 only by
float32 rounding of at most ``width`` products per output and ``batch * length`` terms per
weight gradient (~1e-7 relative; asserted 1e-5). bf16 inputs: the oracle sees the same rounded
inputs, the kernels accumulate in fp32 and round each output once to bf16 (2^-9 relative;
asserted 1e-2 as a norm ratio). Lengths 1, 17, 65 and 130 cover a single step, odd lengths and
crossing the kernels' 64-step tiles.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernel modules are imported

import pytest
import torch

from mambazoo_kernels import causal_conv1d

from test_causal_conv1d import oracle


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def make(batch, dim, length, width, dtype, with_bias, seed=0, channel_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=g).transpose(1, 2) if channel_last else \
        torch.randn(batch, dim, length, generator=g)
    weight = torch.randn(dim, width, generator=g) * 0.5
    bias = torch.randn(dim, generator=g) if with_bias else None
    return x.to(dtype), weight, bias


@pytest.mark.parametrize("batch,dim,length,width", [
    (1, 3, 1, 4), (2, 5, 17, 4), (1, 40, 65, 2), (2, 6, 130, 3),
])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_and_grads_match_float64(batch, dim, length, width, silu, reverse):
    x, weight, bias = make(batch, dim, length, width, torch.float32, with_bias=True, seed=length)
    activation = "silu" if silu else None
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    out = causal_conv1d(x, weight, bias, activation, reverse, backend="triton")
    ref = oracle(*(t.detach().double().requires_grad_() for t in leaves), activation, reverse)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert rel_err(out, ref) < 1e-5
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_grads = torch.autograd.grad(oracle(*ref_leaves, activation, reverse), ref_leaves, dout.double())
    for name, got, expected in zip(("x", "weight", "bias"), grads, ref_grads):
        assert got.dtype == torch.float32, name
        assert rel_err(got, expected) < 1e-5, name


@pytest.mark.parametrize("reverse", [False, True])
def test_no_bias_and_channel_last_input(reverse):
    """The mixer's x is a channel-contiguous view of in_proj's output: read through its strides."""
    x, weight, _ = make(2, 8, 19, 4, torch.float32, with_bias=False, channel_last=True)
    assert not x.is_contiguous()
    x.requires_grad_()
    weight.requires_grad_()
    out = causal_conv1d(x, weight, None, "silu", reverse, backend="triton")
    ref = oracle(x.detach().double(), weight.detach().double(), None, "silu", reverse)
    assert rel_err(out, ref) < 1e-5
    dx, dweight = torch.autograd.grad(out.sum(), (x, weight))
    rx, rw = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ex, ew = torch.autograd.grad(oracle(rx, rw, None, "silu", reverse).sum(), (rx, rw))
    assert rel_err(dx, ex) < 1e-5 and rel_err(dweight, ew) < 1e-5


@pytest.mark.parametrize("reverse", [False, True])
def test_bf16(reverse):
    x, weight, bias = make(2, 5, 33, 4, torch.bfloat16, with_bias=True)
    x.requires_grad_()
    out = causal_conv1d(x, weight, bias, "silu", reverse, backend="triton")
    assert out.dtype == torch.bfloat16
    ref = oracle(x.detach().float(), weight, bias, "silu", reverse)
    assert rel_err(out, ref) < 1e-2
    (dx,) = torch.autograd.grad(out.float().sum(), (x,))
    rx = x.detach().double().requires_grad_()
    (ex,) = torch.autograd.grad(oracle(rx, weight, bias, "silu", reverse).sum(), (rx,))
    assert dx.dtype == torch.bfloat16 and rel_err(dx, ex) < 1e-2


def test_conv_weight_layout_and_reverse_is_flipped_causal():
    x, weight, bias = make(1, 4, 23, 3, torch.float32, with_bias=True)
    flipped = causal_conv1d(x.flip(-1), weight[:, None], bias, "silu", backend="triton").flip(-1)
    torch.testing.assert_close(causal_conv1d(x, weight[:, None], bias, "silu", reverse=True, backend="triton"), flipped)


def test_float64_is_refused_by_an_explicit_triton_backend_and_auto_stays_on_reference():
    x, weight, bias = make(1, 4, 9, 4, torch.float64, with_bias=True)
    with pytest.raises(NotImplementedError, match="float64"):
        causal_conv1d(x, weight.double(), bias.double(), backend="triton")
    out = causal_conv1d(x, weight.double(), bias.double())  # auto on CPU: the reference
    torch.testing.assert_close(out, oracle(x, weight, bias, None, False))


def test_auto_backend_keeps_cpu_tensors_on_the_reference(monkeypatch):
    from mambazoo_kernels.causal_conv1d import triton_op

    calls = []
    monkeypatch.setattr(triton_op, "conv_forward", lambda *a, **k: calls.append(1))
    x, weight, bias = make(1, 4, 9, 4, torch.float32, with_bias=True)
    out = causal_conv1d(x, weight, bias, "silu")
    assert not calls and out.shape == x.shape
