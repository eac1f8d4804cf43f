"""The mamba_ssm residual block: add, norm, mixer, with the residual stream carried in fp32.

mamba_ssm (and every official Mamba vision/LM checkpoint) orders a block as
``residual = residual + drop_path(hidden); hidden = mixer(norm(residual))`` and returns both,
so the add of one block's output happens at the start of the next one (or in the model's final
add + norm). Layout: ``(batch, length, dim)`` throughout.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath, RmsNorm

from .mixer import MambaMixer

__all__ = ["MambaBlock", "add_and_norm"]


def add_and_norm(
    hidden_states: torch.Tensor,
    residual: Optional[torch.Tensor],
    norm: nn.Module,
    drop_path: nn.Module,
    residual_in_fp32: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``residual += drop_path(hidden_states)`` (or starts at ``hidden_states``), then norm it.

    Returns ``(norm(residual), residual)``; the residual is fp32 when ``residual_in_fp32`` so the
    stream does not lose precision under bf16/fp16 over many layers.
    """
    residual = hidden_states if residual is None else residual + drop_path(hidden_states)
    if residual_in_fp32:
        residual = residual.float()
    weight = getattr(norm, "weight", None)
    normed = norm(residual if weight is None else residual.to(weight.dtype))
    return normed, residual


class MambaBlock(nn.Module):
    """Add -> norm -> mixer (mamba_ssm's ``Block``).

    Args:
        dim: Width of the residual stream.
        mixer_layer: Builds the mixer as ``mixer_layer(dim, device=, dtype=)``.
        norm_layer: Norm class called as ``norm_layer(dim, eps=norm_eps, device=, dtype=)``
            (timm's ``RmsNorm`` for Vim; ``nn.LayerNorm`` for families trained with it).
        norm_eps: Norm epsilon.
        drop_path: Stochastic-depth rate applied to the incoming ``hidden_states`` (the previous
            block's mixer output) before it joins the residual.
        residual_in_fp32: Keep the residual stream in fp32.
    """

    def __init__(
        self,
        dim: int,
        mixer_layer: Callable[..., nn.Module] = MambaMixer,
        norm_layer: Callable[..., nn.Module] = RmsNorm,
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
        residual_in_fp32: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer_layer(dim, **dd)
        self.norm = norm_layer(dim, eps=norm_eps, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self, hidden_states: torch.Tensor, residual: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``hidden_states`` ``(batch, length, dim)`` and the residual (``None`` for the first block).

        Returns ``(mixer output, residual)``; the caller adds the two (next block or final norm).
        """
        hidden_states, residual = add_and_norm(
            hidden_states, residual, self.norm, self.drop_path, self.residual_in_fp32
        )
        return self.mixer(hidden_states), residual
