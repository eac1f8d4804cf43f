"""Vision Mamba (Vim)

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space
Model", Zhu et al., ICML 2024 (https://arxiv.org/abs/2401.09417); official code hustvl/Vim.

The released "bimambav2 ... midclstok_div2" architecture: patch embedding (stride 16, or 8 for
the overlapping "+"/stride-8 models), ONE class token inserted in the middle of the patch
sequence, absolute position embedding, ``depth`` mamba_ssm-order blocks (add, RMSNorm,
bidirectional v2 mixer) with the residual in fp32, final add + RMSNorm, and a linear head on the
middle token. Parameter names match the official checkpoints.

Differences from the official code:
- The scans run on ``mambazoo_kernels`` (the reversed direction reads the sequence backwards
  instead of flipping copies); the result is the same function.
- ``dt_proj_b`` gets Mamba's dt initialisation like ``dt_proj`` (the official code leaves it at
  PyTorch's default and then zeroes its bias); only training from scratch sees this.
- ``global_pool='avg'`` (mean of the patch tokens) and ``''`` are offered besides the
  official middle-token pooling.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, RmsNorm, _assert, calculate_drop_path_rates, get_device_dtype, lecun_normal_, to_2tuple, trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model

from ..layers import BidirectionalMambaMixer, MambaBlock, MambaMixer, add_and_norm

__all__ = ["Vim"]

_GLOBAL_POOLS = ("", "avg", "token")


class PatchEmbed(nn.Module):
    """Image to patch tokens, with a patch stride that may be smaller than the patch.

    ``(batch, in_chans, H, W)`` -> ``(batch, num_patches, embed_dim)``; the grid is
    ``(img - patch) // stride + 1`` per side (Vim's stride-8 models overlap their 16 px patches).
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: Union[int, Tuple[int, int]] = 16,
        stride: Union[int, Tuple[int, int]] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride)
        self.grid_size = tuple((i - p) // s + 1 for i, p, s in zip(self.img_size, self.patch_size, self.stride))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _assert(x.shape[-2] == self.img_size[0], f"Input height doesn't match the model's img_size {self.img_size}.")
        _assert(x.shape[-1] == self.img_size[1], f"Input width doesn't match the model's img_size {self.img_size}.")
        return self.proj(x).flatten(2).transpose(1, 2)


class Vim(nn.Module):
    """Vision Mamba: bidirectional Mamba blocks over patch tokens with a middle class token.

    Args:
        in_chans: Input image channels.
        num_classes: Classifier outputs (0: no classifier, ``forward`` returns pooled features).
        global_pool: ``'token'`` (the middle class token, as trained), ``'avg'`` (mean of the patch
            tokens) or ``''`` (no pooling).
        img_size: Input image size.
        patch_size: Patch size.
        stride: Patch stride (default ``patch_size``).
        embed_dim: Token width.
        depth: Number of blocks.
        d_state, expand, d_conv: Mixer state size, inner expansion, conv width.
        norm_eps: RMSNorm epsilon.
        drop_rate: Dropout before the classifier.
        pos_drop_rate: Dropout after the position embedding (the official ``drop_rate``).
        drop_path_rate: Stochastic depth, rising linearly to this rate over the blocks.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: int = 16,
        stride: Optional[int] = None,
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        expand: float = 2,
        d_conv: int = 4,
        norm_eps: float = 1e-5,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        assert global_pool in _GLOBAL_POOLS, f"global_pool must be one of {_GLOBAL_POOLS}, got {global_pool!r}"
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, stride or patch_size, in_chans, embed_dim, **dd)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        # Row num_patches // 2 belongs to the class token (it is added after the insertion).
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        # Block i adds the previous block's mixer output to the residual, so the stochastic depth
        # of mixer i sits in block i + 1 and the last one in the final add (official schedule).
        drop_path_rates = [0.0] + calculate_drop_path_rates(drop_path_rate, depth)
        mixer_layer = partial(BidirectionalMambaMixer, d_state=d_state, d_conv=d_conv, expand=expand)
        self.layers = nn.ModuleList([
            MambaBlock(
                embed_dim, mixer_layer=mixer_layer, norm_layer=RmsNorm, norm_eps=norm_eps,
                drop_path=drop_path_rates[i], residual_in_fp32=True, **dd,
            )
            for i in range(depth)
        ])
        self.drop_path = DropPath(drop_path_rates[depth]) if drop_path_rates[depth] > 0.0 else nn.Identity()
        self.norm_f = RmsNorm(embed_dim, eps=norm_eps, **dd)
        reduction = self.patch_embed.stride[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"layers.{i}") for i in range(depth)]

        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation (the mixers' SSM parameters are set by the mixers)."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            # One residual branch (the mixer) per block.
            layer.mixer.rescale_out_proj(len(self.layers))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Embeddings plus every mixer's A_log / A_b_log, D / D_b and dt biases, by full name.

        Named explicitly because timm's optimizer factory ignores ``_no_weight_decay`` attributes
        and would decay the 2-D ``A_log``.
        """
        names = {"pos_embed", "cls_token"}
        for module_name, module in self.named_modules():
            if isinstance(module, MambaMixer):
                names.update(f"{module_name}.{name}" for name in module.no_weight_decay())
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        return dict(
            stem=r"^cls_token|pos_embed|patch_embed",
            blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in _GLOBAL_POOLS, f"global_pool must be one of {_GLOBAL_POOLS}, got {global_pool!r}"
            self.global_pool = global_pool
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Insert the class token at index ``num_patches // 2``, then add the position embedding."""
        cls_index = x.shape[1] // 2
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :cls_index], cls_token, x[:, cls_index:]], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in_chans, H, W)`` -> tokens ``(batch, num_patches + 1, embed_dim)`` after ``norm_f``.

        The class token sits at index ``num_patches // 2``.
        """
        x = self._pos_embed(self.patch_embed(x))
        hidden_states, residual = x, None
        for layer in self.layers:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                hidden_states, residual = checkpoint(layer, hidden_states, residual)
            else:
                hidden_states, residual = layer(hidden_states, residual)
        x, _ = add_and_norm(hidden_states, residual, self.norm_f, self.drop_path)
        return x

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        """Pool tokens ``(batch, num_patches + 1, embed_dim)`` as ``global_pool`` (or ``pool_type``) says."""
        pool_type = self.global_pool if pool_type is None else pool_type
        cls_index = (x.shape[1] - self.num_prefix_tokens) // 2
        if pool_type == "token":
            return x[:, cls_index]
        if pool_type == "avg":
            return (x.sum(dim=1) - x[:, cls_index]) / (x.shape[1] - self.num_prefix_tokens)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


def _cfg(url: str = "", **kwargs):
    # ImageNet mean/std, bicubic, crop 0.875: what the official models were trained with
    # (their own cfg says 0.5/0.5 and 0.9, which is wrong).
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "fixed_input_size": True,
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vim_tiny": _cfg(),
    "vim_tiny_stride8": _cfg(),
    "vim_small": _cfg(),
    "vim_small_stride8": _cfg(),
    "vim_base": _cfg(),
    "test_vim": _cfg(input_size=(3, 32, 32)),
})


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    if kwargs.get("features_only"):
        raise NotImplementedError("features_only is not supported by Vim yet")
    return build_model_with_cfg(Vim, variant, pretrained, **kwargs)


@register_model
def vim_tiny(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-Ti (7.15 M parameters)."""
    model_args = dict(patch_size=16, embed_dim=192, depth=24)
    return _create_vim("vim_tiny", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_tiny_stride8(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-Ti with overlapping patches (stride 8, 27x27 grid at 224 px)."""
    model_args = dict(patch_size=16, stride=8, embed_dim=192, depth=24)
    return _create_vim("vim_tiny_stride8", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-S (25.8 M parameters)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=24)
    return _create_vim("vim_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small_stride8(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-S with overlapping patches (stride 8, 27x27 grid at 224 px)."""
    model_args = dict(patch_size=16, stride=8, embed_dim=384, depth=24)
    return _create_vim("vim_small_stride8", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_base(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-B (97.6 M parameters)."""
    model_args = dict(patch_size=16, embed_dim=768, depth=24)
    return _create_vim("vim_base", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def test_vim(pretrained: bool = False, **kwargs) -> Vim:
    """A tiny Vim for CI."""
    model_args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, d_state=8)
    return _create_vim("test_vim", pretrained=pretrained, **dict(model_args, **kwargs))
