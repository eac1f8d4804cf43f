"""Mamba-2 (SSD) mixers: mamba_ssm's ``Mamba2`` and a bidirectional form for vision.

``Mamba2Mixer`` follows mamba_ssm 2.x ``Mamba2`` (rmsnorm=True, norm_before_gate=False, d_ssm =
d_inner): ``z, xBC, dt = in_proj(h)``; ``xBC = silu(causal_conv1d(xBC))``; ``x, B, C = xBC``;
``y = ssd(x, dt, A, B, C, D, dt_bias, softplus, dt_limit)``; ``out = out_proj(norm(y * silu(z)))``
with a group-wise RMSNorm. Parameter names are mamba_ssm's (``in_proj``, ``conv1d``, ``dt_bias``,
``A_log``, ``D``, ``norm.weight``, ``out_proj``), so official Mamba-2 checkpoints load as they are.

``BidirectionalMamba2Mixer`` adds a right-to-left direction the way Vim's v2 mixer does for Mamba-1:
``in_proj``, ``out_proj`` and the gated norm are shared; each direction has its own conv (the
reversed one anti-causal, i.e. the causal conv of the flipped sequence without flipping),
``dt_bias``, ``A_log``, ``D`` and its own B, C and dt rows in ``in_proj``. The two SSD outputs are
summed (halved when ``average``) BEFORE the gated norm, in one ``bidirectional_ssd`` call.

Layout decisions:

- ``in_proj`` rows: ``[z (d_inner), x (d_inner), B (g*n), C (g*n)]`` then, for the reversed
  direction, ``[B_b (g*n), C_b (g*n)]``, then the dt rows of every direction ``[dt (h), dt_b (h)]``.
  The forward rows ``[z, x, B, C, dt]`` are exactly mamba_ssm's ``Mamba2.in_proj`` layout, so a
  one-directional checkpoint maps onto the forward direction by slicing.
- The conv of each direction covers ``[x, B, C]`` of that direction (mamba_ssm's ``conv1d`` over
  ``xBC``), so each direction sees its own convolved ``x``: the SSD gets ``x`` per direction
  ``(2, batch, length, heads, headdim)``. This keeps each direction a complete Mamba-2 path (the
  bidirectional mixer equals a forward mixer plus a reversed-weights mixer on the flipped sequence,
  summed before the norm), as Vim does for Mamba-1.
- Reversed-direction parameter names follow Vim: ``conv1d_b``, ``dt_bias_b``, ``A_b_log``, ``D_b``.

Layouts: the mixers take and return ``(batch, length, d_model)``; the SSD reads
``(batch, length, heads, headdim)``; the conv reads channel-major ``(batch, channels, length)``.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from mambazoo_kernels import bidirectional_ssd, causal_conv1d, ssd

__all__ = ["Mamba2Mixer", "BidirectionalMamba2Mixer", "RMSNormGated"]


class RMSNormGated(nn.Module):
    """``rmsnorm(x * silu(z))`` per group of ``group_size`` channels (mamba_ssm's ``RMSNormGated``
    with ``norm_before_gate=False``), computed in fp32 and returned in ``x``'s dtype.

    Args:
        dim: Channels; ``x`` and ``z`` are ``(..., dim)``.
        eps: Added to the mean square.
        group_size: Channels normalised together (``dim`` when ``None``); must divide ``dim``.
    """

    def __init__(self, dim: int, eps: float = 1e-5, group_size: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        self.group_size = dim if group_size is None else group_size
        if self.group_size < 1 or dim % self.group_size:
            raise ValueError(f"group_size ({self.group_size}) must divide dim ({dim})")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        gated = x.to(compute) * F.silu(z.to(compute))
        groups = gated.unflatten(-1, (-1, self.group_size))
        normed = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight.to(compute)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}"


class DirectionNames(NamedTuple):
    """Attribute names of one SSD direction's own parameters on a mixer."""

    conv1d: str
    dt_bias: str
    A_log: str
    D: str


FORWARD = DirectionNames("conv1d", "dt_bias", "A_log", "D")
BACKWARD = DirectionNames("conv1d_b", "dt_bias_b", "A_b_log", "D_b")


class SSDInputs(NamedTuple):
    """One direction's SSD arguments, in natural token order.

    ``x`` ``(batch, length, heads, headdim)``; ``dt`` ``(batch, length, heads)``; ``A``, ``D``,
    ``dt_bias`` ``(heads,)`` at least fp32; ``B``, ``C`` ``(batch, length, groups, d_state)``.
    """

    x: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    dt_bias: torch.Tensor


@register_notrace_module  # a leaf for FX tracing: the kernels' argument checks are not traceable
class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer (mamba_ssm's ``Mamba2``), one SSD direction.

    Args:
        d_model: Model width; input and output are ``(batch, length, d_model)``.
        d_state: State size N per head (64 or 128 in the Mamba-2 models).
        d_conv: Width of the causal depthwise convolution over ``[x, B, C]``.
        expand: ``d_inner = expand * d_model``; must give an integer.
        headdim: Channels per head P; ``heads = d_inner / headdim`` must be an integer.
        ngroups: Groups of heads sharing B and C; must divide ``heads``. Also the gated norm's
            groups (``group_size = d_inner / ngroups``), as in mamba_ssm.
        chunk_size: SSD chunk length (speed and memory only).
        A_init_range: ``A = -a`` with ``a ~ U(A_init_range)`` per head.
        dt_min, dt_max, dt_init_floor: ``softplus(dt_bias)`` starts log-uniform in
            ``[dt_min, dt_max]``, floored at ``dt_init_floor``.
        dt_limit: Clamp of ``dt`` after the softplus (``(0, inf)``: none).
        conv_bias: Bias on the convolution.
        bias: Bias on ``in_proj`` and ``out_proj``.
        norm_eps: Epsilon of the gated RMSNorm.
    """

    directions: Tuple[DirectionNames, ...] = (FORWARD,)

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: float = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        A_init_range: Tuple[float, float] = (1, 16),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: Tuple[float, float] = (0.0, math.inf),
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        d_inner = expand * d_model
        if d_model < 1 or d_inner != int(d_inner):
            raise ValueError(f"d_model ({d_model}) * expand ({expand}) must be a positive integer")
        self.d_inner = int(d_inner)
        if headdim < 1 or self.d_inner % headdim:
            raise ValueError(f"headdim ({headdim}) must divide d_inner = expand * d_model = {self.d_inner}")
        self.nheads = self.d_inner // headdim
        if ngroups < 1 or self.nheads % ngroups:
            raise ValueError(f"ngroups ({ngroups}) must divide the number of heads d_inner / headdim = {self.nheads}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must be (low, high) with 0 < low <= high, got {A_init_range!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.headdim = headdim
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        self.A_init_range = tuple(A_init_range)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.dt_limit = tuple(dt_limit)

        n_dirs = len(self.directions)
        self.bc_dim = 2 * ngroups * d_state  # B and C rows of one direction
        self.in_proj = nn.Linear(
            d_model, 2 * self.d_inner + n_dirs * (self.bc_dim + self.nheads), bias=bias, **dd
        )
        for names in self.directions:
            self._add_direction(names, conv_bias, device, dtype)
        self.norm = RMSNormGated(self.d_inner, eps=norm_eps, group_size=self.d_inner // ngroups, **dd)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **dd)
        self.reset_ssm_parameters()

    def _add_direction(self, names: DirectionNames, conv_bias: bool, device, dtype) -> None:
        conv_dim = self.d_inner + self.bc_dim
        # nn.Conv1d only as the parameter holder (mamba_ssm's (channels, 1, d_conv) layout); the
        # convolution itself runs through causal_conv1d.
        setattr(self, names.conv1d, nn.Conv1d(
            conv_dim, conv_dim, self.d_conv, groups=conv_dim, padding=self.d_conv - 1, bias=conv_bias,
            device=device, dtype=dtype,
        ))
        # At least fp32 whatever the module dtype: the decay exp(dt * A) is sensitive to their rounding.
        ssm_dtype = torch.float32 if dtype is None else torch.promote_types(dtype, torch.float32)
        for name in (names.dt_bias, names.A_log, names.D):
            param = nn.Parameter(torch.empty(self.nheads, device=device, dtype=ssm_dtype))
            param._no_weight_decay = True
            setattr(self, name, param)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's initialisation of every direction's ``dt_bias``, ``A_log`` and ``D``.

        ``dt_bias = softplus^-1(dt)`` with ``dt`` log-uniform in ``[dt_min, dt_max]`` (floored),
        ``A_log = log(U(A_init_range))``, ``D = 1``.
        """
        for names in self.directions:
            dt_bias = getattr(self, names.dt_bias)
            log_dt = torch.rand(self.nheads, device=dt_bias.device, dtype=torch.float32)
            log_dt = log_dt * (math.log(self.dt_max) - math.log(self.dt_min)) + math.log(self.dt_min)
            dt = torch.exp(log_dt).clamp(min=self.dt_init_floor)
            dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            A_log = getattr(self, names.A_log)
            A_log.copy_(torch.log(torch.empty_like(A_log, dtype=torch.float32).uniform_(*self.A_init_range)))
            getattr(self, names.D).fill_(1.0)

    @torch.no_grad()
    def rescale_out_proj(self, num_residual_layers: int) -> None:
        """Redraw ``out_proj.weight`` (PyTorch's Linear init) divided by ``sqrt(num_residual_layers)``
        (mamba_ssm's ``rescale_prenorm_residual``)."""
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight.div_(math.sqrt(num_residual_layers))

    def no_weight_decay(self) -> Set[str]:
        """Local names of the parameters that take no weight decay (dt_bias, A_log, D per direction)."""
        return {name for names in self.directions for name in (names.dt_bias, names.A_log, names.D)}

    def _conv_input(self, zxbcdt: torch.Tensor, index: int) -> torch.Tensor:
        """Direction ``index``'s ``[x, B, C]`` rows of the projection, ``(batch, length, conv_dim)``.

        The forward ones are adjacent (mamba_ssm's ``xBC``); the reversed direction's B/C rows
        follow them, so its conv input joins the shared ``x`` to them.
        """
        if index == 0:
            return zxbcdt.narrow(-1, self.d_inner, self.d_inner + self.bc_dim)
        x = zxbcdt.narrow(-1, self.d_inner, self.d_inner)
        bc = zxbcdt.narrow(-1, 2 * self.d_inner + index * self.bc_dim, self.bc_dim)
        return torch.cat([x, bc], dim=-1)

    def _ssd_inputs(self, zxbcdt: torch.Tensor) -> List[SSDInputs]:
        """Conv and split of every direction; ``zxbcdt`` is ``in_proj``'s output."""
        batch, length, _ = zxbcdt.shape
        n_dirs = len(self.directions)
        dt_all = zxbcdt[..., -n_dirs * self.nheads:].unflatten(-1, (n_dirs, self.nheads))
        per_direction = []
        for index, names in enumerate(self.directions):
            conv = getattr(self, names.conv1d)
            xbc = causal_conv1d(
                self._conv_input(zxbcdt, index).transpose(1, 2), conv.weight, conv.bias,
                activation="silu", reverse=index == 1,
            ).transpose(1, 2)
            x, B, C = xbc.split([self.d_inner, self.bc_dim // 2, self.bc_dim // 2], dim=-1)
            per_direction.append(SSDInputs(
                x=x.unflatten(-1, (self.nheads, self.headdim)),
                dt=dt_all[:, :, index],
                A=-torch.exp(getattr(self, names.A_log)),
                B=B.unflatten(-1, (self.ngroups, self.d_state)),
                C=C.unflatten(-1, (self.ngroups, self.d_state)),
                D=getattr(self, names.D),
                dt_bias=getattr(self, names.dt_bias),
            ))
        return per_direction

    def _scan(self, inputs: List[SSDInputs]) -> torch.Tensor:
        """The SSD output ``(batch, length, heads, headdim)``, ungated (the gate is in the norm)."""
        return ssd(**inputs[0]._asdict(), chunk_size=self.chunk_size, dt_softplus=True, dt_limit=self.dt_limit)

    def ssm(self, hidden_states: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Everything before the gated norm: ``(y, z)``, both ``(batch, length, d_inner)``."""
        zxbcdt = self.in_proj(hidden_states)
        z = zxbcdt[..., :self.d_inner]
        y = self._scan(self._ssd_inputs(zxbcdt))
        return y.flatten(-2), z

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states`` ``(batch, length, d_model)`` -> ``(batch, length, d_model)``."""
        y, z = self.ssm(hidden_states)
        return self.out_proj(self.norm(y, z))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.nheads}, headdim={self.headdim}, "
                f"d_state={self.d_state}, ngroups={self.ngroups}")


@register_notrace_module
class BidirectionalMamba2Mixer(Mamba2Mixer):
    """Mamba-2 mixer with a left-to-right and a right-to-left SSD (see the module docstring).

    ``y = y_fwd + y_rev`` (halved when ``average``), then ``out_proj(norm(y * silu(z)))``. One
    ``bidirectional_ssd`` call; the reversed direction reads the sequence backwards, nothing is flipped.

    Args:
        average: Halve the sum of the two directions (as Vim's ``if_divide_out``).
        Others: as :class:`Mamba2Mixer`.
    """

    directions = (FORWARD, BACKWARD)

    def __init__(self, d_model: int, *args, average: bool = True, **kwargs):
        super().__init__(d_model, *args, **kwargs)
        self.average = average

    def _scan(self, inputs: List[SSDInputs]) -> torch.Tensor:
        stacked = SSDInputs(*(torch.stack(per_direction) for per_direction in zip(*inputs)))
        return bidirectional_ssd(
            **stacked._asdict(), chunk_size=self.chunk_size, dt_softplus=True, dt_limit=self.dt_limit,
            average=self.average,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, average={self.average}"
