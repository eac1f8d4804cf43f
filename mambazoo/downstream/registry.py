"""Register the dense backbones in mmengine's root ``MODELS`` registry, for mmdet/mmseg configs.

mmdet's and mmseg's ``MODELS`` registries are children of mmengine's root ``MODELS``
(``Registry('model', parent=mmengine.registry.MODELS, ...)``). A child's ``get(type)`` with an
unscoped name looks in its own table, then in its parent's, up to the root; so an mmdet/mmseg
config finds these classes with::

    custom_imports = dict(imports=["mambazoo.downstream"], allow_failed_imports=False)
    model = dict(..., backbone=dict(type="VimBackbone", ...), neck=dict(type="SimpleFeaturePyramid", ...))

(``type="mmengine.VimBackbone"`` names the root's scope explicitly, which also works.)
Registered names: ``VimBackbone``, ``SimpleFeaturePyramid``, ``VimPyramidBackbone``.
Backbones return a tuple of NCHW maps and necks take and return one, as mmdet/mmseg expect.
"""
from __future__ import annotations

from mmengine.registry import MODELS

from .pyramid import SimpleFeaturePyramid, VimBackbone, VimPyramidBackbone

__all__ = ["REGISTERED"]

REGISTERED = (VimBackbone, SimpleFeaturePyramid, VimPyramidBackbone)
for _module in REGISTERED:
    MODELS.register_module(module=_module)
