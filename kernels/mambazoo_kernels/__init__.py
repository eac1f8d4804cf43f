"""mambazoo_kernels: the shared selective-state-space kernels of mambazoo.

One public function per operation. Each validates its arguments and picks a backend: the Triton
kernel for CUDA tensors where the op has one, the PyTorch reference everywhere else, or the one
named by ``backend=`` / ``MAMBAZOO_KERNEL_BACKEND``. Importing this package imports no Triton
module and makes no CUDA call. The kernels run as ``torch.library`` custom ops (``mambazoo::``,
see ``_library``), so ``torch.compile`` and ``torch.export`` see one op per kernel call;
``reference_decompositions()`` turns them back into ATen ops for exporters like ONNX.
``channel_last(...)`` says whether ``(..., dim, L)`` tensors are channel-last views, the layout
in which the Triton scan and conv read their inputs in place and write their outputs;
``to_channel_last(t)`` makes one.
"""
from ._library import channel_last, reference_decompositions, to_channel_last
from .causal_conv1d import causal_conv1d
from .decode import causal_conv1d_update, selective_state_update
from .selective_scan import bidirectional_selective_scan, selective_scan
from .ssd import bidirectional_ssd, ssd

__all__ = ["selective_scan", "bidirectional_selective_scan", "ssd", "bidirectional_ssd", "causal_conv1d",
           "selective_state_update", "causal_conv1d_update", "reference_decompositions", "channel_last",
           "to_channel_last"]
