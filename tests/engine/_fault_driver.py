"""Runs a tool (``python tests/engine/_fault_driver.py tools/train.py ARGS...``) in a fresh process
(mmengine keeps global state per run) after applying the test-only faults and probes its
environment asks for:

- ``NAN_AT_ITER=k``: the training loss of iteration k (1-based) is multiplied by NaN;
- ``KILL_AFTER_EPOCH=n``: the process SIGKILLs itself right after epoch n's checkpoint is written;
- ``DUMP_PARAMS=1``: every rank saves its final parameters to ``<work_dir>/rank<r>.pt``.
"""
import os
import runpy
import signal
import sys

import torch
from mmengine.dist import get_rank
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

import mambazoo.engine

nan_at = int(os.environ.get("NAN_AT_ITER", 0))
if nan_at:
    forward = mambazoo.engine.TimmClassifier.forward
    calls = [0]

    def poisoned(self, inputs, data_samples=None, mode="tensor"):
        out = forward(self, inputs, data_samples, mode)
        if mode == "loss":
            calls[0] += 1
            if calls[0] == nan_at:
                out = {"loss": out["loss"] * float("nan")}
        return out

    mambazoo.engine.TimmClassifier.forward = poisoned

kill_after = int(os.environ.get("KILL_AFTER_EPOCH", 0))
if kill_after:
    save = CheckpointHook._save_checkpoint

    def save_then_die(self, runner):
        save(self, runner)
        if runner.epoch + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    CheckpointHook._save_checkpoint = save_then_die

if os.environ.get("DUMP_PARAMS"):
    train = Runner.train

    def train_and_dump(self):
        model = train(self)
        module = self.model.module if is_model_wrapper(self.model) else self.model
        torch.save({k: v.detach().clone() for k, v in module.state_dict().items()},
                   os.path.join(self.work_dir, f"rank{get_rank()}.pt"))
        return model

    Runner.train = train_and_dump

tool = sys.argv[1]
sys.argv = [tool, *sys.argv[2:]]
runpy.run_path(tool, run_name="__main__")
