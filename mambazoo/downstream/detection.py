"""Vim detectors on torchvision: Faster R-CNN and Mask R-CNN over the simple feature pyramid.

torchvision's two-stage detectors take any backbone with an ``out_channels`` attribute whose
forward returns an ``OrderedDict`` of maps. :class:`TorchvisionPyramid` gives a
:class:`~mambazoo.downstream.pyramid.VimPyramidBackbone` that shape, with the level names
torchvision's own FPN backbones use (``"0"`` .. ``"3"`` for strides 4-32, ``"pool"`` for 64), so
the default RoI poolers (which read ``"0"`` .. ``"3"``) and the five-level anchor generator fit.

No FPN is stacked on the pyramid: the simple pyramid already makes ``out_channels``-wide maps at
every stride, and ViTDet found a top-down FPN path adds nothing on a plain backbone.

torchvision's detection modules are imported when a detector is built, not with this module.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .pyramid import DEFAULT_STRIDES, VimPyramidBackbone

__all__ = ["TorchvisionPyramid", "vim_faster_rcnn", "vim_mask_rcnn"]

# torchvision's FPN anchors: one size per level (strides 4..64), three aspect ratios.
DEFAULT_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))


class TorchvisionPyramid(nn.Module):
    """A :class:`VimPyramidBackbone` as a torchvision detection backbone.

    ``forward(images)`` returns ``OrderedDict(name -> (batch, out_channels, h, w))``, names
    ``"0"``, ``"1"``, ... finest first and ``"pool"`` for the extra max-pooled level.
    """

    def __init__(self, pyramid: VimPyramidBackbone):
        super().__init__()
        self.body = pyramid
        self.out_channels: int = pyramid.out_channels
        num_levels = len(pyramid.pyramid.levels)
        self.level_names = [str(i) for i in range(num_levels)] + (["pool"] if pyramid.pyramid.top_block_pool else [])

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return OrderedDict(zip(self.level_names, self.body(images)))


def _backbone_and_heads(
    backbone: str,
    num_classes: int,
    pretrained_backbone: Union[bool, str],
    out_indices: Union[int, Sequence[int]],
    pyramid_channels: int,
    anchor_sizes: Sequence[Tuple[int, ...]],
    box_representation_size: int,
    backbone_kwargs: Optional[dict],
    detector_kwargs: dict,
):
    """The parts Faster and Mask R-CNN share: backbone, anchors, RPN head, box head and predictor.

    ``detector_kwargs`` is completed in place with the backbone's image mean/std unless given.
    """
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, RPNHead, TwoMLPHead

    pyramid = VimPyramidBackbone(
        backbone, out_indices, pretrained=pretrained_backbone, out_channels=pyramid_channels,
        strides=DEFAULT_STRIDES, top_block_pool=True, **(backbone_kwargs or {}),
    )
    body = TorchvisionPyramid(pyramid)
    if len(anchor_sizes) != len(body.level_names):
        raise ValueError(f"anchor_sizes needs one entry per level {body.level_names}, got {len(anchor_sizes)}")
    anchor_generator = AnchorGenerator(tuple(anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    detector_kwargs.setdefault("image_mean", list(pyramid.pretrained_cfg["mean"]))
    detector_kwargs.setdefault("image_std", list(pyramid.pretrained_cfg["std"]))
    # torchvision's default RoI pooler output is 7x7 (box) over the levels "0".."3".
    return dict(
        backbone=body,
        num_classes=None,
        rpn_anchor_generator=anchor_generator,
        rpn_head=RPNHead(pyramid_channels, anchor_generator.num_anchors_per_location()[0]),
        box_head=TwoMLPHead(pyramid_channels * 7 * 7, box_representation_size),
        box_predictor=FastRCNNPredictor(box_representation_size, num_classes),
    )


def vim_faster_rcnn(
    backbone: str = "vim_tiny",
    num_classes: int = 91,
    pretrained_backbone: Union[bool, str] = False,
    out_indices: Union[int, Sequence[int]] = (-1,),
    pyramid_channels: int = 256,
    anchor_sizes: Sequence[Tuple[int, ...]] = DEFAULT_ANCHOR_SIZES,
    box_representation_size: int = 1024,
    backbone_kwargs: Optional[dict] = None,
    **detector_kwargs,
):
    """torchvision ``FasterRCNN`` on a Vim simple feature pyramid (strides 4, 8, 16, 32, 64).

    Args:
        backbone: A registered Vim model name.
        num_classes: Including the background class 0 (torchvision's convention).
        pretrained_backbone: ``True`` (default weights) or a local checkpoint path, see
            :class:`~mambazoo.downstream.pyramid.VimBackbone`.
        out_indices: The blocks feeding the pyramid (default: the last, as ViTDet).
        pyramid_channels: Width of every pyramid level and of the RPN / RoI heads' input.
        anchor_sizes: One tuple of anchor sizes (pixels) per level, finest first.
        box_representation_size: Width of the two-layer box head.
        backbone_kwargs: More ``timm.create_model`` arguments (``img_size``, ``drop_path_rate``...).
        **detector_kwargs: ``FasterRCNN`` arguments (``min_size``, ``max_size``,
            ``box_detections_per_img``, ...). ``image_mean`` / ``image_std`` default to the
            backbone's pretrained cfg.

    Inputs and outputs are torchvision's: a list of ``(3, H, W)`` float images in ``[0, 1]``
    (and targets with ``boxes`` (x1, y1, x2, y2) / ``labels`` when training).
    """
    from torchvision.models.detection import FasterRCNN

    parts = _backbone_and_heads(
        backbone, num_classes, pretrained_backbone, out_indices, pyramid_channels, anchor_sizes,
        box_representation_size, backbone_kwargs, detector_kwargs,
    )
    return FasterRCNN(**parts, **detector_kwargs)


def vim_mask_rcnn(
    backbone: str = "vim_tiny",
    num_classes: int = 91,
    pretrained_backbone: Union[bool, str] = False,
    out_indices: Union[int, Sequence[int]] = (-1,),
    pyramid_channels: int = 256,
    anchor_sizes: Sequence[Tuple[int, ...]] = DEFAULT_ANCHOR_SIZES,
    box_representation_size: int = 1024,
    mask_head_channels: int = 256,
    backbone_kwargs: Optional[dict] = None,
    **detector_kwargs,
):
    """torchvision ``MaskRCNN`` on a Vim simple feature pyramid.

    Arguments as :func:`vim_faster_rcnn`, plus ``mask_head_channels``: width of the four 3x3
    convs and the upsampling layer of the mask head (torchvision's default 256). Targets also
    take ``masks`` ``(num_boxes, H, W)`` uint8; outputs add ``masks`` ``(num, 1, H, W)`` in [0, 1].
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    parts = _backbone_and_heads(
        backbone, num_classes, pretrained_backbone, out_indices, pyramid_channels, anchor_sizes,
        box_representation_size, backbone_kwargs, detector_kwargs,
    )
    mask_head = MaskRCNNHeads(pyramid_channels, [mask_head_channels] * 4, 1)
    mask_predictor = MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes)
    return MaskRCNN(**parts, mask_head=mask_head, mask_predictor=mask_predictor, **detector_kwargs)
