"""Loading mmengine's own run-state checkpoints on torch >= 2.6.

mmengine 0.10.7 reads local checkpoints with a bare ``torch.load``, whose default became
``weights_only=True`` in torch 2.6. The files mmengine itself writes (``epoch_N.pth``) carry the
message hub's ``HistoryBuffer`` objects, numpy arrays and bound methods (pickled through
``builtins.getattr``); the weights-only unpickler refuses them, so ``--resume`` fails.
Allow-listing ``getattr`` for every load would weaken the check for foreign files too, so
instead the trust is scoped by place: files under the directories passed to
:func:`trust_checkpoints_under` (the run's own work dir, a checkpoint the user names for
``--resume``) are loaded with ``weights_only=False``, like the Python config that the same run
executes anyway; every other local file keeps torch's weights-only default.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from mmengine.runner import CheckpointLoader

__all__ = ["load_trusted_checkpoint", "trust_checkpoints_under", "trusted_paths"]

_TRUSTED: list[Path] = []


def load_trusted_checkpoint(filename: str | os.PathLike, map_location=None):
    """``torch.load`` with ``weights_only=False``: only for checkpoints this project wrote."""
    return torch.load(filename, map_location=map_location, weights_only=False)


def _is_trusted(filename: str) -> bool:
    path = Path(filename).expanduser().resolve()
    return any(path == root or root in path.parents for root in _TRUSTED)


def _load_local(filename: str, map_location=None):
    """mmengine's local loader (scheme ``''``), trusting only files under the trusted paths."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    if _is_trusted(filename):
        return load_trusted_checkpoint(filename, map_location)
    return torch.load(filename, map_location=map_location, weights_only=True)


_load_local.__name__ = "load_from_local"  # mmengine logs the backend name from it


def trust_checkpoints_under(*paths: str | os.PathLike) -> None:
    """Let mmengine load checkpoints at or below ``paths`` with ``weights_only=False``.

    Installs the scoped local loader in mmengine's ``CheckpointLoader`` (idempotent) and adds
    ``paths`` (directories or single files) to the trusted set for this process.
    """
    for path in paths:
        resolved = Path(path).expanduser().resolve()
        if resolved not in _TRUSTED:
            _TRUSTED.append(resolved)
    CheckpointLoader.register_scheme(prefixes="", loader=_load_local, force=True)


def trusted_paths() -> tuple[Path, ...]:
    """The directories and files currently trusted, resolved."""
    return tuple(_TRUSTED)
