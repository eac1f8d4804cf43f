"""Backend choice shared by every op.

``backend=None`` (the default) reads the environment variable ``MAMBAZOO_KERNEL_BACKEND``
(``auto``, ``reference`` or ``triton``; unset means ``auto``). ``auto`` runs the Triton kernel
for CUDA tensors when the op has one, and the PyTorch reference everywhere else.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import torch

BACKEND_ENV = "MAMBAZOO_KERNEL_BACKEND"
BACKENDS = ("auto", "reference", "triton")
# The SM count the kernels' launch plans assume where no CUDA device is asked (H100/H200).
DEFAULT_SMS = 132


def select_backend(op: str, requested: Optional[str], device: torch.device, has_triton: bool) -> str:
    """Return ``"reference"`` or ``"triton"`` for ``op`` on ``device``."""
    choice = requested if requested is not None else os.environ.get(BACKEND_ENV, "auto")
    if choice not in BACKENDS:
        source = "backend" if requested is not None else BACKEND_ENV
        raise ValueError(f"{source} must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        return "triton" if has_triton and device.type == "cuda" else "reference"
    if choice == "triton" and not has_triton:
        raise NotImplementedError(f"{op} has no Triton kernel yet; use backend='reference'")
    if choice == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton runs CPU tensors only in its interpreter; without it the launch fails obscurely.
        raise ValueError(
            f"{op}: backend='triton' needs CUDA tensors (got {device}), or TRITON_INTERPRET=1 set "
            "before Triton is imported; use backend='reference' on the CPU"
        )
    return choice


def use_triton(
    op: str, requested: Optional[str], device: torch.device, unsupported: Callable[[], Optional[str]],
) -> bool:
    """Whether ``op`` runs its Triton kernel: the chosen backend is Triton and ``unsupported()``
    (called only then, so it may import the Triton module) gives no reason against the arguments.

    Auto selection falls back to the reference for arguments the kernels do not cover (e.g.
    float64); an explicit ``backend="triton"`` (argument or environment) raises instead.
    """
    if select_backend(op, requested, device, has_triton=True) != "triton":
        return False
    reason = unsupported()
    if reason is None:
        return True
    if (requested if requested is not None else os.environ.get(BACKEND_ENV, "auto")) == "triton":
        raise NotImplementedError(f"{op}: {reason}; use backend='reference'")
    return False


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd will ask for gradients of any of ``tensors`` (``None`` allowed), so a Triton
    forward must store what its backward reads."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; :data:`DEFAULT_SMS` for any other device (CPU
    tensors under the Triton interpreter, fake tensors without a GPU)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return DEFAULT_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count
