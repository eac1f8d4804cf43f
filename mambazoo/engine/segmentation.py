"""Semantic segmentation on mmengine without mmseg: preprocessor, UperNet / FCN heads, segmentor.

The pieces follow mmseg 1.x (``SegDataPreProcessor``, ``UPerHead``, ``FCNHead``,
``EncoderDecoder`` with whole / slide inference) so its configs translate key by key; they are
registered in mmengine's root ``MODELS`` under their own names (``SegDataPreProcessor``,
``UperNetHead``, ``FCNHead``, ``SegEncoderDecoder``). The backbone is any ``MODELS`` entry that
maps ``(batch, 3, H, W)`` images to a tuple of NCHW maps, e.g. ``VimPyramidBackbone`` (strides
4/8/16/32) from :mod:`mambazoo.downstream`.

Batches are what :class:`mambazoo.data.ade20k.PackSegInputs` items collate to with mmengine's
``pseudo_collate``: ``inputs`` a list of ``uint8`` ``(3, H, W)`` images, ``data_samples`` a
list of ``BaseDataElement`` with ``gt_sem_seg.data`` int64 ``(1, H, W)`` and metainfo.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.registry import MODELS
from mmengine.structures import BaseDataElement, PixelData

import mambazoo.downstream  # noqa: F401  (registers the Vim backbones in MODELS)

__all__ = ["ConvNormAct", "FCNHead", "SegDataPreProcessor", "SegEncoderDecoder", "UperNetHead"]

NORM_LAYERS = {"BN": nn.BatchNorm2d, "SyncBN": nn.SyncBatchNorm}


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


@MODELS.register_module()
class SegDataPreProcessor(BaseDataPreprocessor):
    """Normalise ``uint8`` images and pad image + label batches, mmseg's ``SegDataPreProcessor``.

    Images ``(3, H, W)`` become ``(x - mean) / std`` (0-255 scale, RGB order: the loader reads
    RGB) and are zero-padded right/bottom to ``size`` in training (``pad_val``; labels with
    ``seg_pad_val`` = the ignore index) or to the largest image of the batch (rounded up to
    ``size_divisor``) otherwise. Each data sample gets ``pad_shape`` and ``padding_size``
    ``(left, right, top, bottom)``, which the segmentor removes from its predictions.

    Returns ``dict(inputs=float (batch, 3, H', W'), data_samples=list)``.
    """

    def __init__(
        self,
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
        size: Optional[Tuple[int, int]] = None,
        size_divisor: Optional[int] = None,
        pad_val: float = 0.0,
        seg_pad_val: int = 255,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.size = tuple(size) if size is not None else None
        self.size_divisor = size_divisor
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        images = data["inputs"]
        samples: Optional[List[BaseDataElement]] = data.get("data_samples")
        if isinstance(images, torch.Tensor):
            images = list(images)
        height = max(img.shape[-2] for img in images)
        width = max(img.shape[-1] for img in images)
        if training and self.size is not None:
            height, width = max(height, self.size[0]), max(width, self.size[1])
        if self.size_divisor:
            height = -(-height // self.size_divisor) * self.size_divisor
            width = -(-width // self.size_divisor) * self.size_divisor
        batch = []
        for index, img in enumerate(images):
            pad = (0, width - img.shape[-1], 0, height - img.shape[-2])
            batch.append(F.pad((img.float() - self.mean) / self.std, pad, value=self.pad_val))
            if samples is not None:
                samples[index].set_metainfo(dict(pad_shape=(height, width), padding_size=pad))
                if "gt_sem_seg" in samples[index]:
                    gt = samples[index].gt_sem_seg.data
                    samples[index].gt_sem_seg = PixelData(data=F.pad(gt, pad, value=self.seg_pad_val))
        return dict(inputs=torch.stack(batch), data_samples=samples)


class ConvNormAct(nn.Sequential):
    """Conv (no bias) + BatchNorm/SyncBN + ReLU, mmcv's ``ConvModule`` with a norm, and its init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str = "BN") -> None:
        if norm not in NORM_LAYERS:
            raise ValueError(f"norm must be one of {list(NORM_LAYERS)}, got {norm!r}")
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            NORM_LAYERS[norm](out_channels),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


class _DecodeHead(nn.Module):
    """Dropout + 1x1 classifier (``conv_seg``, init N(0, 0.01)) shared by the heads, and their loss."""

    def __init__(self, channels: int, num_classes: int, dropout_ratio: float, loss_weight: float, ignore_index: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.ignore_index = ignore_index
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(features))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Cross-entropy of ``logits`` upsampled to ``labels`` ``(batch, H, W)``, averaged over
        the labelled pixels (mmseg's ``avg_non_ignore=True``; 0 for a batch without any, where
        PyTorch's mean would be NaN), times ``loss_weight``; and the pixel accuracy ``acc_seg``
        (percent, not a loss)."""
        logits = _resize(logits, labels.shape[-2:]).float()
        valid = labels != self.ignore_index
        num_valid = valid.sum().clamp(min=1)
        loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum") / num_valid
        with torch.no_grad():
            acc = ((logits.argmax(1) == labels) & valid).sum() * 100.0 / num_valid
        return {"loss_ce": loss * self.loss_weight, "acc_seg": acc}


@MODELS.register_module()
class UperNetHead(_DecodeHead):
    """UperNet's decode head (Xiao et al., ECCV 2018), as mmseg's ``UPerHead``.

    A pyramid pooling module on the coarsest map (average pools to ``pool_scales`` x
    ``pool_scales``, 1x1 conv each, upsampled, concatenated with the map, 3x3 bottleneck), an FPN
    over the finer maps (1x1 laterals, top-down bilinear sums, 3x3 convs), every level upsampled
    to the finest and fused by a 3x3 conv; then dropout and a 1x1 classifier.

    ``forward(features)``: the tuple of ``(batch, in_channels[i], h_i, w_i)`` maps, finest first
    (only those at ``in_index``) -> logits ``(batch, num_classes, h_0, w_0)``.

    Args:
        in_channels: Channels of the used maps (4 for a stride 4/8/16/32 pyramid).
        num_classes: Output classes.
        channels: Width of the head (mmseg's default 512; the official Vim recipe uses 192).
        pool_scales: PPM output sizes.
        in_index: Which backbone maps the head reads.
        norm: ``"BN"`` or ``"SyncBN"`` after every conv (SyncBN needs distributed training;
            mmengine's Runner turns it into BN in a single process).
        dropout_ratio, loss_weight, ignore_index: Classifier dropout and loss settings.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        in_index: Sequence[int] = (0, 1, 2, 3),
        norm: str = "BN",
        dropout_ratio: float = 0.1,
        loss_weight: float = 1.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(channels, num_classes, dropout_ratio, loss_weight, ignore_index)
        if len(in_channels) != len(in_index) or len(in_channels) < 2:
            raise ValueError(f"in_channels {in_channels} and in_index {in_index} must name the same >= 2 maps")
        self.in_index = list(in_index)
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList(ConvNormAct(in_channels[-1], channels, 1, norm) for _ in pool_scales)
        self.bottleneck = ConvNormAct(in_channels[-1] + len(pool_scales) * channels, channels, 3, norm)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1, norm) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3, norm) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * channels, channels, 3, norm)

    def _psp(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [
            _resize(conv(F.adaptive_avg_pool2d(x, scale)), x.shape[-2:]) for scale, conv in zip(self.pool_scales, self.ppm)
        ]
        return self.bottleneck(torch.cat([x] + pooled, dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = [features[i] for i in self.in_index]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)] + [self._psp(inputs[-1])]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        outs = [outs[0]] + [_resize(x, outs[0].shape[-2:]) for x in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


@MODELS.register_module()
class FCNHead(_DecodeHead):
    """Fully convolutional head (mmseg's ``FCNHead`` with ``concat_input=False``): ``num_convs``
    3x3 ConvNormAct on one map, dropout, 1x1 classifier. Used as UperNet's auxiliary head.

    ``forward(features)``: the backbone's tuple; reads ``features[in_index]``
    ``(batch, in_channels, h, w)`` -> logits ``(batch, num_classes, h, w)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 1,
        in_index: int = 2,
        norm: str = "BN",
        dropout_ratio: float = 0.1,
        loss_weight: float = 0.4,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(channels if num_convs else in_channels, num_classes, dropout_ratio, loss_weight, ignore_index)
        self.in_index = in_index
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.Sequential(*(ConvNormAct(a, b, 3, norm) for a, b in zip(widths, widths[1:])))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.convs(features[self.in_index]))


@MODELS.register_module()
class SegEncoderDecoder(BaseModel):
    """Backbone + decode head (+ auxiliary head), mmseg's ``EncoderDecoder``, on mmengine.

    Modes of ``forward(inputs, data_samples, mode)`` (``inputs`` the preprocessed
    ``(batch, 3, H, W)`` float batch):
        ``"loss"``: ``{"decode.loss_ce", "decode.acc_seg", "aux.loss_ce", "aux.acc_seg"}``
        (mmengine sums the keys containing ``loss``).
        ``"predict"``: the data samples with ``seg_logits`` (``PixelData``, float
        ``(num_classes, h, w)``) and ``pred_sem_seg`` (int64 ``(1, h, w)``) at each image's
        ``ori_shape``: padding removed, logits resized bilinearly, then argmax.
        ``"tensor"``: logits ``(batch, num_classes, H, W)`` by ``test_cfg``'s inference.

    Inference (``test_cfg``): ``dict(mode="whole")`` runs the image at once; ``dict(mode="slide",
    crop_size=(512, 512), stride=(341, 341))`` runs overlapping windows (the last of each row /
    column is shifted back inside the image; a side shorter than the crop is one window) and
    averages the window logits per pixel, as mmseg's ``slide_inference``.

    Optimizer support: ``group_matcher`` and ``no_weight_decay`` forward the backbone's timm
    model's (names prefixed with its path), so ``TimmOptimWrapperConstructor`` applies layer
    decay to the backbone blocks; the pyramid and the heads are unmatched and get the top scale.

    Args:
        backbone: ``MODELS`` config of the backbone (returns a tuple of NCHW maps).
        decode_head: ``MODELS`` config of the decode head (``UperNetHead``).
        auxiliary_head: Optional ``MODELS`` config (``FCNHead``), used in training only.
        test_cfg: Inference mode, see above.
        data_preprocessor: ``SegDataPreProcessor`` config.
    """

    def __init__(
        self,
        backbone: dict,
        decode_head: dict,
        auxiliary_head: Optional[dict] = None,
        test_cfg: Optional[dict] = None,
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(type="SegDataPreProcessor"), init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.decode_head = MODELS.build(decode_head)
        self.auxiliary_head = MODELS.build(auxiliary_head) if auxiliary_head is not None else None
        self.num_classes: int = self.decode_head.num_classes
        self.test_cfg = dict(test_cfg or dict(mode="whole"))
        mode = self.test_cfg.get("mode")
        if mode not in ("whole", "slide"):
            raise ValueError(f"test_cfg.mode must be 'whole' or 'slide', got {mode!r}")
        if mode == "slide" and not {"crop_size", "stride"} <= set(self.test_cfg):
            raise ValueError("test_cfg with mode='slide' needs crop_size and stride")

    # -- optimizer support ------------------------------------------------------------------
    def _timm_model(self) -> Tuple[str, nn.Module]:
        for name, module in self.backbone.named_modules():
            if hasattr(module, "group_matcher") and hasattr(module, "no_weight_decay"):
                return f"backbone.{name}." if name else "backbone.", module
        raise TypeError(f"the backbone {type(self.backbone).__name__} holds no timm model with a group_matcher")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        """The backbone model's matcher with every ``^`` anchor moved behind its module path."""
        prefix, model = self._timm_model()
        anchor = "^" + prefix.replace(".", r"\.")

        def move(pattern: str) -> str:
            if not pattern.startswith("^"):
                raise ValueError(f"backbone group_matcher pattern {pattern!r} is not anchored with '^'")
            return anchor + pattern[1:]

        matcher = {}
        for group, spec in model.group_matcher(coarse=coarse).items():
            if isinstance(spec, str):
                matcher[group] = move(spec)
            else:
                matcher[group] = [(move(pattern), suffix) for pattern, suffix in spec]
        return matcher

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        prefix, model = self._timm_model()
        return {prefix + name for name in model.no_weight_decay()}

    # -- forward ----------------------------------------------------------------------------
    def encode_decode(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(batch, 3, H, W)`` -> decode-head logits upsampled to ``(batch, num_classes, H, W)``."""
        return _resize(self.decode_head(self.backbone(inputs)), inputs.shape[-2:])

    def slide_inference(self, inputs: torch.Tensor) -> torch.Tensor:
        """Window-averaged logits ``(batch, num_classes, H, W)``, see the class docstring."""
        crop_h, crop_w = self.test_cfg["crop_size"]
        stride_h, stride_w = self.test_cfg["stride"]
        batch, _, height, width = inputs.shape
        rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
        logits = inputs.new_zeros((batch, self.num_classes, height, width), dtype=torch.float32)
        counts = inputs.new_zeros((1, 1, height, width), dtype=torch.float32)
        for row in range(rows):
            for col in range(cols):
                y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
                y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
                logits[:, :, y1:y2, x1:x2] += self.encode_decode(inputs[:, :, y1:y2, x1:x2]).float()
                counts[:, :, y1:y2, x1:x2] += 1
        return logits / counts

    def inference(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.test_cfg["mode"] == "slide":
            return self.slide_inference(inputs)
        return self.encode_decode(inputs).float()

    def forward(
        self,
        inputs: torch.Tensor,
        data_samples: Optional[List[BaseDataElement]] = None,
        mode: str = "tensor",
    ):
        if mode == "loss":
            if not data_samples or "gt_sem_seg" not in data_samples[0]:
                raise ValueError("mode='loss' needs data_samples with gt_sem_seg")
            labels = torch.cat([sample.gt_sem_seg.data for sample in data_samples]).long()
            features = self.backbone(inputs)
            losses = {f"decode.{k}": v for k, v in self.decode_head.loss(self.decode_head(features), labels).items()}
            if self.auxiliary_head is not None:
                aux = self.auxiliary_head.loss(self.auxiliary_head(features), labels)
                losses.update({f"aux.{k}": v for k, v in aux.items()})
            return losses
        if mode == "tensor":
            return self.inference(inputs)
        if mode == "predict":
            logits = self.inference(inputs)
            if data_samples is None:
                data_samples = [BaseDataElement(metainfo=dict(ori_shape=inputs.shape[-2:])) for _ in range(len(inputs))]
            return self.postprocess(logits, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def postprocess(self, logits: torch.Tensor, data_samples: List[BaseDataElement]) -> List[BaseDataElement]:
        """Crop each image's padding, resize its logits to ``ori_shape``, add predictions."""
        for logit, sample in zip(logits, data_samples):
            left, right, top, bottom = sample.metainfo.get("padding_size", (0, 0, 0, 0))
            logit = logit[:, top : logit.shape[-2] - bottom, left : logit.shape[-1] - right]
            logit = _resize(logit[None], sample.metainfo["ori_shape"])[0]
            sample.seg_logits = PixelData(data=logit)
            sample.pred_sem_seg = PixelData(data=logit.argmax(0, keepdim=True))
        return data_samples
