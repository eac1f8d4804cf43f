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
import json
import os.path as osp
import sys

from mmengine.config import DictAction
from mmengine.dist import is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import load_state_dict

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from train import adapt_launcher, check_cfg_options, init_cpu_process_group  # noqa: E402  (the same config checks)

from mambazoo.engine import checkpoint_weights, load_trusted_checkpoint  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="mmengine config file")
    parser.add_argument("checkpoint", help="a checkpoint written by tools/train.py")
    parser.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto",
                        help="EMA or raw training weights (auto: EMA when the checkpoint has them)")
    parser.add_argument("--work-dir", help="where logs and the metrics JSON go (default: the checkpoint's folder)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries, e.g. test_dataloader.batch_size=64")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    try:
        check_cfg_options(cfg, args.cfg_options, args.config)
    except KeyError as error:
        raise SystemExit(f"config error: {error.args[0]}") from None
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    adapt_launcher(cfg)
    cfg.work_dir = args.work_dir or osp.dirname(osp.abspath(args.checkpoint))
    cfg.load_from, cfg.resume = None, False
    cfg.custom_hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") not in ("EMAHook",)]
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler", "auto_scale_lr"):
        cfg.pop(key, None)  # testing builds none of the training parts
    if cfg.get("torch_num_threads"):
        import torch

        torch.set_num_threads(cfg.torch_num_threads)

    init_cpu_process_group(cfg)
    checkpoint = load_trusted_checkpoint(args.checkpoint, map_location="cpu")
    state_dict, kind = checkpoint_weights(checkpoint, args.weights)
    runner = Runner.from_cfg(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    load_state_dict(model, state_dict, strict=True, logger=runner.logger)
    runner.logger.info(f"testing the {kind} weights of {args.checkpoint}")
    metrics = runner.test()
    if not is_main_process():
        return {}

    num_images = len(runner.test_dataloader.dataset)
    result = {
        "config": args.config,
        "checkpoint": args.checkpoint,
        "weights": kind,
        "num_images": num_images,
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    stem = osp.splitext(osp.basename(args.checkpoint))[0]
    with open(osp.join(cfg.work_dir, f"test_{stem}.json"), "w") as f:
        json.dump(result, f, indent=2)
    summary = ", ".join(f"{k}: {v:.4f}" for k, v in result["metrics"].items())
    print(f"test metrics ({num_images} images, {kind} weights): {summary}", flush=True)
    if "accuracy/top1" in metrics:
        print(f"test accuracy: {metrics['accuracy/top1']:.4f} ({num_images} images)", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
