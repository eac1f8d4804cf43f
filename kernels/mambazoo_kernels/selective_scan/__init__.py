from .op import bidirectional_selective_scan, selective_scan

__all__ = ["selective_scan", "bidirectional_selective_scan"]
