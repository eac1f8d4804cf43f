"""timm's image transforms with the preprocessing a model was trained with filled in."""
from __future__ import annotations

from typing import Any, Callable

import timm.data
import timm.data.auto_augment
from PIL import Image, ImageOps
from timm.models import get_pretrained_cfg

import mambazoo.models  # noqa: F401  (registers the zoo's models, so their pretrained cfgs resolve)

__all__ = ["create_model_transform", "resolve_model_transform_config"]

# what a model's pretrained cfg decides; everything else is an augmentation choice of the recipe
_FROM_MODEL = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op, keeping 0 bits as a black image (what Pillow < 13 did).

    timm's ``PosterizeIncreasing`` (RandAugment ``inc1``, the Vim/DeiT policy
    ``rand-m9-mstd0.5-inc1``) maps magnitudes >= 7.5 to 0 bits; Pillow 13 rejects bits < 1
    with ``ValueError``, which killed training runs at a random step.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
    if _name in timm.data.auto_augment.NAME_TO_OP:
        timm.data.auto_augment.NAME_TO_OP[_name] = _posterize


def resolve_model_transform_config(model: str | None = None, **overrides: Any) -> dict[str, Any]:
    """``timm.data.resolve_data_config`` of ``model``'s pretrained cfg, then ``overrides``.

    Args:
        model: a timm model name, with or without a pretrained tag (``"vim_tiny"``,
            ``"vim_tiny.in1k"``, ``"deit_small_patch16_224"``); ``None`` starts from timm's
            defaults (224 px, bicubic, ImageNet mean/std, crop 0.875).
        overrides: any ``timm.data.create_transform`` keyword; wins over the model's values.

    Returns:
        ``input_size`` ``(C, H, W)``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
        ``crop_mode`` and the overrides, ready for ``create_transform``.
    """
    pretrained_cfg = None
    if model is not None:
        cfg = get_pretrained_cfg(model)
        if cfg is None:
            raise ValueError(f"model {model!r} has no pretrained cfg in timm (is the name right?)")
        pretrained_cfg = cfg.to_dict()
    resolved = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg)
    options = {k: resolved[k] for k in _FROM_MODEL if k in resolved}
    if isinstance(overrides.get("input_size"), int):
        size = overrides.pop("input_size")
        options["input_size"] = (options["input_size"][0], size, size)
    options.update(overrides)
    return options


def create_model_transform(model: str | None = None, is_training: bool = False, **kwargs: Any) -> Callable:
    """``timm.data.create_transform`` with ``model``'s input size, interpolation, mean/std and crop.

    Training (``is_training=True``) is timm's RandomResizedCrop + flip + ``auto_augment``
    (e.g. ``"rand-m9-mstd0.5-inc1"``) or colour jitter + random erasing (``re_prob``,
    ``re_mode``); evaluation resizes to ``size / crop_pct`` and centre-crops. ``kwargs`` are
    ``create_transform`` keywords and override the model's values (an int ``input_size``
    keeps the model's channel count). Output: a normalised float tensor ``(C, H, W)``.
    """
    return timm.data.create_transform(is_training=is_training, **resolve_model_transform_config(model, **kwargs))
