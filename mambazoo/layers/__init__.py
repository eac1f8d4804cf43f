"""Building blocks shared by the model families: Mamba mixers and the residual block."""
from .block import MambaBlock, add_and_norm
from .mixer import BidirectionalMambaMixer, MambaMixer

__all__ = ["MambaMixer", "BidirectionalMambaMixer", "MambaBlock", "add_and_norm"]
