"""Datasets that timm.data does not cover; importing this registers them in mmengine's DATASETS."""
from .fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNISTDataset,
    create_fashion_mnist_transform,
    prepare_fashion_mnist_root,
)

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNISTDataset",
    "create_fashion_mnist_transform",
    "prepare_fashion_mnist_root",
]
