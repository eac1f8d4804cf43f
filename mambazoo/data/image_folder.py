"""Classification datasets through ``timm.data.create_dataset`` (ImageNet folder layout and the
other map-style readers timm offers), with the model's transforms, for mmengine configs."""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import timm.data
from mmengine.registry import DATASETS
from torch.utils.data import Dataset

from .transforms import create_model_transform

__all__ = ["TimmImageDataset"]


@DATASETS.register_module()
class TimmImageDataset(Dataset):
    """``timm.data.create_dataset(name, root, split=...)`` with a timm transform.

    With ``name=""`` (the default) the data is an image-folder tree, the ImageNet layout::

        root/train/<class name>/*.{jpg,png,...}
        root/val/<class name>/*.{jpg,png,...}

    classes sorted by folder name (the index order timm and torchvision use). ``split`` picks
    the sub-folder (timm also finds ``validation``/``val`` for each other). Other timm
    readers are named as timm names them, e.g. ``name="torch/cifar10"``, ``"hfds/..."``, or
    a tar file for ``root``; only map-style readers (not ``tfds/``/``wds/``) fit mmengine's samplers.

    Items are ``(image, label)``: ``image`` what ``transform`` makes of the RGB PIL image
    (with a dict, a normalised float tensor ``(3, H, W)``), ``label`` an ``int``.

    Args:
        root: dataset root (or archive).
        split: ``"train"``, ``"val"``, ...
        name: timm dataset/reader name; ``""`` for an image folder.
        transform: a callable, or a dict of :func:`create_model_transform` keywords
            (``model=`` a timm model name resolves input size, interpolation, mean/std and
            crop_pct from its pretrained cfg; ``auto_augment``, ``re_prob``, ... for training).
        is_training: training augmentation for a dict ``transform`` and timm's training-mode
            readers; default: ``split`` starts with ``"train"``.
        class_map: timm's class map (a file or dict, name -> index).
        **dataset_kwargs: other ``timm.data.create_dataset`` keywords.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        name: str = "",
        transform: Callable | Mapping[str, Any] | None = None,
        is_training: bool | None = None,
        class_map: str | Mapping[str, int] | None = None,
        **dataset_kwargs: Any,
    ) -> None:
        if is_training is None:
            is_training = split.startswith("train")
        if name.split("/")[0] in ("tfds", "wds", "hfids"):
            raise ValueError(f"name {name!r} is an iterable timm reader; TimmImageDataset needs a map-style one")
        if not name and not os.path.exists(root):
            raise FileNotFoundError(f"root {os.fspath(root)!r} does not exist (expected <root>/{split}/<class>/*.jpg)")
        self.dataset = timm.data.create_dataset(
            name, root=os.fspath(root), split=split, is_training=is_training, class_map=class_map,
            **dataset_kwargs,
        )
        if len(self.dataset) == 0:
            raise ValueError(f"no images found for split {split!r} under {os.fspath(root)!r}")
        if transform is None or isinstance(transform, Mapping):
            transform = create_model_transform(is_training=is_training, **dict(transform or {}))
        self.dataset.transform = transform
        self.split = split
        class_to_idx = getattr(getattr(self.dataset, "reader", None), "class_to_idx", None) or {}
        self.metainfo = dict(classes=tuple(sorted(class_to_idx, key=class_to_idx.get)))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]
