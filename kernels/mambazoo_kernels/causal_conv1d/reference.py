"""Causal depthwise conv1d (the Mamba short conv): the PyTorch reference on ``F.conv1d``."""
from __future__ import annotations

import torch.nn.functional as F


def causal_conv1d_reference(x, weight, bias=None, activation=None, reverse=False):
    """Reference for :func:`mambazoo_kernels.causal_conv1d` (same arguments and return)."""
    width = weight.shape[-1]
    # Causal: output t sees x[t-width+1 .. t]; reversed (anti-causal): x[t .. t+width-1], which is
    # the causal conv of the flipped sequence, flipped back, without the two copies.
    padded = F.pad(x, (0, width - 1) if reverse else (width - 1, 0))
    kernel = weight.flip(-1) if reverse else weight
    out = F.conv1d(padded, kernel.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype), groups=x.shape[1])
    return F.silu(out) if activation == "silu" else out
