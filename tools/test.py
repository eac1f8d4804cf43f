"""Evaluate a checkpoint on a config's test set.

    python tools/test.py CONFIG CHECKPOINT [--weights auto|ema|raw] [--work-dir DIR] [--cfg-options k=v ...]
    torchrun --nproc-per-node N tools/test.py CONFIG CHECKPOINT --launcher pytorch

Any task whose config builds mmengine's Runner (classification, segmentation, ...). CHECKPOINT
is a run checkpoint of ``tools/train.py`` (``epoch_N.pth`` / ``iter_N.pth``). A run with
mmengine's ``EMAHook`` stores its EMA weights as the checkpoint's ``state_dict`` and the raw
training weights beside them; ``--weights auto`` (default) evaluates the EMA weights when
present (what the run's validation reported), ``raw`` the training weights. The config's
EMAHook is dropped for testing, so the chosen weights are the ones evaluated.

Prints ``test metrics (N images): name: value, ...`` (plus ``test accuracy: ...`` for
classification) and writes them to ``<work dir>/test_<checkpoint stem>.json``; the work dir
defaults to the checkpoint's folder. The run's own checkpoint is loaded with
``weights_only=False`` (see ``mambazoo.engine.checkpoint``), so only test files you trust.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

from mmengine.dist import is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import load_state_dict

from mambazoo.engine import checkpoint_weights, load_trusted_checkpoint
from mambazoo.engine.cli import add_config_args, load_config, report_test_metrics, setup_process


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser, "test_dataloader.batch_size=64")
    parser.add_argument("checkpoint", help="a checkpoint written by tools/train.py")
    parser.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto",
                        help="EMA or raw training weights (auto: EMA when the checkpoint has them)")
    parser.add_argument("--work-dir", help="where logs and the metrics JSON go (default: the checkpoint's folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint not found: {args.checkpoint}")
    cfg = load_config(args)
    cfg.work_dir = args.work_dir or osp.dirname(osp.abspath(args.checkpoint))
    cfg.load_from, cfg.resume = None, False
    cfg.custom_hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") not in ("EMAHook",)]
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler", "auto_scale_lr"):
        cfg.pop(key, None)  # testing builds none of the training parts
    setup_process(cfg)
    checkpoint = load_trusted_checkpoint(args.checkpoint, map_location="cpu")
    state_dict, kind = checkpoint_weights(checkpoint, args.weights)
    runner = Runner.from_cfg(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    load_state_dict(model, state_dict, strict=True, logger=runner.logger)
    runner.logger.info(f"testing the {kind} weights of {args.checkpoint}")
    metrics = runner.test()
    if not is_main_process():
        return {}

    stem = osp.splitext(osp.basename(args.checkpoint))[0]
    info = {"config": args.config, "checkpoint": args.checkpoint, "weights": kind}
    return report_test_metrics(runner, metrics, osp.join(cfg.work_dir, f"test_{stem}.json"), info,
                               note=f", {kind} weights")


if __name__ == "__main__":
    main(sys.argv[1:])
