"""Train a model from an mmengine config, then evaluate it on the config's test set.

    python tools/train.py CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--resume [CKPT]]
    torchrun --nproc-per-node N tools/train.py CONFIG --launcher pytorch

Checkpoints, logs (with ETA), curves and ``test_metrics.json`` go to the work
dir (default ``work_dirs/<config name>``). The last line printed is the test
result, e.g. ``test accuracy: 0.8912 (10000 images)``. A config may set
``torch_num_threads`` (intra-op CPU threads of the main process; unset: torch's
default).

``--resume`` continues from the newest checkpoint in the work dir (or from
CKPT). mmengine 0.10.7 loads checkpoints with torch's ``weights_only=True``
default (torch >= 2.6), which refuses the run state mmengine itself saves, so
checkpoints in the work dir and an explicit CKPT are loaded with
``weights_only=False`` (see ``mambazoo.engine.checkpoint``); other files, such as
a ``load_from`` of foreign weights, keep the weights-only check.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
import time

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import is_main_process
from mmengine.runner import Runner

from mambazoo.engine import trust_checkpoints_under


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="mmengine config file")
    parser.add_argument("--work-dir", help="where checkpoints, logs and results go")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="resume from CKPT, or from the newest checkpoint in the work dir when CKPT is omitted",
    )
    parser.add_argument("--no-test", action="store_true", help="skip the test loop after training")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        default={},
        help="override config entries, e.g. train_cfg.max_epochs=1 (list items by index: param_scheduler.0.end=10)",
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = build_config(args)
    if cfg.get("torch_num_threads"):
        # small models on a few busy cores run faster with one intra-op thread (see the config)
        torch.set_num_threads(cfg.torch_num_threads)
    trust_checkpoints_under(cfg.work_dir, *([args.resume] if args.resume not in (None, "auto") else []))

    start = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    runner.train()
    train_seconds = time.perf_counter() - start
    if args.no_test:
        return {}

    metrics = runner.test()
    if not is_main_process():
        return {}
    num_images = len(runner.test_dataloader.dataset)
    result = {
        "config": args.config,
        "work_dir": cfg.work_dir,
        "num_images": num_images,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    with open(osp.join(cfg.work_dir, "test_metrics.json"), "w") as f:
        json.dump(result, f, indent=2)

    summary = ", ".join(f"{k}: {v:.4f}" for k, v in result["metrics"].items())
    print(f"test metrics ({num_images} images): {summary}", flush=True)
    if "accuracy/top1" in metrics:
        print(f"test accuracy: {metrics['accuracy/top1']:.4f} ({num_images} images)", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
