"""Mamba-1 (S6) mixers: the one-directional mixer of mamba_ssm and Vim's bidirectional "v2" mixer.

Parameter names follow mamba_ssm (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``,
``D``, ``out_proj``) and Vim for the reversed direction (``conv1d_b``, ``x_proj_b``,
``dt_proj_b``, ``A_b_log``, ``D_b``), so official checkpoints load without renames.

Layouts: the mixers take and return ``(batch, length, d_model)``; inside, the kernels take
``(batch, d_inner, length)`` tensors, here transposed views of the linear layers' ``(batch, length,
d_inner)`` outputs (channel-last), which the Triton conv and scan read and write in place.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from mambazoo_kernels import (
    bidirectional_selective_scan, causal_conv1d, causal_conv1d_update, channel_last, selective_scan,
    selective_state_update,
)

__all__ = ["MambaMixer", "BidirectionalMambaMixer"]


class DirectionNames(NamedTuple):
    """Attribute names of one scan direction's parameters on a mixer."""

    conv1d: str
    x_proj: str
    dt_proj: str
    A_log: str
    D: str


FORWARD = DirectionNames("conv1d", "x_proj", "dt_proj", "A_log", "D")
# Vim's names; the odd ``A_b_log`` is what the official checkpoints use.
BACKWARD = DirectionNames("conv1d_b", "x_proj_b", "dt_proj_b", "A_b_log", "D_b")


def _no_weight_decay_names(names: DirectionNames) -> Tuple[str, ...]:
    """A direction's parameters that take no weight decay (as in mamba_ssm, plus the dt bias)."""
    return names.A_log, names.D, f"{names.dt_proj}.bias"


class ScanInputs(NamedTuple):
    """One direction's selective-scan arguments, all in natural token order.

    ``u``, ``delta`` ``(batch, d_inner, length)``; ``A`` ``(d_inner, d_state)`` fp32;
    ``B``, ``C`` ``(batch, d_state, length)``; ``D``, ``delta_bias`` ``(d_inner,)`` fp32.
    """

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    delta_bias: torch.Tensor


# Leaves for FX tracing (timm's feature extraction): the kernels' argument checks are not traceable.
@register_notrace_module
class MambaMixer(nn.Module):
    """Mamba-1 selective state-space mixer (mamba_ssm's ``Mamba``), one scan direction.

    ``x, z = in_proj(h)``; ``x = silu(causal_conv1d(x))``; ``dt, B, C = x_proj(x)``;
    ``y = selective_scan(x, dt_proj(dt), A, B, C, D, z)`` with softplus on ``delta``;
    ``out = out_proj(y)``.

    Args:
        d_model: Model width; input and output are ``(batch, length, d_model)``.
        d_state: State size N per channel.
        d_conv: Width of the causal depthwise convolution.
        expand: ``d_inner = expand * d_model``.
        dt_rank: Rank of the ``delta`` projection; ``"auto"`` is ``ceil(d_model / 16)``.
        dt_min, dt_max, dt_init_floor: ``softplus(dt_proj.bias)`` starts log-uniform in
            ``[dt_min, dt_max]``, floored at ``dt_init_floor``.
        conv_bias: Bias on the convolution.
        bias: Bias on ``in_proj`` and ``out_proj``.
    """

    directions: Tuple[DirectionNames, ...] = (FORWARD,)

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: Union[int, str] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init_floor = dt_init_floor

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **dd)
        for names in self.directions:
            self._add_direction(names, conv_bias, device, dtype)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **dd)
        self.reset_ssm_parameters()

    def _add_direction(self, names: DirectionNames, conv_bias: bool, device, dtype) -> None:
        dd = {"device": device, "dtype": dtype}
        d_inner = self.d_inner
        # nn.Conv1d only as the parameter holder (official layout (d_inner, 1, d_conv)); the
        # convolution itself runs through causal_conv1d.
        setattr(self, names.conv1d, nn.Conv1d(
            d_inner, d_inner, self.d_conv, groups=d_inner, padding=self.d_conv - 1, bias=conv_bias, **dd,
        ))
        setattr(self, names.x_proj, nn.Linear(d_inner, self.dt_rank + 2 * self.d_state, bias=False, **dd))
        setattr(self, names.dt_proj, nn.Linear(self.dt_rank, d_inner, bias=True, **dd))
        # A_log and D are at least fp32 whatever the module dtype (fp64 stays fp64): the scan's
        # decay exp(delta * A) is sensitive to their rounding.
        ssm_dtype = torch.float32 if dtype is None else torch.promote_types(dtype, torch.float32)
        setattr(self, names.A_log, nn.Parameter(torch.empty(d_inner, self.d_state, device=device, dtype=ssm_dtype)))
        setattr(self, names.D, nn.Parameter(torch.empty(d_inner, device=device, dtype=ssm_dtype)))
        for name in _no_weight_decay_names(names):
            self.get_parameter(name)._no_weight_decay = True

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of every direction's SSM parameters.

        S4D-real ``A = -(1..N)`` per channel, ``D = 1``, ``dt_proj.weight ~ U(+-dt_rank**-0.5)``
        and ``dt_proj.bias = softplus^-1(dt)`` with ``dt`` log-uniform in ``[dt_min, dt_max]``.
        """
        for names in self.directions:
            dt_proj = getattr(self, names.dt_proj)
            bound = self.dt_rank ** -0.5
            nn.init.uniform_(dt_proj.weight, -bound, bound)
            log_dt = torch.rand(self.d_inner, device=dt_proj.bias.device, dtype=torch.float32)
            log_dt = log_dt * (math.log(self.dt_max) - math.log(self.dt_min)) + math.log(self.dt_min)
            dt = torch.exp(log_dt).clamp(min=self.dt_init_floor)
            # softplus^-1(dt) = dt + log(1 - exp(-dt)), written with expm1 for small dt.
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            A_log = getattr(self, names.A_log)
            states = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=A_log.device)
            A_log.copy_(torch.log(states).expand_as(A_log))
            getattr(self, names.D).fill_(1.0)

    @torch.no_grad()
    def rescale_out_proj(self, num_residual_layers: int) -> None:
        """Redraw ``out_proj.weight`` (PyTorch's Linear init) divided by ``sqrt(num_residual_layers)``.

        mamba_ssm's ``rescale_prenorm_residual`` (GPT-2 scheme): keeps the residual stream's
        variance independent of depth at init.
        """
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight.div_(math.sqrt(num_residual_layers))

    def no_weight_decay(self) -> Set[str]:
        """Local names of the parameters that take no weight decay (A_log, D, dt bias per direction)."""
        return {name for names in self.directions for name in _no_weight_decay_names(names)}

    def _direction_inputs(self, x: torch.Tensor, names: DirectionNames, reverse: bool) -> ScanInputs:
        """Conv, x_proj and dt_proj of one direction; ``x`` is ``(batch, d_inner, length)``.

        ``reverse`` makes the convolution anti-causal, which equals running it causally on the
        flipped sequence and flipping back; everything else here is per token.
        """
        conv1d = getattr(self, names.conv1d)
        dt_proj = getattr(self, names.dt_proj)
        u = causal_conv1d(x, conv1d.weight, conv1d.bias, activation="silu", reverse=reverse)
        x_dbl = F.linear(u.transpose(1, 2), getattr(self, names.x_proj).weight)  # (batch, length, r + 2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj's bias goes to the scan as delta_bias (added in fp32 before the softplus).
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)
        return ScanInputs(
            u=u,
            delta=delta,
            A=-torch.exp(getattr(self, names.A_log).float()),
            B=B.transpose(1, 2),
            C=C.transpose(1, 2),
            D=getattr(self, names.D).float(),
            delta_bias=dt_proj.bias.float(),
        )

    def _mix(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The gated scan: ``x``, ``z`` and the result are ``(batch, d_inner, length)``."""
        scan = self._direction_inputs(x, FORWARD, reverse=False)
        return selective_scan(**scan._asdict(), z=z, delta_softplus=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states`` ``(batch, length, d_model)`` -> ``(batch, length, d_model)``."""
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        y = self._mix(x, z)
        return self.out_proj(y.transpose(1, 2))

    def allocate_inference_cache(
        self, batch_size: int, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zero states for :meth:`step`: ``conv_state`` ``(batch, d_inner, d_conv)`` in ``dtype``
        (default: the conv weight's) and ``ssm_state`` ``(batch, d_inner, d_state)`` in fp32 (fp64
        for an fp64 module), on ``device`` (default: the parameters')."""
        if len(self.directions) != 1:
            raise NotImplementedError(f"{type(self).__name__} scans both directions and cannot decode token by token")
        weight = self.conv1d.weight
        device = weight.device if device is None else device
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, dtype=dtype or weight.dtype, device=device)
        ssm_dtype = torch.promote_types(self.A_log.dtype, torch.float32)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, dtype=ssm_dtype, device=device)
        return conv_state, ssm_state

    def step(self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One token of recurrent generation (mamba_ssm's ``Mamba.step``).

        ``hidden_states`` ``(batch, 1, d_model)`` -> ``(batch, 1, d_model)``; ``conv_state`` and
        ``ssm_state`` (from :meth:`allocate_inference_cache`) are updated in place, so stepping
        through a sequence reproduces :meth:`forward` token by token.
        """
        if len(self.directions) != 1:
            raise NotImplementedError(f"{type(self).__name__} scans both directions and cannot decode token by token")
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
            raise ValueError(f"hidden_states must have shape (batch, 1, d_model), got {tuple(hidden_states.shape)}")
        x, z = self.in_proj(hidden_states[:, 0]).chunk(2, dim=-1)  # (batch, d_inner) each
        u = causal_conv1d_update(x, conv_state, self.conv1d.weight, self.conv1d.bias, activation="silu")
        dt, B, C = F.linear(u, self.x_proj.weight).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        y = selective_state_update(
            ssm_state, u, F.linear(dt, self.dt_proj.weight), -torch.exp(self.A_log.float()), B, C,
            D=self.D.float(), z=z, dt_bias=self.dt_proj.bias.float(), dt_softplus=True,
        )
        return self.out_proj(y).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}"


def _stack_keeping_layout(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` that keeps channel-last ``(..., dim, L)`` views channel-last."""
    if tensors[0].dim() >= 3 and channel_last(*tensors):
        return torch.stack([t.transpose(-1, -2) for t in tensors]).transpose(-1, -2)
    return torch.stack(tensors)


@register_notrace_module
class BidirectionalMambaMixer(MambaMixer):
    """Vim's bidirectional "v2" mixer: one scan left to right, one right to left.

    ``in_proj`` and ``out_proj`` are shared; each direction has its own conv, x_proj, dt_proj,
    A and D. Official semantics: the reversed direction runs the Mamba core on the flipped
    ``xz`` (z flipped too) and its output is flipped back; the two are summed (halved when
    ``average``), then ``out_proj``. Gating is per token, so this is
    ``(y_fwd + y_rev) * silu(z)``, which one ``bidirectional_selective_scan`` computes in natural
    order, the reversed direction reading the sequence backwards (no flip copies).

    Args:
        average: Divide the sum by 2 (Vim's ``if_divide_out``; all official models use it).
        Others: as :class:`MambaMixer`.
    """

    directions = (FORWARD, BACKWARD)

    def __init__(self, d_model: int, *args, average: bool = True, **kwargs):
        super().__init__(d_model, *args, **kwargs)
        self.average = average

    def _mix(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        scans = [self._direction_inputs(x, names, reverse=index == 1) for index, names in enumerate(self.directions)]
        # stacked along a new first axis, u and delta stay channel-last views (as the linear
        # layers and the conv give them), which the Triton scan reads in place
        stacked = ScanInputs(*(_stack_keeping_layout(per_direction) for per_direction in zip(*scans)))
        return bidirectional_selective_scan(**stacked._asdict(), z=z, delta_softplus=True, average=self.average)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, average={self.average}"
