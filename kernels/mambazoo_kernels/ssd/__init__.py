from .op import bidirectional_ssd, ssd

__all__ = ["ssd", "bidirectional_ssd"]
