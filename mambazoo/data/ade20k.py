"""ADE20k-format semantic segmentation: the dataset and mmseg's augmentations, without mmseg.

Layout (ADEChallengeData2016, and any set written the same way)::

    <data_root>/images/{training,validation}/NAME.jpg
    <data_root>/annotations/{training,validation}/NAME.png     8-bit class ids

Label PNGs hold 0 for "other" (unlabelled) and ``1..num_classes`` for the classes. With
``reduce_zero_label=True`` (ADE20k's convention, mmseg's ``LoadAnnotations``) a label ``v`` becomes
``v - 1`` and ``0`` becomes the ignore index 255, so the model predicts ``num_classes`` classes.

The transforms mirror mmseg 1.x's ADE20k pipeline (``RandomResize`` with ``ratio_range``,
``RandomCrop`` with ``cat_max_ratio``, ``RandomFlip``, ``PhotoMetricDistortion``) on a results
dict, registered in mmengine's ``TRANSFORMS`` under ``Seg*`` names so they never shadow mmcv's.
Images stay ``uint8`` ``(3, H, W)`` torchvision ``Image`` tensors and labels ``uint8`` ``(H, W)``
``Mask`` tensors; torchvision.transforms.v2's functional ops resize / flip them jointly
(bilinear + antialias for images, nearest for labels). Normalisation and padding to the crop
size happen later, batched, in ``mambazoo.engine.SegDataPreProcessor``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from mmengine.dataset import BaseDataset
from mmengine.registry import DATASETS, TRANSFORMS
from mmengine.structures import BaseDataElement, PixelData
from PIL import Image
from torchvision import tv_tensors

__all__ = [
    "ADE20K_CLASSES",
    "IGNORE_INDEX",
    "ADE20KSegDataset",
    "LoadSegAnnotations",
    "LoadSegImage",
    "PackSegInputs",
    "SegPhotoMetricDistortion",
    "SegRandomCrop",
    "SegRandomFlip",
    "SegRandomResize",
    "SegResize",
    "make_palette",
]

IGNORE_INDEX = 255

# The 150 classes of ADE20k's SceneParsing benchmark (objectInfo150, first name of each), in label
# order: PNG value i + 1 is ADE20K_CLASSES[i].
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


def make_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """Distinct RGB colours for label maps: PASCAL VOC's bit-interleaved colour map, skipping black."""
    palette = []
    for index in range(1, num_classes + 1):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append((r, g, b))
    return palette


@DATASETS.register_module()
class ADE20KSegDataset(BaseDataset):
    """Images + 8-bit label PNGs in ADE20k's folder layout, through a transform pipeline.

    Every ``<img_path>/*<img_suffix>`` with a same-named ``<seg_map_path>/*<seg_map_suffix>`` is
    one sample (sorted by name); an image without a label file is an error. Items are what the
    pipeline makes of ``dict(img_path=..., seg_map_path=..., reduce_zero_label=...)``; with
    ``PackSegInputs`` last, ``dict(inputs=uint8 (3, H, W), data_samples=BaseDataElement)``.

    Args:
        data_root: Folder holding ``images/`` and ``annotations/``.
        data_prefix: ``dict(img_path="images/training", seg_map_path="annotations/training")``.
        classes: Class names after ``reduce_zero_label`` (default: ADE20k's 150).
        reduce_zero_label: Label 0 is "other" (ignored), ``v`` is class ``v - 1``.
        img_suffix, seg_map_suffix: File endings.
        pipeline: Transform configs (``Seg*`` names) or callables.
        **kwargs: Other ``mmengine.dataset.BaseDataset`` arguments (``indices``, ``lazy_init``,
            ``serialize_data``, ...).
    """

    METAINFO = dict(classes=ADE20K_CLASSES, palette=make_palette(len(ADE20K_CLASSES)))

    def __init__(
        self,
        data_root: str = "",
        data_prefix: Optional[Dict[str, str]] = None,
        classes: Optional[Sequence[str]] = None,
        reduce_zero_label: bool = True,
        img_suffix: str = ".jpg",
        seg_map_suffix: str = ".png",
        pipeline: Sequence[Any] = (),
        **kwargs: Any,
    ) -> None:
        self.reduce_zero_label = reduce_zero_label
        self.img_suffix = img_suffix
        self.seg_map_suffix = seg_map_suffix
        data_prefix = dict(data_prefix or dict(img_path="images/training", seg_map_path="annotations/training"))
        if set(data_prefix) != {"img_path", "seg_map_path"}:
            raise ValueError(f"data_prefix must have the keys img_path and seg_map_path, got {sorted(data_prefix)}")
        metainfo = dict(kwargs.pop("metainfo", None) or {})
        if classes is not None:
            metainfo.update(classes=tuple(classes), palette=make_palette(len(classes)))
        super().__init__(
            data_root=data_root, data_prefix=data_prefix, metainfo=metainfo, pipeline=list(pipeline), **kwargs
        )

    def load_data_list(self) -> List[dict]:
        img_dir = Path(self.data_prefix["img_path"])
        seg_dir = Path(self.data_prefix["seg_map_path"])
        if not img_dir.is_dir():
            raise FileNotFoundError(f"image folder {img_dir} does not exist (data_root={self.data_root!r})")
        names = sorted(p.name[: -len(self.img_suffix)] for p in img_dir.iterdir() if p.name.endswith(self.img_suffix))
        if not names:
            raise FileNotFoundError(f"no *{self.img_suffix} images in {img_dir}")
        data_list = []
        for name in names:
            seg_map = seg_dir / (name + self.seg_map_suffix)
            if not seg_map.is_file():
                raise FileNotFoundError(f"image {name}{self.img_suffix} has no label map {seg_map}")
            data_list.append(dict(
                img_path=str(img_dir / (name + self.img_suffix)),
                seg_map_path=str(seg_map),
                reduce_zero_label=self.reduce_zero_label,
            ))
        return data_list


@TRANSFORMS.register_module()
class LoadSegImage:
    """Read ``results["img_path"]`` as RGB: ``img`` a ``uint8`` ``Image`` ``(3, H, W)``, ``ori_shape``."""

    def __call__(self, results: dict) -> dict:
        with Image.open(results["img_path"]) as image:
            array = np.asarray(image.convert("RGB"))
        results["img"] = tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))
        results["ori_shape"] = tuple(array.shape[:2])
        results["img_shape"] = tuple(array.shape[:2])
        return results


@TRANSFORMS.register_module()
class LoadSegAnnotations:
    """Read ``results["seg_map_path"]`` as ``gt_seg_map``, a ``uint8`` ``Mask`` ``(H, W)``.

    With ``reduce_zero_label`` (default: the dataset's ``results["reduce_zero_label"]``) label 0
    becomes 255 and every other label ``v`` becomes ``v - 1`` (255 stays 255).
    """

    def __init__(self, reduce_zero_label: Optional[bool] = None) -> None:
        self.reduce_zero_label = reduce_zero_label

    def __call__(self, results: dict) -> dict:
        with Image.open(results["seg_map_path"]) as label:
            if label.mode not in ("L", "P"):
                raise ValueError(f"label map {results['seg_map_path']} must be 8-bit (mode L or P), got {label.mode}")
            array = np.array(label, dtype=np.uint8)
        reduce = self.reduce_zero_label
        if reduce is None:
            reduce = results.get("reduce_zero_label", False)
        if reduce:
            # uint8 arithmetic: 0 - 1 wraps to 255, 255 - 1 = 254 is put back to 255
            array = np.where(array == IGNORE_INDEX, IGNORE_INDEX, array - 1).astype(np.uint8)
        results["gt_seg_map"] = tv_tensors.Mask(torch.from_numpy(array))
        results["reduce_zero_label"] = bool(reduce)
        return results


def _rescale_size(height: int, width: int, scale: Tuple[int, int]) -> Tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= max(scale), short <= min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize(results: dict, size: Tuple[int, int]) -> dict:
    results["img"] = TF.resize(results["img"], list(size), antialias=True)
    if "gt_seg_map" in results:
        results["gt_seg_map"] = TF.resize(results["gt_seg_map"], list(size))  # Mask -> nearest
    results["img_shape"] = tuple(size)
    return results


@TRANSFORMS.register_module()
class SegResize:
    """Resize image (bilinear) and label (nearest, when loaded) to ``scale``.

    ``scale`` is ``(long, short)`` like mmseg's ``(2048, 512)``; with ``keep_ratio`` the image is
    made as large as fits in it at its own aspect ratio, else it becomes ``short x long`` px
    (height x width). In mmseg's test pipeline the label is loaded after this resize, so it stays
    at the original size the predictions are scored at.
    """

    def __init__(self, scale: Tuple[int, int] = (2048, 512), keep_ratio: bool = True) -> None:
        self.scale = tuple(scale)
        self.keep_ratio = keep_ratio

    def __call__(self, results: dict) -> dict:
        height, width = results["img"].shape[-2:]
        if self.keep_ratio:
            size = _rescale_size(height, width, self.scale)
        else:
            size = (min(self.scale), max(self.scale))
        return _resize(results, size)


@TRANSFORMS.register_module()
class SegRandomResize:
    """mmseg's ``RandomResize(scale, ratio_range, keep_ratio=True)``: ``scale`` times a uniform
    ratio in ``ratio_range``, then the keep-ratio resize of :class:`SegResize`."""

    def __init__(self, scale: Tuple[int, int] = (2048, 512), ratio_range: Tuple[float, float] = (0.5, 2.0)) -> None:
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range}")
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def __call__(self, results: dict) -> dict:
        ratio = np.random.uniform(*self.ratio_range)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        height, width = results["img"].shape[-2:]
        return _resize(results, _rescale_size(height, width, scale))


@TRANSFORMS.register_module()
class SegRandomCrop:
    """Random ``crop_size`` (height, width) crop of image and label, mmseg's ``RandomCrop``.

    A side shorter than the crop is kept whole (the data preprocessor pads it later). With
    ``cat_max_ratio < 1`` up to 10 crops are drawn until one has at least two classes and no
    class (ignore index excluded) above ``cat_max_ratio`` of its labelled pixels; if none does,
    an 11th crop is used unchecked, as in mmseg.
    """

    def __init__(self, crop_size: Tuple[int, int], cat_max_ratio: float = 1.0, ignore_index: int = IGNORE_INDEX):
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"crop_size must be (height, width) > 0, got {crop_size}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.crop_size = tuple(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _random_box(self, height: int, width: int) -> Tuple[int, int, int, int]:
        top = np.random.randint(0, max(height - self.crop_size[0], 0) + 1)
        left = np.random.randint(0, max(width - self.crop_size[1], 0) + 1)
        return top, left, min(self.crop_size[0], height), min(self.crop_size[1], width)

    def _balanced(self, label: torch.Tensor, box: Tuple[int, int, int, int]) -> bool:
        top, left, h, w = box
        values, counts = torch.unique(label[top : top + h, left : left + w], return_counts=True)
        counts = counts[values != self.ignore_index]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, results: dict) -> dict:
        height, width = results["img"].shape[-2:]
        box = self._random_box(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                if self._balanced(results["gt_seg_map"], box):
                    break
                box = self._random_box(height, width)
        results["img"] = TF.crop(results["img"], *box)
        results["gt_seg_map"] = TF.crop(results["gt_seg_map"], *box)
        results["img_shape"] = tuple(results["img"].shape[-2:])
        return results


@TRANSFORMS.register_module()
class SegRandomFlip:
    """Horizontal flip of image and label together with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.prob = prob

    def __call__(self, results: dict) -> dict:
        flip = np.random.rand() < self.prob
        if flip:
            results["img"] = TF.horizontal_flip(results["img"])
            if "gt_seg_map" in results:
                results["gt_seg_map"] = TF.horizontal_flip(results["gt_seg_map"])
        results["flip"] = bool(flip)
        return results


@TRANSFORMS.register_module()
class SegPhotoMetricDistortion:
    """mmseg's ``PhotoMetricDistortion`` on a ``uint8`` image; each step applies with probability 1/2.

    Order: brightness (add a uniform delta in ``[-brightness_delta, brightness_delta]``), contrast
    (multiply by a factor in ``contrast_range``) first or last at random, saturation (factor in
    ``saturation_range``), hue (shift by ``hue_delta`` / 180 of the colour circle at most, mmseg's
    OpenCV hue units). Brightness and contrast are mmseg's plain add / multiply with clipping;
    saturation and hue use torchvision's ``adjust_saturation`` (a blend with the grey image, where
    mmseg scales HSV saturation) and ``adjust_hue``. The label is untouched.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @staticmethod
    def _affine(img: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
        return (img.float() * alpha + beta).clamp_(0, 255).round_().to(torch.uint8)

    def __call__(self, results: dict) -> dict:
        img = results["img"].as_subclass(torch.Tensor)
        if np.random.randint(2):
            img = self._affine(img, beta=np.random.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = np.random.randint(2)
        if contrast_first and np.random.randint(2):
            img = self._affine(img, alpha=np.random.uniform(*self.contrast_range))
        if np.random.randint(2):
            img = TF.adjust_saturation(img, float(np.random.uniform(*self.saturation_range)))
        if np.random.randint(2):
            img = TF.adjust_hue(img, float(np.random.uniform(-self.hue_delta, self.hue_delta)) / 180.0)
        if not contrast_first and np.random.randint(2):
            img = self._affine(img, alpha=np.random.uniform(*self.contrast_range))
        results["img"] = tv_tensors.Image(img)
        return results


@TRANSFORMS.register_module()
class PackSegInputs:
    """``dict(inputs=uint8 (3, H, W), data_samples=BaseDataElement)``, mmseg's packing.

    The data sample carries ``gt_sem_seg`` (``PixelData``, ``data`` int64 ``(1, H, W)``) when a
    label was loaded, and the metainfo ``img_path``, ``seg_map_path``, ``ori_shape``,
    ``img_shape``, ``flip``, ``reduce_zero_label``.
    """

    META_KEYS = ("img_path", "seg_map_path", "ori_shape", "img_shape", "flip", "reduce_zero_label")

    def __call__(self, results: dict) -> dict:
        sample = BaseDataElement(metainfo={k: results[k] for k in self.META_KEYS if k in results})
        if "gt_seg_map" in results:
            sample.gt_sem_seg = PixelData(data=results["gt_seg_map"].as_subclass(torch.Tensor)[None].long())
        return dict(inputs=results["img"].as_subclass(torch.Tensor).contiguous(), data_samples=sample)

