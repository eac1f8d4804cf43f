"""Dense-task adapters: Vim backbones with a ViTDet simple feature pyramid.

- :mod:`.pyramid`: ``VimBackbone`` (stride-16/8 taps of chosen blocks, any input size),
  ``SimpleFeaturePyramid`` (strides 4-32 (+64) from them), ``VimPyramidBackbone`` (both).
- :mod:`.detection`: torchvision ``FasterRCNN`` / ``MaskRCNN`` factories (``vim_faster_rcnn``,
  ``vim_mask_rcnn``); torchvision's detection code is imported when a detector is built.
- :mod:`.registry`: importing this package registers the three modules in mmengine's root
  ``MODELS``, which mmdet's and mmseg's registries fall back to, so their configs use
  ``custom_imports=dict(imports=["mambazoo.downstream"])`` and ``type="VimBackbone"``.

Not imported by ``import mambazoo``.
"""
from . import registry  # noqa: F401  (registers the modules in mmengine's MODELS)
from .detection import TorchvisionPyramid, vim_faster_rcnn, vim_mask_rcnn
from .pyramid import SimpleFeaturePyramid, VimBackbone, VimPyramidBackbone

__all__ = [
    "SimpleFeaturePyramid",
    "TorchvisionPyramid",
    "VimBackbone",
    "VimPyramidBackbone",
    "vim_faster_rcnn",
    "vim_mask_rcnn",
]
