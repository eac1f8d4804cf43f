"""A small ADE20k-format segmentation set composited from real images, built offline on first use.

Every scene is a real background (two regions split by a random straight line, each a random crop
of a real photograph or texture) with 1-4 real Fashion-MNIST photographs (28x28 grayscale
product photos) scaled to a quarter to a half of the image side, tinted with a random colour and
pasted with their own silhouettes (pixels brighter than ``SILHOUETTE_THRESHOLD``) as masks; later
items occlude earlier ones.

Sources (nothing is downloaded):
- backgrounds: the real images bundled in the scikit-image wheel (``skimage/data``): three
  textures that are classes (``brick``, ``grass``, ``gravel``, 512x512 grayscale photographs) and
  five photographs that are "other" (label 0, ignored under ``reduce_zero_label``): ``coffee``,
  ``astronaut``, ``chelsea``, ``rocket``, ``motorcycle_left``. Training scenes crop the left 3/4
  of each background, validation scenes the right 1/4, so no background pixel is shared.
- items: Debian's ``dataset-fashion-mnist`` (``mambazoo.data.fashion_mnist``); training scenes
  use the training images, validation scenes the test images.

Label PNG values: 0 other, 1-3 the textures, 4-13 the ten Fashion-MNIST classes; after
``reduce_zero_label`` the 13 classes of ``SCENE_CLASSES``. Deterministic given ``seed``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torchvision
from mmengine.registry import DATASETS
from PIL import Image

from .ade20k import ADE20KSegDataset
from .fashion_mnist import DEBIAN_FASHION_MNIST_DIR, prepare_fashion_mnist_root

__all__ = ["SCENE_CLASSES", "CompositeScenesDataset", "build_composite_scenes"]

TEXTURES = ("brick", "grass", "gravel")
OTHER_PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "motorcycle_left")
SCENE_CLASSES = TEXTURES + tuple(torchvision.datasets.FashionMNIST.classes)
SILHOUETTE_THRESHOLD = 24  # of 255; Fashion-MNIST items sit on a black (0) background
SPLITS = {"training": (0, 0.0, 0.75, True), "validation": (1, 0.75, 1.0, False)}  # id, x-range, FMNIST train


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the composite scenes take their backgrounds from scikit-image's bundled images: "
            "pip install scikit-image"
        )
    return Path(spec.submodule_search_locations[0]) / "data"


def _load_backgrounds() -> List[Tuple[int, np.ndarray]]:
    """``(label, RGB uint8 (H, W, 3))`` per background: textures 1..3, photographs 0."""
    data_dir = _skimage_data_dir()
    files = {p.stem: p for p in data_dir.iterdir() if p.suffix in (".png", ".jpg")}
    backgrounds = []
    for label, name in [(i + 1, n) for i, n in enumerate(TEXTURES)] + [(0, n) for n in OTHER_PHOTOS]:
        if name not in files:
            raise FileNotFoundError(f"scikit-image's bundled image {name!r} is missing from {data_dir}")
        with Image.open(files[name]) as image:
            backgrounds.append((label, np.asarray(image.convert("RGB"))))
    return backgrounds


def _background_crop(rng: np.random.Generator, image: np.ndarray, x_range: Tuple[float, float], size: int):
    """A random square crop inside the ``x_range`` fraction of the columns, resized to ``size``."""
    height, width = image.shape[:2]
    x_lo, x_hi = int(width * x_range[0]), int(width * x_range[1])
    side = int(rng.uniform(0.5, 1.0) * min(height, x_hi - x_lo, 2 * size))
    left = int(rng.integers(x_lo, x_hi - side + 1))
    top = int(rng.integers(0, height - side + 1))
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def _scene(rng, backgrounds, items, item_labels, x_range, size) -> Tuple[np.ndarray, np.ndarray]:
    """One ``(RGB uint8 (size, size, 3), label uint8 (size, size))`` pair."""
    weights = np.array([3.0 if label else 1.0 for label, _ in backgrounds])
    chosen = rng.choice(len(backgrounds), size=2, p=weights / weights.sum())
    # a random line through a random point splits the image into two background regions
    ys, xs = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.25, 0.75, size=2) * size
    side = (np.cos(angle) * (xs - cx) + np.sin(angle) * (ys - cy)) > 0
    image = np.empty((size, size, 3), np.uint8)
    label = np.empty((size, size), np.uint8)
    for region, index in zip((side, ~side), chosen):
        region_label, background = backgrounds[index]
        image[region] = _background_crop(rng, background, x_range, size)[region]
        label[region] = region_label

    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(len(items)))
        side_px = int(rng.integers(size // 4, size // 2 + 1))
        item = np.asarray(Image.fromarray(items[k]).resize((side_px, side_px), Image.BILINEAR), np.float32)
        mask = item > SILHOUETTE_THRESHOLD
        tint = rng.uniform(80, 255, size=3)
        top, left = (int(v) for v in rng.integers(0, size - side_px + 1, size=2))
        window = (slice(top, top + side_px), slice(left, left + side_px))
        image[window][mask] = np.clip(item[mask, None] / 255.0 * tint, 0, 255).astype(np.uint8)
        label[window][mask] = len(TEXTURES) + 1 + int(item_labels[k])
    return image, label


def build_composite_scenes(
    data_root: str | os.PathLike,
    num_train: int = 300,
    num_val: int = 100,
    size: int = 128,
    seed: int = 0,
    fashion_mnist_root: str | os.PathLike = "data",
    fashion_mnist_source: str | os.PathLike = DEBIAN_FASHION_MNIST_DIR,
) -> Path:
    """Write the composite set into ``data_root`` (ADE20k layout) unless it is already there.

    Files: ``images/{training,validation}/NNNNNN.jpg`` (``size`` x ``size`` RGB, JPEG quality
    95), ``annotations/.../NNNNNN.png`` (8-bit labels, see the module docstring) and
    ``scenes.json`` with the build arguments. The set is written to a temporary folder and
    renamed into place, so concurrent builders (several ranks) never see half a set. An
    existing set built with other arguments is an error (delete it or pick another root).
    """
    if min(num_train, num_val) < 1 or size < 32:
        raise ValueError(f"need num_train, num_val >= 1 and size >= 32, got {num_train}, {num_val}, {size}")
    data_root = Path(data_root)
    params = dict(num_train=num_train, num_val=num_val, size=size, seed=seed, version=1)
    marker = data_root / "scenes.json"
    if marker.is_file():
        built = json.loads(marker.read_text())
        if built != params:
            raise ValueError(
                f"{data_root} holds scenes built with {built}, not {params}: delete it or use another root"
            )
        return data_root

    backgrounds = _load_backgrounds()
    fmnist_root = prepare_fashion_mnist_root(fashion_mnist_root, fashion_mnist_source)
    data_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=data_root.parent, prefix=f".{data_root.name}."))
    try:
        for split, count in (("training", num_train), ("validation", num_val)):
            split_id, x_lo, x_hi, fmnist_train = SPLITS[split]
            fmnist = torchvision.datasets.FashionMNIST(str(fmnist_root), train=fmnist_train, download=False)
            items, item_labels = fmnist.data.numpy(), fmnist.targets.numpy()
            rng = np.random.default_rng([seed, split_id])
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "annotations" / split).mkdir(parents=True)
            for index in range(count):
                image, label = _scene(rng, backgrounds, items, item_labels, (x_lo, x_hi), size)
                Image.fromarray(image).save(tmp / "images" / split / f"{index:06d}.jpg", quality=95)
                Image.fromarray(label, mode="L").save(tmp / "annotations" / split / f"{index:06d}.png")
        (tmp / "scenes.json").write_text(json.dumps(params))
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, data_root)
        except OSError:
            if not marker.is_file():  # not another builder's finished set: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_root


@DATASETS.register_module()
class CompositeScenesDataset(ADE20KSegDataset):
    """The composite scenes as an :class:`ADE20KSegDataset`, built into ``data_root`` on first use.

    Args:
        data_root: Where the set lives (or is written).
        split: ``"training"`` or ``"validation"``.
        build: Keywords of :func:`build_composite_scenes` (``num_train``, ``num_val``, ``size``,
            ``seed``, ``fashion_mnist_root``, ...).
        pipeline, **kwargs: As :class:`ADE20KSegDataset` (``reduce_zero_label`` is always on:
            label 0 is "other").
    """

    def __init__(
        self,
        data_root: str = "data/scenes",
        split: str = "training",
        build: Optional[Dict[str, Any]] = None,
        pipeline: Sequence[Any] = (),
        **kwargs: Any,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        build_composite_scenes(data_root, **dict(build or {}))
        super().__init__(
            data_root=data_root,
            data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"),
            classes=SCENE_CLASSES,
            reduce_zero_label=True,
            pipeline=pipeline,
            **kwargs,
        )
