"""Datasets, transforms and samplers for mmengine configs; importing this registers them in
mmengine's DATASETS / DATA_SAMPLERS."""
from .fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNISTDataset,
    create_fashion_mnist_transform,
    export_fashion_mnist_image_folder,
    prepare_fashion_mnist_root,
)
from .image_folder import TimmImageDataset
from .samplers import RepeatAugSampler
from .transforms import create_model_transform, resolve_model_transform_config
from . import ade20k, scenes  # noqa: F401,E402  (ADE20k-format datasets and Seg* transforms)

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNISTDataset",
    "RepeatAugSampler",
    "TimmImageDataset",
    "create_fashion_mnist_transform",
    "create_model_transform",
    "export_fashion_mnist_image_folder",
    "prepare_fashion_mnist_root",
    "resolve_model_transform_config",
]
