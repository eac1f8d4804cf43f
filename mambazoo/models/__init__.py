"""The model families, one file each; importing this registers them with timm."""
from . import vim, vim2  # noqa: F401
