"""mambazoo_kernels: the shared selective-state-space kernels of mambazoo.

One public function per operation. Each validates its arguments and picks a backend: the Triton
kernel for CUDA tensors where the op has one, the PyTorch reference everywhere else, or the one
named by ``backend=`` / ``MAMBAZOO_KERNEL_BACKEND``. Importing this package imports no Triton
module and makes no CUDA call.
"""
from .causal_conv1d import causal_conv1d
from .selective_scan import bidirectional_selective_scan, selective_scan
from .ssd import ssd

__all__ = ["selective_scan", "bidirectional_selective_scan", "ssd", "causal_conv1d"]
