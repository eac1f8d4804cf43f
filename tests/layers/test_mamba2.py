"""Mamba-2 mixers against the float64 oracle of ``_mamba2_oracle.py`` (the Mamba-2 equations,
no mambazoo code). Float64 modules run the kernels in float64, so only rounding separates the
two (relative max error bound 1e-10)."""
import math

import pytest
import torch
import torch.nn.functional as F

from _mamba2_oracle import BACKWARD, FORWARD, naive_gated_norm, naive_mixer
from mambazoo.layers import BidirectionalMamba2Mixer, Mamba2Mixer, MambaBlock

TOLERANCE = 1e-10
SMALL = dict(d_model=24, d_state=5, headdim=12, chunk_size=4)  # d_inner 48, 4 heads


def rel_max_err(value, ref):
    return ((value - ref).abs().max() / ref.abs().max()).item()


@torch.no_grad()
def randomize_(mixer, seed=0):
    """Random, direction-asymmetric parameters in a trained model's ranges (A in [-8, -1])."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in mixer.named_parameters():
        if name in ("A_log", "A_b_log"):
            param.copy_(torch.log(1 + 7 * torch.rand(param.shape, generator=gen, dtype=param.dtype)))
        elif name in ("dt_bias", "dt_bias_b"):
            param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) - 2)
        elif name == "norm.weight":
            param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
        else:
            param.copy_(0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return mixer


def _inputs(batch=2, length=11, d_model=24, dtype=torch.float64):
    return torch.randn(batch, length, d_model, generator=torch.Generator().manual_seed(7), dtype=dtype)


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("length", [1, 11])
def test_mixer_matches_equations_float64(ngroups, length):
    mixer = randomize_(Mamba2Mixer(**SMALL, ngroups=ngroups, dtype=torch.float64))
    x = _inputs(length=length)
    with torch.no_grad():
        assert rel_max_err(mixer(x), naive_mixer(mixer, x)) < TOLERANCE


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("ngroups", [1, 4])
def test_bidirectional_matches_equations_float64(average, ngroups):
    mixer = randomize_(BidirectionalMamba2Mixer(**SMALL, ngroups=ngroups, average=average, dtype=torch.float64))
    x = _inputs(length=13)
    with torch.no_grad():
        assert rel_max_err(mixer(x), naive_mixer(mixer, x, average=average)) < TOLERANCE


def test_bidirectional_is_forward_plus_reversed_mixer_on_flipped_input():
    """The SSD output (before the norm) of the bidirectional mixer is the forward mixer's on x plus,
    flipped back, that of a mixer holding the reversed direction's weights run on the flipped x."""
    bi = randomize_(BidirectionalMamba2Mixer(**SMALL, ngroups=2, average=False, dtype=torch.float64))
    di, bc, h = bi.d_inner, bi.bc_dim, bi.nheads
    W = bi.in_proj.weight
    halves = []
    for index, names in enumerate((FORWARD, BACKWARD)):
        single = Mamba2Mixer(**SMALL, ngroups=2, dtype=torch.float64)
        with torch.no_grad():
            single.in_proj.weight.copy_(torch.cat([
                W[:2 * di], W[2 * di + index * bc: 2 * di + (index + 1) * bc],
                W[2 * di + 2 * bc + index * h: 2 * di + 2 * bc + (index + 1) * h]]))
            for local, own in zip(FORWARD.values(), names.values()):
                if local == "conv1d":
                    single.conv1d.load_state_dict(getattr(bi, own).state_dict())
                else:
                    getattr(single, local).copy_(getattr(bi, own))
        halves.append(single)
    x = _inputs(length=10)
    with torch.no_grad():
        y, z = bi.ssm(x)
        y_fwd, z_fwd = halves[0].ssm(x)
        y_rev, _ = halves[1].ssm(x.flip(1))
        torch.testing.assert_close(z, z_fwd, rtol=0, atol=0)
        assert rel_max_err(y, y_fwd + y_rev.flip(1)) < TOLERANCE
        assert rel_max_err(bi(x), bi.out_proj(bi.norm(y, z))) < TOLERANCE


def test_state_dict_names_match_mamba_ssm():
    """mamba_ssm Mamba2(d_model, d_state, headdim, ngroups) keys and shapes (rmsnorm, no bias)."""
    mixer = Mamba2Mixer(**SMALL, ngroups=2)
    di, g, n, h = 48, 2, 5, 4
    expected = {
        "in_proj.weight": (2 * di + 2 * g * n + h, 24), "conv1d.weight": (di + 2 * g * n, 1, 4),
        "conv1d.bias": (di + 2 * g * n,), "dt_bias": (h,), "A_log": (h,), "D": (h,), "norm.weight": (di,),
        "out_proj.weight": (24, di),
    }
    assert {k: tuple(v.shape) for k, v in mixer.state_dict().items()} == expected
    bi = BidirectionalMamba2Mixer(**SMALL, ngroups=2)
    assert set(bi.state_dict()) == set(expected) | {"conv1d_b.weight", "conv1d_b.bias", "dt_bias_b", "A_b_log", "D_b"}
    assert bi.in_proj.weight.shape == (2 * di + 2 * (2 * g * n + h), 24)
    assert bi.no_weight_decay() == {"dt_bias", "A_log", "D", "dt_bias_b", "A_b_log", "D_b"}
    assert all(getattr(bi, name)._no_weight_decay for name in bi.no_weight_decay())


def test_initialisation_like_mamba_ssm():
    torch.manual_seed(0)
    mixer = BidirectionalMamba2Mixer(d_model=64, d_state=8, headdim=8, dt_min=0.01, dt_max=0.05)  # 16 heads
    for names in (FORWARD, BACKWARD):
        A = torch.exp(getattr(mixer, names["A_log"]))
        assert ((A >= 1) & (A <= 16)).all()
        dt = F.softplus(getattr(mixer, names["dt_bias"]))
        assert ((dt >= 0.01 - 1e-6) & (dt <= 0.05 + 1e-6)).all()
        assert (getattr(mixer, names["D"]) == 1).all()
    assert (mixer.norm.weight == 1).all()
    assert not torch.equal(mixer.A_log, mixer.A_b_log)


@pytest.mark.parametrize("cls", [Mamba2Mixer, BidirectionalMamba2Mixer])
def test_backward_reaches_every_parameter(cls):
    mixer = randomize_(cls(**SMALL, ngroups=2))
    x = _inputs(dtype=torch.float32).requires_grad_()
    mixer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, param in mixer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", [Mamba2Mixer, BidirectionalMamba2Mixer])
def test_low_precision_module_keeps_ssm_parameters_fp32(cls):
    mixer = cls(**SMALL, dtype=torch.bfloat16)
    assert mixer.in_proj.weight.dtype == torch.bfloat16
    assert all(getattr(mixer, name).dtype == torch.float32 for name in mixer.no_weight_decay())
    reference = cls(**SMALL)
    reference.load_state_dict(mixer.state_dict())
    x = _inputs(dtype=torch.bfloat16)
    with torch.no_grad():
        out = mixer(x)
        expected = reference(x.float())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    # bf16 weights and activations (unit roundoff 2^-9 = 2e-3) through two projections, the conv,
    # the SSD (fp32 inside) and the norm: a few roundings, relative error of order 1e-2.
    assert ((out.float() - expected).norm() / expected.norm()).item() < 3e-2


def test_in_a_block():
    block = MambaBlock(24, mixer_layer=lambda dim, **dd: BidirectionalMamba2Mixer(dim, d_state=5, headdim=12, **dd))
    hidden, residual = block(_inputs(dtype=torch.float32))
    assert hidden.shape == residual.shape == (2, 11, 24) and residual.dtype == torch.float32


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=24, headdim=7), r"headdim \(7\) must divide d_inner = expand \* d_model = 48"),
    (dict(d_model=24, headdim=12, ngroups=3), r"ngroups \(3\) must divide the number of heads"),
    (dict(d_model=24, headdim=12, ngroups=0), r"ngroups \(0\) must divide"),
    (dict(d_model=5, expand=1.5, headdim=1), r"d_model \(5\) \* expand \(1.5\) must be a positive integer"),
    (dict(d_model=24, headdim=12, A_init_range=(0, 16)), r"A_init_range must be"),
])
@pytest.mark.parametrize("cls", [Mamba2Mixer, BidirectionalMamba2Mixer])
def test_bad_sizes_raise_naming_the_argument(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_gated_norm_group_size_must_divide():
    from mambazoo.layers import RMSNormGated

    with pytest.raises(ValueError, match=r"group_size \(5\) must divide dim \(12\)"):
        RMSNormGated(12, group_size=5)
    norm = RMSNormGated(12, group_size=4, dtype=torch.float64)
    y, z = torch.randn(2, 3, 12, dtype=torch.float64), torch.randn(2, 3, 12, dtype=torch.float64)
    torch.testing.assert_close(norm(y, z), naive_gated_norm(y, z, norm.weight, 4))
    assert not math.isclose(norm(y, z)[0, 0, 0].item(), RMSNormGated(12, dtype=torch.float64)(y, z)[0, 0, 0].item())
