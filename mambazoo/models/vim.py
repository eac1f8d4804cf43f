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
- Position embeddings are resampled to other grids with the class-token row kept apart (it sits
  in the MIDDLE of the sequence); the official fine-tuning script treats row 0 as the class row.

Feature taps (``forward_intermediates`` / ``features_only``): the output of block ``i`` is the
residual stream after adding that block's mixer output, i.e. exactly what block ``i + 1`` (or
the final norm) reads; ``norm=True`` applies ``norm_f`` to every tap, as timm's ViTs do.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, RmsNorm, _assert, calculate_drop_path_rates, get_device_dtype, lecun_normal_, register_notrace_function,
    resample_abs_pos_embed, resample_patch_embed, to_2tuple, trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint, clean_state_dict, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

try:
    from timm.models._input import update_model_input_size
except ImportError:  # timm < 1.0.30 keeps no record of the current input size

    def update_model_input_size(model: nn.Module, img_size, **model_args) -> None:
        pass

from ..layers import BidirectionalMambaMixer, MambaBlock, add_and_norm

__all__ = ["Vim", "checkpoint_filter_fn", "resample_pos_embed", "select_checkpoint_weights"]

_GLOBAL_POOLS = ("", "avg", "token")


@register_notrace_function
def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_size: Sequence[int],
    old_size: Sequence[int],
    interpolation: str = "bicubic",
    antialias: bool = True,
    verbose: bool = False,
) -> torch.Tensor:
    """Resample a middle-class-token position embedding to another patch grid.

    ``pos_embed`` ``(1, old_h * old_w + 1, dim)`` has the class token's row at index
    ``old_h * old_w // 2``. The patch rows (``[:mid]`` and ``[mid + 1:]``) are resampled as a grid
    with timm's ``resample_abs_pos_embed``; the class row is kept as is and reinserted in the
    middle of the new grid, index ``new_h * new_w // 2``. Same dtype as the input.
    """
    new_size, old_size = tuple(new_size), tuple(old_size)
    if new_size == old_size:
        return pos_embed
    mid = (pos_embed.shape[1] - 1) // 2
    _assert(pos_embed.shape[1] - 1 == old_size[0] * old_size[1], "pos_embed rows do not match old_size")
    cls_row = pos_embed[:, mid:mid + 1]
    grid = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)
    grid = resample_abs_pos_embed(
        grid, new_size=new_size, old_size=old_size, num_prefix_tokens=0,
        interpolation=interpolation, antialias=antialias, verbose=verbose,
    )
    new_mid = new_size[0] * new_size[1] // 2
    return torch.cat([grid[:, :new_mid], cls_row, grid[:, new_mid:]], dim=1)


class PatchEmbed(nn.Module):
    """Image to patch grid, with a patch stride that may be smaller than the patch.

    ``(batch, in_chans, H, W)`` -> ``(batch, grid_h, grid_w, embed_dim)`` (NHWC); the grid is
    ``(img - patch) // stride + 1`` per side (Vim's stride-8 models overlap their 16 px patches).

    Args:
        strict_img_size: Require inputs of exactly ``img_size`` (off for dynamic image size).
        dynamic_img_pad: Pad the right/bottom edges so every pixel falls in a patch.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: Union[int, Tuple[int, int]] = 16,
        stride: Union[int, Tuple[int, int]] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride)
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride, device=device, dtype=dtype
        )
        self._set_img_size(img_size)

    def _set_img_size(self, img_size: Union[int, Tuple[int, int]]) -> None:
        self.img_size = to_2tuple(img_size)
        self.grid_size = self.dynamic_feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def feat_ratio(self, as_scalar: bool = True) -> Union[int, Tuple[int, int]]:
        """Input pixels per grid step (the stride)."""
        return max(self.stride) if as_scalar else self.stride

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Grid for an input of ``img_size`` (after the padding ``dynamic_img_pad`` adds)."""
        return tuple(_grid_len(i, p, s, self.dynamic_img_pad) for i, p, s in zip(img_size, self.patch_size, self.stride))

    def set_input_size(
        self,
        img_size: Optional[Union[int, Tuple[int, int]]] = None,
        patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """New nominal input size and/or patch size (the kernel resampled, the stride scaled with it)."""
        new_patch = to_2tuple(patch_size) if patch_size is not None else self.patch_size
        if new_patch != self.patch_size:
            new_stride = tuple(s * n // p for s, n, p in zip(self.stride, new_patch, self.patch_size))
            if any(s * n % p for s, n, p in zip(self.stride, new_patch, self.patch_size)):
                raise ValueError(f"patch_size {new_patch} does not keep the stride ratio {self.stride}/{self.patch_size}")
            old = self.proj
            with torch.no_grad():
                new_proj = nn.Conv2d(
                    old.in_channels, old.out_channels, kernel_size=new_patch, stride=new_stride,
                    bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype,
                )
                new_proj.weight.copy_(resample_patch_embed(old.weight, list(new_patch), verbose=True))
                if old.bias is not None:
                    new_proj.bias.copy_(old.bias)
            for new_param, old_param in zip(new_proj.parameters(), old.parameters()):
                new_param.requires_grad_(old_param.requires_grad)
            self.proj = new_proj.train(old.training)
            self.patch_size, self.stride = new_patch, new_stride
        self._set_img_size(img_size if img_size is not None else self.img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict_img_size:
            _assert(x.shape[-2] == self.img_size[0], f"Input height doesn't match the model's img_size {self.img_size}.")
            _assert(x.shape[-1] == self.img_size[1], f"Input width doesn't match the model's img_size {self.img_size}.")
        if self.dynamic_img_pad:
            x = _pad_to_grid(x, self.patch_size, self.stride)
        return self.proj(x).permute(0, 2, 3, 1)


def _grid_len(size: int, patch: int, stride: int, pad: bool) -> int:
    """Patches along one side; with ``pad`` the last patch may hang over the edge (padded)."""
    if pad:
        return max(math.ceil((size - patch) / stride), 0) + 1
    return (size - patch) // stride + 1


@register_notrace_function
def _pad_to_grid(x: torch.Tensor, patch_size: Tuple[int, int], stride: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``(batch, chans, H, W)`` right/bottom so the patch grid covers every pixel."""
    height, width = x.shape[-2:]
    padded = [(_grid_len(n, p, s, True) - 1) * s + p for n, p, s in zip((height, width), patch_size, stride)]
    return F.pad(x, (0, padded[1] - width, 0, padded[0] - height))


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
        dynamic_img_size: Accept any input size; the position embedding is resampled per forward.
        dynamic_img_pad: Pad inputs so the patch grid covers every pixel.
        embed_dim: Token width.
        depth: Number of blocks.
        d_state, expand, d_conv: Mixer state size, inner expansion, conv width.
        norm_eps: RMSNorm epsilon.
        drop_rate: Dropout before the classifier.
        pos_drop_rate: Dropout after the position embedding (the official ``drop_rate``).
        drop_path_rate: Stochastic depth, rising linearly to this rate over the blocks.
        mixer_layer: Builds each block's mixer as ``mixer_layer(embed_dim, device=, dtype=)``;
            ``None`` is Vim's bidirectional Mamba-1 mixer from ``d_state``, ``expand``, ``d_conv``
            (other families, e.g. vim2, pass their own mixer and leave those three unused).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: int = 16,
        stride: Optional[int] = None,
        dynamic_img_size: bool = False,
        dynamic_img_pad: bool = False,
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        expand: float = 2,
        d_conv: int = 4,
        norm_eps: float = 1e-5,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mixer_layer: Optional[Callable[..., nn.Module]] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        assert global_pool in _GLOBAL_POOLS, f"global_pool must be one of {_GLOBAL_POOLS}, got {global_pool!r}"
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size, patch_size, stride or patch_size, in_chans, embed_dim,
            strict_img_size=not dynamic_img_size, dynamic_img_pad=dynamic_img_pad, **dd,
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        # Row num_patches // 2 belongs to the class token (it is added after the insertion).
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        # Block i adds the previous block's mixer output to the residual, so the stochastic depth
        # of mixer i sits in block i + 1 and the last one in the final add (official schedule).
        drop_path_rates = [0.0] + calculate_drop_path_rates(drop_path_rate, depth)
        if mixer_layer is None:
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
        reduction = self.patch_embed.feat_ratio()
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"layers.{i}") for i in range(depth)]

        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self._init_official()

    @torch.no_grad()
    def _init_official(self) -> None:
        """The official initialisation on top of the modules' own (mixers set their SSM parameters)."""
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

    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-initialise every parameter (e.g. after ``to_empty``), then apply the official init."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_ssm_parameters"):  # the mixers
                module.reset_ssm_parameters()
        self._init_official()

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Embeddings plus every mixer's A_log / A_b_log, D / D_b and dt biases, by full name.

        Named explicitly because timm's optimizer factory ignores ``_no_weight_decay`` attributes
        and would decay the 2-D ``A_log``.
        """
        names = {"pos_embed", "cls_token"}
        for module_name, module in self.named_modules():
            if module is not self and hasattr(module, "no_weight_decay"):  # the mixers
                names.update(f"{module_name}.{name}" for name in module.no_weight_decay())
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        """Stem, one group per block (norm_f joins the last block), as timm's ViTs for layer decay."""
        return dict(
            stem=r"^(?:cls_token|pos_embed|patch_embed)",
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
        self.head.train(self.training)

    def set_input_size(
        self,
        img_size: Optional[Union[int, Tuple[int, int]]] = None,
        patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """Change the nominal input size and/or patch size; ``pos_embed`` follows the new grid."""
        prev_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        if self.patch_embed.grid_size != prev_grid:
            with torch.no_grad():
                pos_embed = resample_pos_embed(self.pos_embed, self.patch_embed.grid_size, prev_grid, verbose=True)
            self.pos_embed = nn.Parameter(pos_embed, requires_grad=self.pos_embed.requires_grad)
        for info in self.feature_info:
            info["reduction"] = self.patch_embed.feat_ratio()
        # Recorded for timm's export config; the stride follows a patch change (overlap ratio kept).
        stride = self.patch_embed.stride[0] if patch_size is not None else None
        update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size, stride=stride)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch grid ``(batch, H, W, dim)`` -> tokens ``(batch, H * W + 1, dim)``.

        The class token goes in at index ``H * W // 2``, then the position embedding is added
        (resampled to ``(H, W)`` first when the image size is dynamic).
        """
        batch, height, width, _ = x.shape
        if self.dynamic_img_size:
            pos_embed = resample_pos_embed(self.pos_embed, (height, width), self.patch_embed.grid_size)
        else:
            pos_embed = self.pos_embed
        x = x.flatten(1, 2)
        cls_index = x.shape[1] // 2
        cls_token = self.cls_token.expand(batch, -1, -1)
        x = torch.cat([x[:, :cls_index], cls_token, x[:, cls_index:]], dim=1)
        return self.pos_drop(x + pos_embed)

    def _run_layer(
        self, layer: nn.Module, hidden_states: torch.Tensor, residual: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(layer, hidden_states, residual)
        return layer(hidden_states, residual)

    def _drop_path_after(self, index: int) -> nn.Module:
        """The stochastic depth applied to block ``index``'s mixer output when it joins the stream."""
        return self.layers[index + 1].drop_path if index + 1 < len(self.layers) else self.drop_path

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the outputs of the chosen blocks.

        A block's output is the residual stream after its mixer output is added (what the next
        block or ``norm_f`` reads), in the model's activation dtype; ``norm=True`` applies
        ``norm_f`` to each. The middle class token is taken out of each tap.

        Args:
            x: Images ``(batch, in_chans, H, W)``.
            indices: Last n blocks if int, all if None, else the listed ones (negative from the end).
            return_prefix_tokens: Return ``(patch map, class token (batch, 1, dim))`` pairs.
            norm: Apply ``norm_f`` to every tap.
            stop_early: Stop after the last tapped block (the final output then ends there too).
            output_fmt: ``'NCHW'`` maps ``(batch, dim, grid_h, grid_w)`` or ``'NLC'`` tokens.
            intermediates_only: Return only the taps.

        Returns:
            The taps, or ``(forward_features output, taps)``.
        """
        assert output_fmt in ("NCHW", "NLC"), "Output format must be one of NCHW or NLC."
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        batch, _, height, width = x.shape
        x = self._pos_embed(self.patch_embed(x))
        tap_norm = self.norm_f if norm else nn.Identity()

        layers = self.layers[:max_index + 1] if stop_early else self.layers
        hidden_states, residual = x, None
        intermediates = []
        for i, layer in enumerate(layers):
            hidden_states, residual = self._run_layer(layer, hidden_states, residual)
            if i in take_indices:
                # Fold the add into the stream here, so the tap is exactly what the next block
                # (or norm_f) reads: that block then starts from (stream, None).
                tapped, stream = add_and_norm(hidden_states, residual, tap_norm, self._drop_path_after(i))
                intermediates.append(tapped.to(x.dtype))
                hidden_states, residual = stream, None

        cls_index = (x.shape[1] - 1) // 2
        prefix_tokens = [y[:, cls_index:cls_index + 1] for y in intermediates]
        intermediates = [torch.cat([y[:, :cls_index], y[:, cls_index + 1:]], dim=1) for y in intermediates]
        if output_fmt == "NCHW":
            grid_h, grid_w = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [
                y.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates
            ]
        if not torch.jit.is_scripting() and return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates

        x, _ = add_and_norm(hidden_states, residual, self.norm_f, self.drop_path)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last of ``indices`` (and optionally ``norm_f`` / the head).

        Returns the absolute indices to pass to ``forward_intermediates``.
        """
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        # The mixer output of the new last block keeps the stochastic depth it had before.
        self.drop_path = self._drop_path_after(max_index)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in_chans, H, W)`` -> tokens ``(batch, num_patches + 1, embed_dim)`` after ``norm_f``.

        The class token sits at index ``num_patches // 2``.
        """
        x = self._pos_embed(self.patch_embed(x))
        hidden_states, residual = x, None
        for layer in self.layers:
            hidden_states, residual = self._run_layer(layer, hidden_states, residual)
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


_WEIGHT_KEYS_EMA_FIRST = ("state_dict_ema", "model_ema", "state_dict", "model")


def select_checkpoint_weights(checkpoint: Dict, use_ema: bool = True) -> Tuple[Optional[str], Dict[str, torch.Tensor]]:
    """``(key, state dict)`` inside a training checkpoint (``{'model': ..., 'model_ema': ..., 'args': ...}``).

    Same rule as ``timm.models.load_state_dict``: EMA weights first when ``use_ema`` and present,
    then ``state_dict``, then ``model``; everything else in the file (args, optimizer, epoch) is
    dropped. A plain state dict comes back as ``(None, checkpoint)``.
    """
    keys = _WEIGHT_KEYS_EMA_FIRST if use_ema else _WEIGHT_KEYS_EMA_FIRST[2:]
    for key in keys:
        if isinstance(checkpoint.get(key), dict):
            return key, checkpoint[key]
    return None, checkpoint


def _checkpoint_grid(model: Vim, num_patches: int) -> Tuple[int, int]:
    """The patch grid a checkpoint's ``pos_embed`` was trained on.

    The model's pretrained input size (with its patch geometry) when that accounts for every row,
    else a square grid; anything else cannot be inferred.
    """
    source_size = getattr(model, "pretrained_model_args", {}).get("img_size")
    if source_size is None:
        source_size = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-2:]
    grid = model.patch_embed.dynamic_feat_size(to_2tuple(source_size))
    if grid[0] * grid[1] == num_patches:
        return grid
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    raise ValueError(
        f"Cannot tell the patch grid of a pos_embed with {num_patches} patch rows: it is neither the "
        f"pretrained input size's grid {grid} nor square. Create the model at the checkpoint's img_size."
    )


def checkpoint_filter_fn(state_dict: Dict, model: Vim, use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """Map an official hustvl/Vim checkpoint (or one of ours) onto ``model``.

    - Training-checkpoint wrappers (``model`` / ``model_ema`` / ``args`` / optimizer ...) are
      unwrapped like ``timm.models.load_state_dict`` does for ``pretrained_cfg_overlay=dict(file=...)``:
      EMA weights when present (``use_ema=False`` picks ``model``), so every loading path agrees.
    - ``module.`` / ``_orig_mod.`` prefixes are removed; the official keys are already ours.
    - ``patch_embed.proj.weight`` is resampled to the model's kernel if it differs, and
      ``pos_embed`` to the model's grid with the middle class-token rule (``resample_pos_embed``).

    The classifier and input channels are left to timm's ``load_pretrained`` (it drops the head
    when ``num_classes`` differs and adapts the first conv for other ``in_chans``).
    """
    state_dict = clean_state_dict(select_checkpoint_weights(state_dict, use_ema)[1])
    out = {}
    for key, value in state_dict.items():
        if key == "patch_embed.proj.weight" and value.shape[-2:] != model.patch_embed.proj.weight.shape[-2:]:
            value = resample_patch_embed(value, list(model.patch_embed.patch_size), verbose=True)
        elif key == "pos_embed" and value.shape[1] != model.pos_embed.shape[1]:
            old_grid = _checkpoint_grid(model, value.shape[1] - 1)
            value = resample_pos_embed(value, model.patch_embed.grid_size, old_grid, verbose=True)
        out[key] = value
    return out


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


def _official_cfg(hf_hub_id: str, hf_hub_filename: str, top1: float, **kwargs):
    """A released hustvl/Vim checkpoint: a training checkpoint ({model, model_ema, args, ...})."""
    return _cfg(
        hf_hub_id=hf_hub_id, hf_hub_filename=hf_hub_filename,
        origin_url="https://github.com/hustvl/Vim", paper_ids="arXiv:2401.09417",
        paper_name="Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model",
        notes=(f"official ImageNet-1k top-1 {top1}",),
        **kwargs,
    )


_FINER = "fine-tuned 30 epochs at patch stride 8 from the stride-16 model (the '+' model)"

default_cfgs = generate_default_cfgs({
    "vim_tiny.in1k": _official_cfg("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth", 76.1),
    "vim_tiny_stride8.in1k": _official_cfg(
        "hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth", 78.3, description=_FINER),
    "vim_small.in1k": _official_cfg("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth", 80.5),
    "vim_small_stride8.in1k": _official_cfg(
        "hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth", 81.6, description=_FINER),
    "vim_base.in1k": _official_cfg("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth", 81.9),
    "test_vim": _cfg(input_size=(3, 32, 32)),
})


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        Vim, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


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
    """A tiny Vim for CI (three blocks: timm's feature tests want three feature levels)."""
    model_args = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, d_state=8)
    return _create_vim("test_vim", pretrained=pretrained, **dict(model_args, **kwargs))
