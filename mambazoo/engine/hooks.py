"""mmengine hooks: training curves as PNG/JSON, a tqdm progress bar, a stop on a non-finite
loss, per-epoch seeding that makes ``--resume`` reproduce an uninterrupted run, and the
training throughput / peak GPU memory of a run."""
from __future__ import annotations

import contextlib
import json
import math
import os.path as osp
import random
import time
from typing import Any

import numpy as np
import torch
from mmengine.dist import all_reduce, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop, find_latest_checkpoint

__all__ = ["EpochSeedHook", "NonFiniteLossHook", "ProgressBarHook", "ThroughputHook", "TrainingCurvesHook"]


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training with a ``RuntimeError`` as soon as a loss is NaN or infinite.

    Checked after every training iteration on every loss value the model returned (mmengine's
    log vars, ``outputs["loss"]`` included). The priority runs it before the checkpoint hook, so
    the poisoned weights (the optimizer already stepped on the NaN gradients) are never saved:
    the newest checkpoint on disk stays the last good one, and the error names it, the
    iteration, the epoch and the value. Under distributed training the ranks agree on the
    verdict, so all of them stop together.
    """

    priority = "VERY_HIGH"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        bad = {k: _scalar(v) for k, v in (outputs or {}).items() if _is_number(v) and not math.isfinite(_scalar(v))}
        if get_world_size() > 1:
            flag = torch.tensor(float(bool(bad)), device=_device_of(outputs))
            all_reduce(flag)
            if flag.item() and not bad:
                bad = {"loss": "non-finite on another rank"}
        if not bad:
            return
        last = runner.message_hub.get_info("last_ckpt") or find_latest_checkpoint(runner.work_dir)
        values = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise RuntimeError(
            f"non-finite training loss at iteration {runner.iter + 1} (epoch {runner.epoch + 1}, "
            f"batch {batch_idx + 1}/{len(runner.train_dataloader)}): {values}. Training stopped "
            "without saving the poisoned weights; the last good checkpoint is kept: "
            f"{last or 'none was saved yet'}"
        )


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Seed Python's, NumPy's and torch's global RNGs at the start of every training epoch.

    mmengine checkpoints do not carry the global RNG states, and the validation loop between
    an epoch's checkpoint and the next epoch draws from torch's RNG too (each DataLoader
    iterator draws its base seed), so a resumed run would augment (random flips, colour
    jitter with ``num_workers=0``; worker seeds otherwise) and drop differently from an
    uninterrupted one. Seeding each epoch from ``(runner.seed, epoch[, rank])`` makes an
    epoch's random stream independent of what ran before it: ``--resume`` after epoch N
    reproduces epochs N+1... exactly. The seed is mixed through NumPy's ``SeedSequence`` so it
    does not coincide with the sampler's ``seed + epoch`` shuffle generator.
    """

    priority = "VERY_HIGH"

    def before_train_epoch(self, runner) -> None:
        entropy = [runner.seed, runner.epoch]
        if runner._randomness_cfg.get("diff_rank_seed", False):
            entropy.append(get_rank())
        state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
        seed = int(state[0]) << 32 | int(state[1])
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


@HOOKS.register_module()
class TrainingCurvesHook(Hook):
    """Record training loss, lr and evaluation metrics; plot them to ``work_dir``.

    Writes ``<work_dir>/<filename>.png`` (loss with a moving average, lr, and
    every float metric per epoch, test metrics as dashed lines) and the raw
    numbers as ``<filename>.json``, at the end of training and again after
    the test loop; the JSON also after every epoch, so a resumed run draws the
    whole curve.

    Args:
        filename: output stem inside ``work_dir``.
        smooth: window (iterations) of the loss moving average.
    """

    priority = "LOW"

    def __init__(self, filename: str = "curves", smooth: int = 20) -> None:
        self.filename = filename
        self.smooth = smooth
        self.history: dict[str, Any] = {"train": [], "val": [], "test": {}}

    def before_train(self, runner) -> None:
        # A resumed run (runner.iter > 0) continues the curves of the file it left in the work
        # dir, cut back to the resumed point; the file, not the checkpoint, carries them because
        # mmengine saves the epoch's checkpoint before validating that epoch.
        self.history = {"train": [], "val": [], "test": {}, "by_epoch": _by_epoch(runner)}
        saved = osp.join(runner.work_dir, self.filename + ".json")
        if runner.iter > 0 and osp.isfile(saved):
            with open(saved) as f:
                previous = json.load(f)
            self.history["train"] = [p for p in previous["train"] if p["iter"] <= runner.iter]
            self.history["val"] = [p for p in previous["val"] if p["iter"] <= runner.iter]
        self.history["by_epoch"] = _by_epoch(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs or "loss" not in outputs:
            return
        lr = runner.optim_wrapper.get_lr()["lr"]
        self.history["train"].append(
            {"iter": runner.iter + 1, "epoch": runner.epoch, "loss": _scalar(outputs["loss"]), "lr": max(lr)}
        )

    def after_train_epoch(self, runner) -> None:
        self.save_json(runner.work_dir)

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        scalars = _float_items(metrics)
        if scalars and self.history["train"]:  # validation during training only
            self.history["val"].append({"epoch": runner.epoch, "iter": runner.iter, **scalars})
            self.save_json(runner.work_dir)

    def after_test_epoch(self, runner, metrics: dict | None = None) -> None:
        self.history["test"] = _float_items(metrics)
        self.save(runner.work_dir)

    def after_train(self, runner) -> None:
        self.save(runner.work_dir)

    def save_json(self, work_dir: str) -> None:
        with open(osp.join(work_dir, self.filename + ".json"), "w") as f:
            json.dump(self.history, f)

    def save(self, work_dir: str) -> str:
        """Write the JSON and the PNG into ``work_dir``; return the PNG path."""
        self.save_json(work_dir)
        png = osp.join(work_dir, self.filename + ".png")
        self.plot(png)
        return png

    def plot(self, path: str) -> None:
        # Figure + savefig renders with Agg without touching pyplot's global backend
        from matplotlib.figure import Figure

        train, val, test = self.history["train"], self.history["val"], self.history["test"]
        metric_names = sorted({k for p in val for k in p if k not in ("epoch", "iter")} | set(test))
        # epoch-based loops validate per epoch; iteration-based ones (segmentation) every N iterations
        x_key = "epoch" if self.history.get("by_epoch", True) else "iter"
        fig = Figure(figsize=(12, 3.6), layout="constrained")
        ax_loss, ax_lr, ax_metric = fig.subplots(1, 3)

        iters = [p["iter"] for p in train]
        losses = [p["loss"] for p in train]
        ax_loss.plot(iters, losses, color="0.75", linewidth=0.8, label="loss")
        if len(losses) >= self.smooth > 1:
            window = self.smooth
            running = [sum(losses[i - window + 1 : i + 1]) / window for i in range(window - 1, len(losses))]
            ax_loss.plot(iters[window - 1 :], running, color="C0", label=f"mean of {window}")
        ax_loss.set(title="training loss", xlabel="iteration")
        ax_loss.legend()

        ax_lr.plot(iters, [p["lr"] for p in train], color="C1")
        ax_lr.set(title="learning rate (max over groups)", xlabel="iteration")

        for i, name in enumerate(metric_names):
            points = [(p[x_key], p[name]) for p in val if name in p]
            if points:
                ax_metric.plot(*zip(*points), marker="o", color=f"C{i}", label=f"val {name}")
            if name in test:
                ax_metric.axhline(test[name], color=f"C{i}", linestyle="--", label=f"test {name} {test[name]:.4f}")
        ax_metric.set(title="evaluation", xlabel="epoch" if x_key == "epoch" else "iteration")
        if metric_names:
            ax_metric.legend()
        fig.savefig(path, dpi=100)


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A tqdm bar per train epoch, validation and test run, on stderr.

    Silent when stderr is not a terminal (tqdm's ``disable=None``), so logs of
    batch jobs stay clean; while a bar is shown, the runner's console log lines
    go through ``tqdm.write`` so they do not break the bar.
    """

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._bar = None
        self._desc = None
        self._redirect = None

    def _open(self, runner, total: int, desc: str) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._close()
        self._bar = tqdm(total=total, desc=desc, disable=None, leave=False, dynamic_ncols=True)
        self._desc = desc
        if not self._bar.disable:
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm(loggers=[runner.logger]))

    def _step(self, **postfix: Any) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    def before_train(self, runner) -> None:
        if not _by_epoch(runner):  # one bar over all iterations, resumed runs start part-way
            self._open(runner, runner.max_iters, "train")
            if self._bar is not None:
                self._bar.update(runner.iter)

    def before_train_epoch(self, runner) -> None:
        if _by_epoch(runner):
            self._open(runner, len(runner.train_dataloader), f"epoch {runner.epoch + 1}/{runner.max_epochs}")

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get("loss")
        self._step(**({} if loss is None else {"loss": f"{_scalar(loss):.3f}"}))

    def after_train_epoch(self, runner) -> None:
        self._close()

    def after_train(self, runner) -> None:
        self._close()

    def _validating(self) -> bool:
        return self._bar is not None and self._desc == "val"

    def before_val_epoch(self, runner) -> None:
        if self._bar is None:  # an iteration-based run keeps its training bar through validation
            self._open(runner, len(runner.val_dataloader), "val")

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._validating():
            self._step()

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        if self._validating():
            self._close()

    def before_test_epoch(self, runner) -> None:
        self._open(runner, len(runner.test_dataloader), "test")

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._step()

    def after_test_epoch(self, runner, metrics: dict | None = None) -> None:
        self._close()

    def after_run(self, runner) -> None:
        self._close()


@HOOKS.register_module()
class ThroughputHook(Hook):
    """Training images per second (all ranks together) and peak GPU memory of the run.

    Times the training iterations of every epoch from the start of its ``warmup + 1``-th
    iteration to the end of the epoch (data loading included; validation, checkpointing
    and the first ``warmup`` iterations of each epoch, which hold compilation/autotuning and
    worker start-up, excluded; an iteration-based loop is one epoch with validation paused out), synchronising CUDA at both ends. At the end of training it
    logs ``train throughput: N img/s`` and, on CUDA, ``torch.cuda.max_memory_allocated`` of
    this rank, and stores them in the message hub's info ``"train_throughput"`` (dict:
    ``images_per_second``, ``images``, ``seconds``, ``peak_memory_gib`` or ``None``), which
    ``tools/train.py`` adds to ``test_metrics.json``.

    Args:
        warmup: iterations skipped at the start of each epoch.
    """

    priority = "VERY_LOW"

    def __init__(self, warmup: int = 5) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup!r}")
        self.warmup = warmup
        self.images = 0
        self.seconds = 0.0
        self._start = None
        self._paused = False

    def before_train(self, runner) -> None:
        self.images, self.seconds, self._start, self._paused = 0, 0.0, None, False
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if batch_idx == self.warmup:
            _synchronize()
            self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._start is not None:
            self.images += _batch_size(data_batch) * get_world_size()

    def _stop(self) -> bool:
        if self._start is None:
            return False
        _synchronize()
        self.seconds += time.perf_counter() - self._start
        self._start = None
        return True

    def after_train_epoch(self, runner) -> None:
        self._stop()

    def before_val_epoch(self, runner) -> None:
        # iteration-based loops validate inside their one "epoch": pause the clock
        self._paused = self._stop()

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        if self._paused:
            self._paused = False
            self._start = time.perf_counter()

    def after_train(self, runner) -> None:
        self._stop()
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        result = {
            "images_per_second": self.images / self.seconds if self.seconds else None,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "peak_memory_gib": None if peak is None else round(peak, 3),
        }
        runner.message_hub.update_info("train_throughput", result)
        if result["images_per_second"] is None:
            runner.logger.info(f"train throughput: not measured (no epoch had more than {self.warmup} iterations)")
        else:
            runner.logger.info(
                f"train throughput: {result['images_per_second']:.1f} img/s over {self.images} images "
                f"({self.seconds:.1f} s, first {self.warmup} iterations of each epoch excluded)"
                + ("" if peak is None else f"; peak GPU memory {peak:.2f} GiB (max_memory_allocated, rank {get_rank()})")
            )


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _batch_size(data_batch) -> int:
    """Images in a batch: ``(inputs, labels)`` tuples, or mmengine's ``dict(inputs=...)``."""
    inputs = data_batch["inputs"] if isinstance(data_batch, dict) else data_batch[0]
    return inputs.shape[0] if isinstance(inputs, torch.Tensor) else len(inputs)


def _by_epoch(runner) -> bool:
    """Whether the run's training loop counts epochs (False for ``IterBasedTrainLoop``)."""
    return not isinstance(getattr(runner, "train_loop", None), IterBasedTrainLoop)


def _scalar(value) -> float:
    return value.detach().item() if isinstance(value, torch.Tensor) else float(value)


def _is_number(value) -> bool:
    return (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, (int, float))


def _device_of(outputs) -> torch.device:
    tensors = [v for v in (outputs or {}).values() if isinstance(v, torch.Tensor)]
    return tensors[0].device if tensors else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _float_items(metrics: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
