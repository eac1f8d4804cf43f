"""Argument checks shared by every op: they run before any launch and name the bad argument."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
Dim = Union[int, None]


def check_tensor(
    name: str,
    tensor,
    shape: Sequence[Dim],
    dims: str,
    device: Optional[torch.device] = None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
) -> torch.Tensor:
    """Check that ``tensor`` is a floating tensor of ``shape`` (``None`` = any size) on ``device``.

    ``dims`` names the expected layout, e.g. ``"(batch, dim, length)"``; it is quoted in the error.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {dims}, got {type(tensor).__name__}")
    if tensor.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {str(tensor.dtype).replace('torch.', '')}")
    expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")
    if tensor.dim() != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape)):
        raise ValueError(f"{name} must have shape {dims} = {expected}, got {tuple(tensor.shape)}")
    if device is not None and tensor.device != device:
        raise ValueError(f"{name} must be on {device} like the other inputs, got {tensor.device}")
    return tensor


def check_optional(name: str, tensor, shape, dims, device=None, dtypes=FLOAT_DTYPES):
    """``check_tensor`` for an argument that may be ``None``."""
    if tensor is None:
        return None
    return check_tensor(name, tensor, shape, dims, device, dtypes)


def check_d_state(d_state: int, max_d_state: int = 256) -> None:
    if not 1 <= d_state <= max_d_state:
        raise ValueError(f"d_state must be in [1, {max_d_state}], got {d_state}")
