"""Loading mmengine's own run-state checkpoints on torch >= 2.6, and writing them atomically.

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

import contextlib
import os
import uuid
from pathlib import Path

import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS
from mmengine.runner import CheckpointLoader

__all__ = [
    "AtomicCheckpointHook",
    "AtomicLocalBackend",
    "checkpoint_weights",
    "load_trusted_checkpoint",
    "trust_checkpoints_under",
    "trusted_paths",
]

_TRUSTED: list[Path] = []


def load_trusted_checkpoint(filename: str | os.PathLike, map_location=None):
    """``torch.load`` with ``weights_only=False``: only for checkpoints this project wrote."""
    return torch.load(filename, map_location=map_location, weights_only=False)


def checkpoint_weights(checkpoint: dict, weights: str = "auto") -> tuple[dict, str]:
    """The model weights to evaluate from a checkpoint this project's runs wrote.

    mmengine's ``EMAHook`` saves the EMA weights as ``state_dict`` (so the file deploys as
    is) and the raw training weights, ``module.``-prefixed, as ``ema_state_dict`` (with its
    ``steps`` counter). Runs without EMA have ``state_dict`` only.

    Args:
        checkpoint: the loaded file (a dict with ``state_dict``).
        weights: ``"auto"`` (EMA when the file has it, else the raw weights), ``"ema"``
            (error when absent) or ``"raw"``.

    Returns:
        ``(state_dict, kind)`` with ``kind`` ``"ema"`` or ``"raw"``.
    """
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    if "state_dict" not in checkpoint:
        raise ValueError(f"not a run checkpoint: no 'state_dict' among its keys {sorted(checkpoint)}")
    has_ema = "ema_state_dict" in checkpoint
    if weights == "ema" and not has_ema:
        raise ValueError("weights='ema' but the checkpoint has no EMA weights (the run had no EMAHook)")
    if has_ema and weights == "raw":
        raw = {k[len("module."):]: v for k, v in checkpoint["ema_state_dict"].items() if k.startswith("module.")}
        return raw, "raw"
    return checkpoint["state_dict"], "ema" if has_ema else "raw"


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


# --- atomic checkpoint files ------------------------------------------------------------------
#
# mmengine's CheckpointHook serialises the run state into memory and hands the bytes to the file
# backend, whose local ``put`` opens ``epoch_N.pth`` with mode ``wb`` and writes into it. A run
# killed (OOM killer, pre-emption, Ctrl-C) or failing (disk full) during that write leaves a
# truncated ``epoch_N.pth`` under the final name, and ``--resume`` (or anyone loading it) then
# fails on a corrupt file. The backend below writes the bytes to a hidden temporary file in the
# same directory, fsyncs it and renames it over the final name with ``os.replace``, which is
# atomic on POSIX within one file system: readers see either no file or the whole file, never
# a partial one, and a failed write removes its temporary file. Note that mmengine deletes the
# oldest kept checkpoint (``max_keep_ckpts``) before writing the new one, so keep
# ``max_keep_ckpts >= 2`` to still hold a good checkpoint if a save fails.


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` (checkpoint bytes) writes atomically."""

    def put(self, obj: bytes, filepath: str | os.PathLike) -> None:
        filepath = os.fspath(filepath)
        directory = os.path.dirname(filepath) or "."
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(filepath)}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "xb") as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise


register_backend("atomic_local", AtomicLocalBackend, force=True)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` writing its files through :class:`AtomicLocalBackend`.

    Same arguments as ``CheckpointHook``; when neither ``backend_args`` nor
    ``file_client_args`` is given, ``backend_args=dict(backend="atomic_local")`` (checkpoints
    on a local disk). Pass ``backend_args`` explicitly for remote storage.
    """

    def __init__(self, *args, backend_args: dict | None = None, file_client_args: dict | None = None, **kwargs):
        if backend_args is None and file_client_args is None:
            backend_args = dict(backend="atomic_local")
        super().__init__(*args, backend_args=backend_args, file_client_args=file_client_args, **kwargs)
