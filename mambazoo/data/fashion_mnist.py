"""Fashion-MNIST from the files Debian's ``dataset-fashion-mnist`` package installs.

Nothing is downloaded: the four gzipped IDX files are decompressed once into
``<root>/FashionMNIST/raw/`` (the layout torchvision expects) and read with
torchvision's own ``FashionMNIST`` reader (``download=False``). Images are
``28x28`` grayscale ``uint8``, 60,000 train and 10,000 test, 10 classes.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import timm.data
import torchvision
from PIL import Image
from mmengine.registry import DATASETS

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNISTDataset",
    "create_fashion_mnist_transform",
    "export_fashion_mnist_image_folder",
    "prepare_fashion_mnist_root",
]

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Pixel mean / std of the 60,000 training images scaled to [0, 1]
# (measured: 0.28604, 0.35302; tests/data/test_fashion_mnist.py re-measures them).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


def prepare_fashion_mnist_root(
    root: str | os.PathLike = "data",
    source_dir: str | os.PathLike = DEBIAN_FASHION_MNIST_DIR,
) -> Path:
    """Make ``root`` a torchvision Fashion-MNIST root; return it.

    Fills ``<root>/FashionMNIST/raw/`` with the decompressed IDX files from
    ``source_dir`` (``*.gz`` or already decompressed). Files already in place
    are kept, so a root prepared by hand needs no ``source_dir``. Each file is
    written to a temporary name and renamed, so concurrent runs never read a
    half-written file.
    """
    root = Path(root)
    raw_dir = root / "FashionMNIST" / "raw"
    missing = [name for name in RAW_FILES if not (raw_dir / name).is_file()]
    if not missing:
        return root

    source_dir = Path(source_dir)
    sources = {}
    for name in missing:
        for candidate in (source_dir / f"{name}.gz", source_dir / name):
            if candidate.is_file():
                sources[name] = candidate
                break
    not_found = [name for name in missing if name not in sources]
    if not_found:
        raise FileNotFoundError(
            f"Fashion-MNIST files {not_found} are neither in {raw_dir} nor in {source_dir}. "
            "Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu "
            f"package, puts them in {DEBIAN_FASHION_MNIST_DIR}), or pass source_dir= a folder "
            "holding the four *-ubyte[.gz] files."
        )

    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        opener = gzip.open if source.suffix == ".gz" else open
        fd, tmp_name = tempfile.mkstemp(dir=raw_dir, prefix=f".{name}.")
        try:
            with opener(source, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the cache may be shared
            os.replace(tmp_name, raw_dir / name)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return root


def create_fashion_mnist_transform(channels: int = 1, **kwargs: Any) -> Callable:
    """``timm.data.create_transform`` with Fashion-MNIST defaults.

    Defaults: ``input_size=(channels, 28, 28)``, the dataset's mean/std (repeated per
    channel), no colour jitter (grayscale), ``crop_pct=1.0`` (the images are already tight
    crops). Any keyword of ``create_transform`` overrides them, e.g. ``is_training=True,
    scale=(0.6, 1.0)`` or ``input_size=(3, 224, 224)`` to upsample. Output: a float tensor
    ``(channels, H, W)``; ``channels=3`` expects RGB images (``FashionMNISTDataset(channels=3)``).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    options = dict(
        input_size=(channels, 28, 28),
        mean=FASHION_MNIST_MEAN * channels,
        std=FASHION_MNIST_STD * channels,
        color_jitter=None,
        crop_pct=1.0,
    )
    options.update(kwargs)
    return timm.data.create_transform(**options)


@DATASETS.register_module()
class FashionMNISTDataset(torchvision.datasets.FashionMNIST):
    """torchvision's ``FashionMNIST`` over the Debian files, with a contiguous subset.

    Items are ``(image, label)``: ``image`` is what ``transform`` makes of a
    PIL ``L`` image (with the default, a normalised float tensor ``(1, 28, 28)``),
    ``label`` an ``int`` in ``[0, 10)``.

    Args:
        root: cache folder; ``<root>/FashionMNIST/raw/`` is filled on first use.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        start, num_samples: keep images ``[start, start + num_samples)`` of the
            split (``num_samples=None``: to the end). The official files are in
            shuffled order, so a prefix is class-balanced (about 10 % each).
        transform: a callable, or a dict of ``create_fashion_mnist_transform``
            keywords (config friendly); ``None`` means the eval transform.
        source_dir: where the gzipped files come from.
        channels: 1 gives the transform PIL ``L`` images; 3 gives it the same image as
            ``RGB`` (grey in three channels, for models with 3 input channels).
    """

    metainfo = dict(classes=tuple(torchvision.datasets.FashionMNIST.classes))

    def __init__(
        self,
        root: str | os.PathLike = "data",
        split: str = "train",
        start: int = 0,
        num_samples: int | None = None,
        transform: Callable | Mapping[str, Any] | None = None,
        source_dir: str | os.PathLike = DEBIAN_FASHION_MNIST_DIR,
        channels: int = 1,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if transform is None or isinstance(transform, Mapping):
            transform = create_fashion_mnist_transform(channels=channels, **dict(transform or {}))
        self.channels = channels
        root = prepare_fashion_mnist_root(root, source_dir)
        super().__init__(str(root), train=split == "train", transform=transform, download=False)
        self.split = split

        total = len(self.targets)
        stop = total if num_samples is None else start + num_samples
        if not 0 <= start < stop <= total:
            raise ValueError(
                f"start={start}, num_samples={num_samples} is outside the {total} images of split {split!r}"
            )
        self.data = self.data[start:stop]
        self.targets = self.targets[start:stop]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.data[index].numpy())  # uint8 (28, 28): mode "L"
        if self.channels == 3:
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    @property
    def raw_folder(self) -> str:
        # torchvision names the folder after the class; keep its name for the subclass
        return os.path.join(self.root, "FashionMNIST", "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, "FashionMNIST", "processed")


def export_fashion_mnist_image_folder(
    out_dir: str | os.PathLike,
    splits: Mapping[str, tuple[str, int, int]],
    root: str | os.PathLike = "data",
    source_dir: str | os.PathLike = DEBIAN_FASHION_MNIST_DIR,
    image_format: str = "png",
) -> Path:
    """Write Fashion-MNIST images as an ImageNet-layout folder tree of RGB image files.

    ``splits`` maps an output split to ``(source split, start, num_samples)``, e.g.
    ``{"train": ("train", 0, 500), "val": ("train", 55000, 100)}`` writes
    ``out_dir/train/<class name>/<index>.png`` and ``out_dir/val/...``. Class folders are
    named ``00_T-shirt_top`` ... ``09_Ankle_boot`` so their sorted order is the label order.
    ``image_format``: ``"png"`` (lossless) or ``"jpeg"``. Returns ``out_dir``.
    """
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    out_dir = Path(out_dir)
    names = [f"{i:02d}_" + "".join(c if c.isalnum() else "_" for c in name).strip("_")
             for i, name in enumerate(FashionMNISTDataset.metainfo["classes"])]
    suffix = "png" if image_format == "png" else "jpg"
    for out_split, (split, start, num_samples) in splits.items():
        dataset = FashionMNISTDataset(root, split=split, start=start, num_samples=num_samples, source_dir=source_dir)
        for name in names:
            (out_dir / out_split / name).mkdir(parents=True, exist_ok=True)
        for i, (pixels, label) in enumerate(zip(dataset.data, dataset.targets.tolist())):
            image = Image.fromarray(pixels.numpy()).convert("RGB")
            image.save(out_dir / out_split / names[label] / f"{start + i:05d}.{suffix}", format=image_format.upper())
    return out_dir
