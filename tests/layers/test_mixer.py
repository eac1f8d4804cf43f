"""Mamba mixers and block against a loop-based float64 oracle of the official semantics.

The oracle follows mamba_ssm's slow path (``nn.Conv1d`` with padding, then truncate; x_proj rows
[dt, B, C]; softplus(dt_proj(dt)); a Python loop over time) and Vim's v2 mixer (the reversed
direction runs on ``xz.flip(-1)``, its output is flipped back, the sum halved, then out_proj).
It shares no code with the kernels. The mixers' scan accumulates in fp32 by design, so float64
comparisons allow fp32 rounding: relative max error <= 1e-6 (measured ~3e-8).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mambazoo.layers import BidirectionalMambaMixer, MambaBlock, MambaMixer

FORWARD = dict(conv1d="conv1d", x_proj="x_proj", dt_proj="dt_proj", A_log="A_log", D="D")
BACKWARD = dict(conv1d="conv1d_b", x_proj="x_proj_b", dt_proj="dt_proj_b", A_log="A_b_log", D="D_b")
TOLERANCE = 1e-6


def naive_mamba_core(mixer, xz, names):
    """mamba_ssm's Mamba without out_proj: ``xz`` (batch, 2 * d_inner, length) -> (batch, d_inner, length)."""
    conv = getattr(mixer, names["conv1d"])
    x, z = xz.chunk(2, dim=1)
    length = x.shape[-1]
    x = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=mixer.d_conv - 1, groups=mixer.d_inner)[..., :length])
    x_dbl = x.transpose(1, 2) @ getattr(mixer, names["x_proj"]).weight.T
    dt, B, C = x_dbl.split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    dt_proj = getattr(mixer, names["dt_proj"])
    delta = F.softplus(dt @ dt_proj.weight.T + dt_proj.bias)  # (batch, length, d_inner)
    A = -torch.exp(getattr(mixer, names["A_log"]))
    D = getattr(mixer, names["D"])
    h = x.new_zeros(x.shape[0], mixer.d_inner, mixer.d_state)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t, None, :] * x[:, :, t, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, :, t])
    return torch.stack(ys, dim=-1) * F.silu(z)


def naive_mixer(mixer, hidden_states, directions):
    """The official mixer: in_proj, core per direction (reversed on flipped xz), average, out_proj."""
    xz = (hidden_states @ mixer.in_proj.weight.T).transpose(1, 2)
    y = naive_mamba_core(mixer, xz, directions[0])
    if len(directions) == 2:
        y_b = naive_mamba_core(mixer, xz.flip(-1), directions[1]).flip(-1)
        y = (y + y_b) / 2
    return y.transpose(1, 2) @ mixer.out_proj.weight.T


@torch.no_grad()
def randomize_(mixer, seed=0):
    """Random, direction-asymmetric parameters, in the ranges a trained model has."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in mixer.named_parameters():
        noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
        if "A" in name.split(".")[-1] and "log" in name:
            param.copy_(torch.log(0.5 + 4 * torch.rand(param.shape, generator=gen, dtype=param.dtype)))
        elif name.endswith("dt_proj.bias") or name.endswith("dt_proj_b.bias"):
            param.copy_(noise - 2)
        else:
            param.copy_(noise / math.sqrt(max(param.shape[-1], 1)))


def rel_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("length", [1, 3, 13])
def test_mamba_mixer_matches_naive(length):
    torch.manual_seed(0)
    mixer = MambaMixer(16, d_state=4, dtype=torch.float64).double()
    randomize_(mixer)
    hidden = torch.randn(2, length, 16, dtype=torch.float64)
    expected = naive_mixer(mixer, hidden, [FORWARD])
    assert rel_error(mixer(hidden), expected) < TOLERANCE


@pytest.mark.parametrize("length", [1, 3, 13])
def test_bidirectional_mixer_matches_vim(length):
    torch.manual_seed(0)
    mixer = BidirectionalMambaMixer(16, d_state=4, dtype=torch.float64).double()
    randomize_(mixer, seed=length)
    hidden = torch.randn(2, length, 16, dtype=torch.float64)
    out = mixer(hidden)
    expected = naive_mixer(mixer, hidden, [FORWARD, BACKWARD])
    assert rel_error(out, expected) < TOLERANCE
    if length > 1:
        # The oracle is sharp enough to catch swapped per-direction parameters.
        swapped = naive_mixer(mixer, hidden, [BACKWARD, FORWARD])
        assert rel_error(out, swapped) > 1e-2


def test_bidirectional_mixer_average_flag():
    mixer = BidirectionalMambaMixer(16, d_state=4, average=False, dtype=torch.float64).double()
    randomize_(mixer, seed=3)
    hidden = torch.randn(1, 9, 16, dtype=torch.float64)
    expected = 2 * naive_mixer(mixer, hidden, [FORWARD, BACKWARD])
    assert rel_error(mixer(hidden), expected) < TOLERANCE


@pytest.mark.parametrize("mixer_cls", [MambaMixer, BidirectionalMambaMixer])
def test_mixer_shapes_and_grads(mixer_cls):
    mixer = mixer_cls(24, d_state=8)
    hidden = torch.randn(2, 10, 24, requires_grad=True)
    out = mixer(hidden)
    assert out.shape == hidden.shape and out.dtype == hidden.dtype
    out.square().mean().backward()
    assert hidden.grad is not None
    for name, param in mixer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_mixer_parameter_names_and_shapes():
    mixer = BidirectionalMambaMixer(32, d_state=16)
    d_inner, r = 64, 2
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    expected = {"in_proj.weight": (2 * d_inner, 32), "out_proj.weight": (32, d_inner)}
    for suffix, a_log in (("", "A_log"), ("_b", "A_b_log")):
        expected.update({
            f"conv1d{suffix}.weight": (d_inner, 1, 4), f"conv1d{suffix}.bias": (d_inner,),
            f"x_proj{suffix}.weight": (r + 32, d_inner),
            f"dt_proj{suffix}.weight": (d_inner, r), f"dt_proj{suffix}.bias": (d_inner,),
            a_log: (d_inner, 16), f"D{suffix}": (d_inner,),
        })
    assert shapes == expected
    assert set(MambaMixer(32).state_dict()) == {k for k in expected if "_b" not in k}


@pytest.mark.parametrize("mixer_cls", [MambaMixer, BidirectionalMambaMixer])
def test_mixer_init(mixer_cls):
    dt_min, dt_max = 0.001, 0.1
    mixer = mixer_cls(48, d_state=16, dt_min=dt_min, dt_max=dt_max, dtype=torch.bfloat16)
    assert mixer.dt_rank == 3
    for suffix, a_log in [("", "A_log"), ("_b", "A_b_log")][: len(mixer.directions)]:
        A_log = mixer.get_parameter(a_log)
        D = mixer.get_parameter(f"D{suffix}")
        dt_proj = mixer.get_submodule(f"dt_proj{suffix}")
        assert A_log.dtype == D.dtype == torch.float32
        torch.testing.assert_close(A_log, torch.log(torch.arange(1.0, 17.0)).expand(96, 16))
        assert torch.equal(D, torch.ones(96))
        dt = F.softplus(dt_proj.bias.float())
        assert dt.min() >= dt_min * 0.97 and dt.max() <= dt_max * 1.03
        assert dt_proj.weight.abs().max() <= 3 ** -0.5
        for param in (A_log, D, dt_proj.bias):
            assert getattr(param, "_no_weight_decay", False)
    assert mixer.no_weight_decay() <= {name for name, _ in mixer.named_parameters()}


def test_rescale_out_proj():
    mixer = MambaMixer(64)
    mixer.rescale_out_proj(16)
    bound = 1 / math.sqrt(mixer.d_inner) / 4  # kaiming_uniform(a=sqrt(5)) bound, / sqrt(16)
    assert mixer.out_proj.weight.abs().max() <= bound


def test_block_order_and_fp32_residual():
    torch.manual_seed(0)
    block = MambaBlock(32, mixer_layer=BidirectionalMambaMixer, dtype=torch.bfloat16)
    hidden = torch.randn(2, 7, 32, dtype=torch.bfloat16)
    residual = torch.randn(2, 7, 32, dtype=torch.float32)
    out, new_residual = block(hidden, residual)
    assert new_residual.dtype == torch.float32 and out.dtype == torch.bfloat16
    torch.testing.assert_close(new_residual, residual + hidden.float())
    torch.testing.assert_close(out, block.mixer(block.norm(new_residual.to(torch.bfloat16))))

    out, first_residual = block(hidden)
    assert first_residual.dtype == torch.float32
    torch.testing.assert_close(first_residual, hidden.float())


def test_block_layernorm_and_drop_path():
    block = MambaBlock(16, norm_layer=torch.nn.LayerNorm, drop_path=0.5)
    assert isinstance(block.norm, torch.nn.LayerNorm) and block.norm.eps == 1e-5
    hidden, residual = torch.randn(4, 5, 16), torch.randn(4, 5, 16)
    block.eval()
    _, new_residual = block(hidden, residual)
    torch.testing.assert_close(new_residual, residual + hidden)
    block.train()
    _, new_residual = block(hidden, residual)
    for added, sample in zip(new_residual - residual, hidden):
        # Stochastic depth per sample: the path is dropped or scaled by 1 / (1 - 0.5).
        assert torch.allclose(added, torch.zeros_like(added)) or torch.allclose(added, 2 * sample)
