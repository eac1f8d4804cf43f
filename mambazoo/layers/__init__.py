"""Building blocks shared by the model families: Mamba mixers and the residual block."""
from .block import MambaBlock, add_and_norm
from .mamba2 import BidirectionalMamba2Mixer, Mamba2Mixer, RMSNormGated
from .mixer import BidirectionalMambaMixer, MambaMixer

__all__ = [
    "MambaMixer", "BidirectionalMambaMixer", "Mamba2Mixer", "BidirectionalMamba2Mixer", "RMSNormGated",
    "MambaBlock", "add_and_norm",
]
