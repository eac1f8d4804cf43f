from .op import ssd

__all__ = ["ssd"]
