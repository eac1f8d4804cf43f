"""The model families, one file each; importing this registers them with timm."""
from . import vim  # noqa: F401
