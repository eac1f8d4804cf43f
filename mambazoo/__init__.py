"""mambazoo: Mamba (selective state-space) backbones as timm models.

``import mambazoo`` registers every model with timm (``timm.create_model("vim_small")``). It stays
cheap and CPU-safe: no Triton module is imported and no CUDA call is made here.
"""
from . import models  # noqa: F401  (registers the models with timm)

__version__ = "0.1.0"
