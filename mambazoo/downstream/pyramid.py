"""Dense-prediction backbones on Vim: single-scale taps and a ViTDet simple feature pyramid.

Vim has one scale (its patch stride, 16 or 8), like a plain ViT. Following ViTDet ("Exploring
Plain Vision Transformer Backbones for Object Detection", Li et al., ECCV 2022), the multi-scale
maps a detector or segmenter wants are made from that single scale by a *simple feature
pyramid*: stride-2 transposed convolutions to go finer, identity at the backbone's stride, max
pooling to go coarser, each followed by a 1x1 and a 3x3 convolution with LayerNorm. No FPN
top-down path is needed (ViTDet shows it adds nothing on a plain backbone).

Everything is built on the timm model's own ``forward_intermediates`` with
``dynamic_img_size=True``: the position embedding is resampled to each input's patch grid, so
any input size works (detection images are not 224 px); nothing of Vim is re-implemented here.

Which blocks feed the pyramid (``out_indices``):
- ``(-1,)`` (default, ViTDet): every level is made from the LAST block's output.
- four blocks, e.g. ``(5, 11, 17, 23)`` for a 24-block model (BEiT / mmseg UperNet style): level
  ``i`` is made from tap ``i``, finest level from the earliest block.

Taps are normalised by the model's final RMSNorm (``norm=True``): the residual stream of a
pre-norm Mamba grows with depth, and ``norm_f`` is what the pretrained classifier learnt to read.

Layouts: images ``(batch, in_chans, H, W)``; every map ``(batch, channels, h, w)`` (NCHW).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import List, Sequence, Tuple, Type, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

__all__ = ["SimpleFeaturePyramid", "VimBackbone", "VimPyramidBackbone"]

DEFAULT_STRIDES = (4, 8, 16, 32)


class VimBackbone(nn.Module):
    """A timm Vim as a single-scale dense backbone: the outputs of chosen blocks as NCHW maps.

    ``forward(images)`` returns a tuple with one ``(batch, embed_dim, H / stride, W / stride)``
    map per entry of ``out_indices`` (the patch grid; the middle class token is dropped). Any
    input size works: the model is created with ``dynamic_img_size=True`` and
    ``dynamic_img_pad=True`` (inputs that are not a multiple of the patch stride are zero-padded
    right/bottom). Blocks after the last tap, and the classifier, are removed.

    Args:
        model_name: A registered Vim (``vim_tiny``, ``vim_small_stride8``, ``test_vim``, ...).
        out_indices: Blocks to tap (negative: from the end); an int ``n`` means the last ``n``.
        norm: Apply the model's final RMSNorm to every tap.
        pretrained: ``True`` loads the model's default pretrained weights; a path loads that
            local file (an official hustvl/Vim checkpoint or one of ours) through the model's
            ``checkpoint_filter_fn``, which resamples ``pos_embed`` to the ``img_size`` grid.
        grad_checkpointing: Recompute each block in the backward pass (saves activation memory).
        **model_kwargs: More ``timm.create_model`` arguments: ``img_size`` (the nominal size the
            position embedding is stored at, e.g. the pretraining 224), ``drop_path_rate``,
            ``in_chans``, ...
    """

    def __init__(
        self,
        model_name: str = "vim_tiny",
        out_indices: Union[int, Sequence[int]] = (-1,),
        norm: bool = True,
        pretrained: Union[bool, str] = False,
        grad_checkpointing: bool = False,
        **model_kwargs,
    ):
        super().__init__()
        if isinstance(pretrained, str):
            model_kwargs["pretrained_cfg_overlay"] = dict(file=pretrained)
        self.model = timm.create_model(
            model_name,
            pretrained=bool(pretrained),
            num_classes=0,
            dynamic_img_size=True,
            dynamic_img_pad=True,
            **model_kwargs,
        )
        indices = list(out_indices) if isinstance(out_indices, Sequence) else out_indices
        self.out_indices: List[int] = self.model.prune_intermediate_layers(
            indices, prune_norm=not norm, prune_head=True
        )
        if any(later <= earlier for earlier, later in zip(self.out_indices, self.out_indices[1:])):
            # forward_intermediates returns one map per tapped block, in block order.
            raise ValueError(f"out_indices must name distinct blocks in increasing order, got {out_indices}")
        self.norm = norm
        self.model.set_grad_checkpointing(grad_checkpointing)
        self.embed_dim: int = self.model.embed_dim
        self.out_channels: List[int] = [self.embed_dim] * len(self.out_indices)
        self.stride: int = self.model.patch_embed.feat_ratio()

    @property
    def pretrained_cfg(self) -> dict:
        """The timm model's pretrained cfg (mean, std, input size it was trained at)."""
        return self.model.pretrained_cfg

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(batch, in_chans, H, W)`` -> one ``(batch, embed_dim, h, w)`` map per tap."""
        return tuple(self.model.forward_intermediates(
            images, self.out_indices, norm=self.norm, output_fmt="NCHW", intermediates_only=True, stop_early=True,
        ))


def _resample(in_channels: int, ratio: float, norm_layer: Type[nn.Module], act_layer: Type[nn.Module]):
    """Resample a map by ``ratio`` (a power of two): ``(module, output channels)``.

    Finer (``ratio > 1``): ``log2(ratio)`` stride-2 transposed convs halving the channels, with
    norm + activation between them (ViTDet's ``4.0``: deconv, LN, GELU, deconv). Same: identity.
    Coarser: max pooling by ``1 / ratio``.
    """
    steps = round(math.log2(ratio))
    if 2.0 ** steps != ratio:
        raise ValueError(f"pyramid strides must differ from the input stride by powers of two, got ratio {ratio}")
    if steps == 0:
        return nn.Identity(), in_channels
    if steps < 0:
        return nn.MaxPool2d(kernel_size=2 ** -steps, stride=2 ** -steps), in_channels
    layers, channels = [], in_channels
    for step in range(steps):
        if channels % 2:
            raise ValueError(f"{in_channels} channels cannot be halved {steps} times for the finest level")
        if step:
            layers += [norm_layer(channels), act_layer()]
        layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
        channels //= 2
    return nn.Sequential(*layers), channels


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: multi-scale maps from single-scale backbone maps.

    Level ``i`` (output stride ``strides[i]``) resamples its input map from ``in_stride`` to
    ``strides[i]`` (transposed convs / identity / max pool, see ``_resample``), then a 1x1 conv
    to ``out_channels`` and a 3x3 conv, each without bias and followed by LayerNorm. With
    ``top_block_pool`` one more level at twice the last stride is the stride-2 subsampling of
    the last level (ViTDet's / torchvision's ``LastLevelMaxPool``, for the RPN's largest anchors).

    ``forward`` takes a sequence of ``(batch, in_channels, h, w)`` maps at ``in_stride`` (a
    single tensor is one map): ONE map feeds every level (ViTDet), or one map per level.
    It returns a tuple of ``(batch, out_channels, ...)`` maps, finest first.

    Args:
        in_channels: Channels of the input maps (the backbone width).
        out_channels: Channels of every output level.
        in_stride: Stride of the input maps (the backbone's patch stride, 16 or 8).
        strides: Output strides; each a power-of-two multiple or fraction of ``in_stride``.
        top_block_pool: Add the extra stride ``2 * strides[-1]`` level (detection; off for
            segmentation heads that take exactly the four levels).
        norm_layer, act_layer: Norm after every conv (LayerNorm over channels, as ViTDet) and
            the activation between transposed convs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        in_stride: int = 16,
        strides: Sequence[int] = DEFAULT_STRIDES,
        top_block_pool: bool = True,
        norm_layer: Type[nn.Module] = LayerNorm2d,
        act_layer: Type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_stride = in_stride
        self.top_block_pool = top_block_pool
        self.levels = nn.ModuleList()
        for stride in strides:
            resample, channels = _resample(in_channels, in_stride / stride, norm_layer, act_layer)
            self.levels.append(nn.Sequential(OrderedDict(
                resample=resample,
                lateral=nn.Conv2d(channels, out_channels, kernel_size=1, bias=False),
                lateral_norm=norm_layer(out_channels),
                output=nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                output_norm=norm_layer(out_channels),
            )))
        self.strides: List[int] = list(strides) + ([2 * strides[-1]] if top_block_pool else [])
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Detectron2's c2_xavier_fill on the 1x1 / 3x3 convs, as ViTDet; the transposed convs
        # keep PyTorch's default.
        for level in self.levels:
            for conv in (level.lateral, level.output):
                nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, features: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor, ...]:
        if isinstance(features, torch.Tensor):
            features = (features,)
        if len(features) == 1:
            features = list(features) * len(self.levels)
        elif len(features) != len(self.levels):
            raise ValueError(
                f"SimpleFeaturePyramid has {len(self.levels)} levels; it takes one map for all of them "
                f"or one map per level, got {len(features)}"
            )
        outputs = [level(feature) for level, feature in zip(self.levels, features)]
        if self.top_block_pool:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return tuple(outputs)


class VimPyramidBackbone(nn.Module):
    """Vim + simple feature pyramid: images -> a tuple of maps at ``strides`` (finest first).

    With the defaults and a stride-16 Vim: ``out_channels``-wide maps at strides 4, 8, 16, 32
    (and 64 with ``top_block_pool``), all made from the last block (ViTDet). For inputs whose
    sides are multiples of the coarsest stride, level ``i`` is exactly ``H / strides[i]`` by
    ``W / strides[i]``.

    Args:
        model_name, out_indices, norm, pretrained, grad_checkpointing, **model_kwargs: as
            :class:`VimBackbone` (``out_indices``: one block for every level, or one per level).
        out_channels, strides, top_block_pool: as :class:`SimpleFeaturePyramid`.
    """

    def __init__(
        self,
        model_name: str = "vim_tiny",
        out_indices: Union[int, Sequence[int]] = (-1,),
        norm: bool = True,
        pretrained: Union[bool, str] = False,
        out_channels: int = 256,
        strides: Sequence[int] = DEFAULT_STRIDES,
        top_block_pool: bool = True,
        grad_checkpointing: bool = False,
        **model_kwargs,
    ):
        super().__init__()
        self.backbone = VimBackbone(
            model_name, out_indices, norm=norm, pretrained=pretrained, grad_checkpointing=grad_checkpointing,
            **model_kwargs,
        )
        self.pyramid = SimpleFeaturePyramid(
            self.backbone.embed_dim, out_channels, in_stride=self.backbone.stride, strides=strides,
            top_block_pool=top_block_pool,
        )
        if len(self.backbone.out_indices) not in (1, len(strides)):
            raise ValueError(
                f"out_indices must name one block (feeding every level) or one per stride {list(strides)}, "
                f"got {out_indices}"
            )
        self.out_channels: int = out_channels
        self.strides: List[int] = self.pyramid.strides

    @property
    def pretrained_cfg(self) -> dict:
        return self.backbone.pretrained_cfg

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(batch, in_chans, H, W)`` -> ``(batch, out_channels, H / s, W / s)`` per stride ``s``."""
        return self.pyramid(self.backbone(images))

