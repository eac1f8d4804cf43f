"""An independent float64 Vision Mamba: the official forward, written from a state dict.

Nothing here uses mambazoo: the mixer is hustvl/Vim's "v2" bidirectional Mamba
(``mamba_simple.py`` with ``bimamba_type="v2"``, ``if_divide_out=True``) with a sequential
selective scan, the model is ``VisionMamba.forward`` in eval mode (fused add + RMSNorm path,
middle class token, head on that token). ``official_state_dict`` builds a checkpoint in the
official layout from the documented shapes (FACTS.md section 3) with asymmetric values, so
swapping the two scan directions or reading the wrong class-token row changes the output.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

MIXER_KEYS = (
    "A_log", "D", "A_b_log", "D_b", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
    "dt_proj.weight", "dt_proj.bias", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight",
    "dt_proj_b.weight", "dt_proj_b.bias", "out_proj.weight",
)


def official_state_dict(
    embed_dim: int,
    depth: int,
    d_state: int,
    patch_size: int,
    num_patches: int,
    num_classes: int = 1000,
    in_chans: int = 3,
    d_conv: int = 4,
    expand: int = 2,
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """A float32 state dict with the official keys and shapes, random but trained-looking values.

    Each direction's parameters are drawn independently (so a forward/backward swap shows), every
    ``pos_embed`` row differs and the class token is large, so a wrong class row shows too.
    """
    gen = torch.Generator().manual_seed(seed)
    d_inner = expand * embed_dim
    dt_rank = math.ceil(embed_dim / 16)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    def uniform(*shape, low=0.0, high=1.0):
        return torch.rand(*shape, generator=gen) * (high - low) + low

    sd = {
        "patch_embed.proj.weight": randn(embed_dim, in_chans, patch_size, patch_size,
                                         scale=(in_chans * patch_size ** 2) ** -0.5),
        "patch_embed.proj.bias": randn(embed_dim, scale=0.1),
        "cls_token": randn(1, 1, embed_dim),
        "pos_embed": randn(1, num_patches + 1, embed_dim, scale=0.5),
        "norm_f.weight": uniform(embed_dim, low=0.5, high=1.5),
        "head.weight": randn(num_classes, embed_dim, scale=embed_dim ** -0.5),
        "head.bias": randn(num_classes, scale=0.1),
    }
    for i in range(depth):
        p = f"layers.{i}."
        sd[p + "norm.weight"] = uniform(embed_dim, low=0.5, high=1.5)
        sd[p + "mixer.in_proj.weight"] = randn(2 * d_inner, embed_dim, scale=embed_dim ** -0.5)
        sd[p + "mixer.out_proj.weight"] = randn(embed_dim, d_inner, scale=d_inner ** -0.5)
        for suffix, a_name, d_name in (("", "A_log", "D"), ("_b", "A_b_log", "D_b")):
            sd[p + f"mixer.conv1d{suffix}.weight"] = randn(d_inner, 1, d_conv, scale=d_conv ** -0.5)
            sd[p + f"mixer.conv1d{suffix}.bias"] = randn(d_inner, scale=0.1)
            sd[p + f"mixer.x_proj{suffix}.weight"] = randn(dt_rank + 2 * d_state, d_inner, scale=d_inner ** -0.5)
            sd[p + f"mixer.dt_proj{suffix}.weight"] = randn(d_inner, dt_rank, scale=dt_rank ** -0.5)
            dt = torch.exp(uniform(d_inner, low=math.log(1e-3), high=math.log(0.1)))
            sd[p + f"mixer.dt_proj{suffix}.bias"] = dt + torch.log(-torch.expm1(-dt))  # softplus^-1
            states = torch.arange(1, d_state + 1, dtype=torch.float32)
            sd[p + f"mixer.{a_name}"] = torch.log(states).expand(d_inner, d_state) + randn(d_inner, d_state, scale=0.3)
            sd[p + f"mixer.{d_name}"] = 1.0 + randn(d_inner, scale=0.3)
    return sd


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _mamba_core(xz: torch.Tensor, sd: Dict[str, torch.Tensor], prefix: str, suffix: str, a_name: str,
                d_name: str, d_state: int) -> torch.Tensor:
    """mamba_inner_fn_no_out_proj on ``xz`` ``(batch, 2 * d_inner, length)``: conv, SSM, gate."""
    x, z = xz.chunk(2, dim=1)
    length = x.shape[-1]
    conv_w, conv_b = sd[prefix + f"conv1d{suffix}.weight"], sd[prefix + f"conv1d{suffix}.bias"]
    x = F.silu(F.conv1d(x, conv_w, conv_b, padding=conv_w.shape[-1] - 1, groups=x.shape[1])[..., :length])
    x_dbl = x.transpose(1, 2) @ sd[prefix + f"x_proj{suffix}.weight"].T  # (batch, length, r + 2N)
    dt_rank = x_dbl.shape[-1] - 2 * d_state
    dt, B, C = x_dbl.split([dt_rank, d_state, d_state], dim=-1)
    delta = F.softplus(dt @ sd[prefix + f"dt_proj{suffix}.weight"].T + sd[prefix + f"dt_proj{suffix}.bias"])
    A = -torch.exp(sd[prefix + a_name])  # (d_inner, N)
    D = sd[prefix + d_name]
    state = x.new_zeros(x.shape[0], x.shape[1], d_state)
    ys = []
    for t in range(length):
        d_t = delta[:, t, :, None]  # (batch, d_inner, 1)
        state = torch.exp(d_t * A) * state + d_t * B[:, t, None, :] * x[:, :, t, None]
        ys.append((state * C[:, t, None, :]).sum(-1) + D * x[:, :, t])
    y = torch.stack(ys, dim=-1)
    return y * F.silu(z)


def bimamba_v2(hidden: torch.Tensor, sd: Dict[str, torch.Tensor], prefix: str, d_state: int,
               swap_directions: bool = False) -> torch.Tensor:
    """The official v2 mixer on ``(batch, length, dim)``: forward scan + scan of the flipped xz, halved."""
    xz = (hidden @ sd[prefix + "in_proj.weight"].T).transpose(1, 2)
    fwd, bwd = ("", "A_log", "D"), ("_b", "A_b_log", "D_b")
    if swap_directions:
        fwd, bwd = bwd, fwd
    out = _mamba_core(xz, sd, prefix, *fwd, d_state)
    out_b = _mamba_core(xz.flip(-1), sd, prefix, *bwd, d_state)
    y = (out + out_b.flip(-1)) / 2
    return y.transpose(1, 2) @ sd[prefix + "out_proj.weight"].T


def official_forward(
    state_dict: Dict[str, torch.Tensor],
    images: torch.Tensor,
    d_state: int,
    stride: Optional[int] = None,
    pre_logits: bool = False,
    cls_row: Optional[int] = None,
    swap_directions: bool = False,
) -> torch.Tensor:
    """VisionMamba.forward (eval) in float64 from an official-layout state dict: logits or pre-logits.

    ``cls_row`` (default: the middle) and ``swap_directions`` exist only to build wrong
    variants for negative controls.
    """
    sd = {k: v.double() for k, v in state_dict.items()}
    _, tokens = official_tokens(sd, images, d_state, stride, cls_row, swap_directions)
    features = tokens[:, (tokens.shape[1] - 1) // 2]
    if pre_logits:
        return features
    return features @ sd["head.weight"].T + sd["head.bias"]


def official_tokens(
    state_dict: Dict[str, torch.Tensor],
    images: torch.Tensor,
    d_state: int,
    stride: Optional[int] = None,
    cls_row: Optional[int] = None,
    swap_directions: bool = False,
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """``(block outputs, final tokens)`` in float64, class token in the middle of each.

    Block ``i``'s output is the residual stream after adding its mixer output (what block
    ``i + 1`` adds to); the final tokens are ``norm_f`` of the last one.
    """
    sd = {k: v.double() for k, v in state_dict.items()}
    patch = sd["patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(images.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                      stride=stride or patch)
    tokens = tokens.flatten(2).transpose(1, 2)
    middle = tokens.shape[1] // 2
    cls = sd["cls_token"].expand(images.shape[0], -1, -1)
    pos_embed = sd["pos_embed"]
    if cls_row is not None:  # a model that thinks the class row is elsewhere: move that row to the middle
        rows = list(range(pos_embed.shape[1]))
        rows.remove(cls_row)
        rows.insert(middle, cls_row)
        pos_embed = pos_embed[:, rows]
    hidden = torch.cat([tokens[:, :middle], cls, tokens[:, middle:]], dim=1) + pos_embed
    depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    residual = None
    block_outputs = []
    for i in range(depth):
        residual = hidden if residual is None else residual + hidden
        hidden = bimamba_v2(rms_norm(residual, sd[f"layers.{i}.norm.weight"]), sd, f"layers.{i}.mixer.", d_state,
                            swap_directions)
        block_outputs.append(residual + hidden)
    return block_outputs, rms_norm(block_outputs[-1], sd["norm_f.weight"])
