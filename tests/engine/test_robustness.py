"""Trustworthy runs: a NaN loss stops training before it is checkpointed, a killed run resumes
to exactly the parameters of an uninterrupted one, and checkpoint files appear atomically."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.runner import save_checkpoint

from mambazoo.data import DEBIAN_FASHION_MNIST_DIR
from mambazoo.engine import AtomicLocalBackend, load_trusted_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/vim_fashion_mnist.py"

needs_data = pytest.mark.skipif(
    not Path(DEBIAN_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)

# 512 images at batch 32: 16 iterations per epoch; main-process data loading (num_workers=0)
# so no worker RNG is involved, and a tiny validation set.
TINY = [
    "train_dataloader.dataset.num_samples=512",
    "train_dataloader.batch_size=32",
    "train_dataloader.num_workers=0",
    "train_dataloader.persistent_workers=False",
    "val_dataloader.dataset.num_samples=64",
    "val_dataloader.num_workers=0",
    "val_dataloader.persistent_workers=False",
    "param_scheduler.0.end=10",
    "train_cfg.max_epochs=2",
]
ITERS_PER_EPOCH = 16

# Runs tools/train.py in a fresh process with test-only faults (NAN_AT_ITER, KILL_AFTER_EPOCH).
DRIVER = "tests/engine/_fault_driver.py"


def train(work_dir, *extra_args, env=None):
    command = [sys.executable, DRIVER, "tools/train.py", CONFIG, "--work-dir", str(work_dir), "--no-test", *extra_args]
    command += ["--cfg-options", *TINY]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def final_params(path):
    return load_trusted_checkpoint(path)["state_dict"]


@needs_data
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    nan_iter = ITERS_PER_EPOCH + 5  # epoch 2, after epoch_1.pth was written
    result = train(tmp_path, env={"NAN_AT_ITER": str(nan_iter)})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "RuntimeError: non-finite training loss" in output, output[-3000:]
    assert f"at iteration {nan_iter} (epoch 2, batch 5/{ITERS_PER_EPOCH}): loss=nan" in output
    assert "last good checkpoint is kept" in output and "epoch_1.pth" in output

    checkpoints = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert checkpoints == ["epoch_1.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip().endswith("epoch_1.pth")
    checkpoint = load_trusted_checkpoint(tmp_path / "epoch_1.pth")
    assert (checkpoint["meta"]["epoch"], checkpoint["meta"]["iter"]) == (1, ITERS_PER_EPOCH)
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


@needs_data
def test_killed_and_resumed_run_matches_the_uninterrupted_run_exactly(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = train(straight)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    result = train(killed, env={"KILL_AFTER_EPOCH": "1"})
    assert result.returncode == -9, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in killed.glob("*.pth")) == ["epoch_1.pth"]
    result = train(killed, "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resumed epoch: 1, iter: {ITERS_PER_EPOCH}" in result.stdout

    expected, resumed = final_params(straight / "epoch_2.pth"), final_params(killed / "epoch_2.pth")
    assert expected.keys() == resumed.keys()
    different = [k for k in expected if not torch.equal(expected[k], resumed[k])]
    assert not different, different
    # and the first epoch itself was identical (same seed, same data order)
    assert all(torch.equal(a, b) for a, b in zip(final_params(straight / "epoch_1.pth").values(),
                                                  final_params(killed / "epoch_1.pth").values()))


def test_atomic_put_leaves_no_partial_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "epoch_1.pth"
    target.write_bytes(b"previous good checkpoint")

    def fail(fd):  # the bytes are already in the temporary file when the save fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"state_dict": {"w": torch.ones(3)}}, str(target), backend_args={"backend": "atomic_local"})
    assert target.read_bytes() == b"previous good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_1.pth"]  # no temporary file left

    with pytest.raises(OSError, match="No space left"):
        AtomicLocalBackend().put(b"x" * 1000, tmp_path / "epoch_2.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_1.pth"]


def test_atomic_put_writes_the_whole_file(tmp_path):
    target = tmp_path / "sub" / "epoch_1.pth"
    save_checkpoint({"state_dict": {"w": torch.arange(4.0)}}, str(target), backend_args={"backend": "atomic_local"})
    assert torch.equal(load_trusted_checkpoint(target)["state_dict"]["w"], torch.arange(4.0))
    assert [p.name for p in target.parent.iterdir()] == ["epoch_1.pth"]
