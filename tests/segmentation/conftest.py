"""Shared fixtures: a tiny composite-scenes set (real images) and a tiny Vim UperNet segmentor."""
import pytest
import torch
from _seg_helpers import SCENES, tiny_segmentor_cfg
from mmengine.registry import MODELS

import mambazoo.data  # noqa: F401  (registers the datasets and Seg* transforms)
import mambazoo.engine  # noqa: F401  (registers the segmentor, heads and metric)
from mambazoo.data.scenes import build_composite_scenes


@pytest.fixture(scope="session")
def fashion_mnist_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fashion_mnist")


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory, fashion_mnist_root):
    root = tmp_path_factory.mktemp("scenes") / "scenes"
    return build_composite_scenes(root, fashion_mnist_root=fashion_mnist_root, **SCENES)


@pytest.fixture
def segmentor():
    torch.manual_seed(0)
    return MODELS.build(tiny_segmentor_cfg()).eval()
