"""Train a model from an mmengine config, then evaluate it on the config's test set.

    python tools/train.py CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--resume [CKPT]]
    torchrun --nproc-per-node N tools/train.py CONFIG --launcher pytorch

Any task whose config builds mmengine's Runner runs through it (classification,
segmentation, ...). Checkpoints, logs (with ETA; scalars as JSON and TensorBoard
events when the config's visualizer has those backends), curves and
``test_metrics.json`` go to the work dir (default ``work_dirs/<config name>``).
The last line printed is the test result, e.g. ``test accuracy: 0.8912 (10000
images)``. A config may set ``torch_num_threads`` (intra-op CPU threads of the
main process; unset: torch's default).

``--cfg-options`` keys are checked against the config before anything is built: a
key whose parent does not exist, or a new top-level key the Runner does not read,
stops with an error naming it (and the closest existing keys). New keys inside a
built object's dict (``model.drop_path_rate=0.1``) pass through; the object's
constructor then names a wrong one (``unexpected keyword argument``).

With ``--launcher pytorch`` on machines without CUDA, the config's NCCL backend
becomes gloo and DDP gets ``device_ids=None``, so the same config runs on CPU
processes (tests use this).

``--resume`` continues from the newest checkpoint in the work dir (or from
CKPT). mmengine 0.10.7 loads checkpoints with torch's ``weights_only=True``
default (torch >= 2.6), which refuses the run state mmengine itself saves, so
checkpoints in the work dir and an explicit CKPT are loaded with
``weights_only=False`` (see ``mambazoo.engine.checkpoint``); other files, such as
a ``load_from`` of foreign weights, keep the weights-only check.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
import time

from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.runner import Runner

from mambazoo.engine import trust_checkpoints_under
from mambazoo.engine.cli import add_config_args, load_config, report_test_metrics, setup_process


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(parser, "train_cfg.max_epochs=1 (list items by index: param_scheduler.0.end=10)")
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
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    cfg = load_config(args)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise SystemExit(f"--resume checkpoint not found: {args.resume}")
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = build_config(args)
    setup_process(cfg)
    trust_checkpoints_under(cfg.work_dir, *([args.resume] if args.resume not in (None, "auto") else []))

    start = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    try:
        return _train_and_test(args, cfg, runner, start)
    finally:
        release_dataloader_workers(runner)


def release_dataloader_workers(runner: Runner) -> None:
    """Stop the persistent DataLoader workers now, as their loader's ``__del__`` would.

    Left to interpreter shutdown, a dozen persistent workers per loader are joined one by one
    with a timeout each; on the GPU host that kept a finished run alive for ~90 s.
    """
    for loop_name in ("_train_loop", "_val_loop", "_test_loop"):
        loader = getattr(getattr(runner, loop_name, None), "dataloader", None)
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None


def _train_and_test(args: argparse.Namespace, cfg: Config, runner: Runner, start: float) -> dict:
    runner.train()
    train_seconds = time.perf_counter() - start
    throughput = runner.message_hub.get_info("train_throughput")
    if args.no_test:
        return {}

    metrics = runner.test()
    if not is_main_process():
        return {}
    if throughput and throughput.get("images_per_second"):
        peak = throughput.get("peak_memory_gib")
        print(
            f"train throughput: {throughput['images_per_second']:.1f} img/s"
            + ("" if peak is None else f", peak GPU memory {peak:.2f} GiB"),
            flush=True,
        )
    info = {"config": args.config, "work_dir": cfg.work_dir}
    extra = {
        "train_seconds": round(train_seconds, 1),
        "train_throughput": throughput,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    return report_test_metrics(runner, metrics, osp.join(cfg.work_dir, "test_metrics.json"), info, extra)


if __name__ == "__main__":
    main(sys.argv[1:])
