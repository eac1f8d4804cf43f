"""The Fashion-MNIST dataset over Debian's real files (package ``dataset-fashion-mnist``)."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from mambazoo.data import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNISTDataset,
    create_fashion_mnist_transform,
    export_fashion_mnist_image_folder,
    prepare_fashion_mnist_root,
)

pytestmark = pytest.mark.skipif(
    not Path(DEBIAN_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A fresh cache root, so the decompression path runs in every session."""
    return prepare_fashion_mnist_root(tmp_path_factory.mktemp("fashion_mnist"))


def test_prepare_decompresses_the_debian_files(root):
    raw = root / "FashionMNIST" / "raw"
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(Path(DEBIAN_FASHION_MNIST_DIR, name + ".gz"), "rb") as f:
            assert (raw / name).read_bytes() == f.read()
    assert prepare_fashion_mnist_root(root, source_dir="/nonexistent") == root  # already there


def test_missing_files_name_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        prepare_fashion_mnist_root(tmp_path / "cache", source_dir=tmp_path / "empty")


@pytest.mark.parametrize("split, size", [("train", 60000), ("test", 10000)])
def test_sizes_and_balanced_labels(root, split, size):
    dataset = FashionMNISTDataset(root, split=split)
    assert len(dataset) == size
    assert dataset.data.shape == (size, 28, 28) and dataset.data.dtype == torch.uint8
    # the official splits hold exactly 6,000 / 1,000 images of each of the 10 classes
    assert torch.bincount(dataset.targets, minlength=10).tolist() == [size // 10] * 10
    assert len(dataset.metainfo["classes"]) == 10


def test_real_pixel_statistics(root):
    pixels = FashionMNISTDataset(root, split="train").data.float() / 255
    # the normalisation constants are the training set's own statistics
    assert pixels.mean().item() == pytest.approx(FASHION_MNIST_MEAN[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(FASHION_MNIST_STD[0], abs=1e-3)
    # real photographs of clothes on a black background: about half the pixels are exactly 0
    assert 0.4 < (pixels == 0).float().mean().item() < 0.6
    assert pixels.min().item() == 0.0 and pixels.max().item() == 1.0


def test_items_are_normalised_tensors(root):
    dataset = FashionMNISTDataset(root, split="test", num_samples=2000)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert images.shape == (2000, 1, 28, 28) and images.dtype == torch.float32
    assert all(isinstance(label, int) and 0 <= label < 10 for label in labels)
    assert labels[0] == 9  # the first test image is an ankle boot
    assert images.mean().item() == pytest.approx(0.0, abs=0.05)
    assert images.std().item() == pytest.approx(1.0, abs=0.05)


def test_subset_and_transform_config(root):
    full = FashionMNISTDataset(root, split="train")
    part = FashionMNISTDataset(
        root, split="train", start=55000, num_samples=100,
        transform=dict(is_training=True, input_size=(1, 32, 32)),
    )
    assert len(part) == 100
    assert torch.equal(part.data, full.data[55000:55100])
    assert torch.equal(part.targets, full.targets[55000:55100])
    assert part[0][0].shape == (1, 32, 32)


@pytest.mark.parametrize("kwargs", [dict(start=59999, num_samples=2), dict(start=-1), dict(split="val")])
def test_bad_arguments(root, kwargs):
    with pytest.raises(ValueError):
        FashionMNISTDataset(root, **kwargs)


def test_transform_defaults():
    transform = create_fashion_mnist_transform()
    normalize = transform.transforms[-1]
    assert normalize.mean.tolist() == pytest.approx(FASHION_MNIST_MEAN)
    assert normalize.std.tolist() == pytest.approx(FASHION_MNIST_STD)


def test_rgb_items_repeat_the_grey_image(root):
    grey = FashionMNISTDataset(root, split="test", num_samples=4)
    rgb = FashionMNISTDataset(root, split="test", num_samples=4, channels=3,
                              transform=dict(input_size=(3, 56, 56), interpolation="bicubic"))
    image, label = rgb[0]
    assert image.shape == (3, 56, 56) and label == grey[0][1] == 9
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    with pytest.raises(ValueError, match="channels"):
        FashionMNISTDataset(root, split="test", channels=2)


def test_export_image_folder_round_trips_the_pixels(root, tmp_path):
    from PIL import Image

    out = export_fashion_mnist_image_folder(tmp_path / "tree", {"val": ("test", 0, 30)}, root=root)
    files = sorted((out / "val").glob("*/*.png"))
    assert len(files) == 30 and len({f.parent.name for f in files}) <= 10
    source = FashionMNISTDataset(root, split="test", num_samples=30)
    first = out / "val" / "09_Ankle_boot" / "00000.png"  # test image 0 is an ankle boot
    image = Image.open(first)
    assert image.mode == "RGB" and image.size == (28, 28)
    assert torch.equal(torch.from_numpy(np.array(image.getchannel(0))), source.data[0])
