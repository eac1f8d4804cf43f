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
import difflib
import inspect
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


# Top-level keys the Runner (or this tool) reads besides its constructor's arguments.
EXTRA_TOP_LEVEL_KEYS = {"model_wrapper_cfg", "find_unused_parameters", "sync_bn", "custom_imports", "torch_num_threads"}
# Dicts without a ``type`` whose keys still go to a constructor that rejects unknown ones.
KWARGS_DICTS = {"train_cfg", "val_cfg", "test_cfg", "train_dataloader", "val_dataloader", "test_dataloader", "randomness"}


def check_cfg_options(cfg: Config, options: dict, config_path: str) -> None:
    """Raise ``KeyError`` naming an ``--cfg-options`` key that cannot be right for ``cfg``.

    A key ``a.b.c`` is accepted when ``a.b.c`` exists, or when ``a.b`` exists and is
    the keyword dict of something built from it (it has a ``type``, or it is a loop,
    dataloader or randomness dict), so the constructor validates the new keyword (which may
    itself be a dict: ``optim_wrapper.clip_grad.max_norm=1.0``). A new
    top-level key (and what is below it, e.g. ``model_wrapper_cfg.type=...``) must be one
    the Runner reads. List items are addressed by index.
    """
    runner_keys = set(inspect.signature(Runner.__init__).parameters) - {"self", "cfg"}
    for key in options:
        parts = key.split(".")
        node, path = cfg.to_dict(), []
        for i, part in enumerate(parts):
            if isinstance(node, (list, tuple)):
                if not (part.isdigit() and int(part) < len(node)):
                    raise KeyError(
                        f"--cfg-options key {key!r}: {'.'.join(path)} is a list of {len(node)} items, "
                        f"{part!r} is not an index into it (config {config_path})"
                    )
                node = node[int(part)]
            elif isinstance(node, dict):
                if part not in node:
                    where = ".".join(path)
                    new_key_ok = (not path and part in runner_keys | EXTRA_TOP_LEVEL_KEYS) or (
                        path and ("type" in node or where in KWARGS_DICTS)
                    )
                    if new_key_ok:
                        break
                    close = difflib.get_close_matches(part, [str(k) for k in node], n=3, cutoff=0.6)
                    hint = f"; did you mean {', '.join(repr('.'.join([*path, c])) for c in close)}?" if close else ""
                    scope = f"the config's {where!r}" if path else "the config (nor a key mmengine's Runner reads)"
                    raise KeyError(f"--cfg-options key {key!r}: {part!r} is not in {scope} (config {config_path}){hint}")
                node = node[part]
            else:
                raise KeyError(
                    f"--cfg-options key {key!r}: {'.'.join(path)} is a {type(node).__name__}, not a dict "
                    f"(config {config_path})"
                )
            path.append(part)


def adapt_launcher(cfg: Config) -> None:
    """Let a GPU config run as CPU processes under ``--launcher``: gloo instead of NCCL, and
    DDP without ``device_ids`` (mmengine's default passes ``LOCAL_RANK``, which CPU DDP refuses)."""
    if cfg.launcher == "none" or torch.cuda.is_available():
        return
    env_cfg = dict(cfg.get("env_cfg") or {})
    dist_cfg = dict(env_cfg.get("dist_cfg") or {})
    if dist_cfg.get("backend", "nccl") == "nccl":
        dist_cfg["backend"] = "gloo"
    env_cfg["dist_cfg"] = dist_cfg
    cfg.env_cfg = env_cfg
    wrapper = dict(cfg.get("model_wrapper_cfg") or dict(type="MMDistributedDataParallel"))
    if wrapper.get("type", "MMDistributedDataParallel") == "MMDistributedDataParallel":
        wrapper.setdefault("device_ids", None)
    cfg.model_wrapper_cfg = wrapper


def init_cpu_process_group(cfg: Config) -> None:
    """mmengine's ``init_dist`` for ``--launcher pytorch`` calls ``torch.cuda.set_device``, which fails
    without a GPU; on such machines start the gloo process group here (torchrun's ``env://``), and
    the Runner uses it as it is."""
    import torch.distributed as dist

    if cfg.launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group(backend=cfg.env_cfg.dist_cfg.get("backend", "gloo"))


def build_config(args: argparse.Namespace) -> Config:
    cfg = Config.fromfile(args.config)
    check_cfg_options(cfg, args.cfg_options, args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    adapt_launcher(cfg)
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
    try:
        cfg = build_config(args)
    except KeyError as error:
        raise SystemExit(f"config error: {error.args[0]}") from None
    if cfg.get("torch_num_threads"):
        # small models on a few busy cores run faster with one intra-op thread (see the config)
        torch.set_num_threads(cfg.torch_num_threads)
    init_cpu_process_group(cfg)
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
    num_images = len(runner.test_dataloader.dataset)
    result = {
        "config": args.config,
        "work_dir": cfg.work_dir,
        "num_images": num_images,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "train_seconds": round(train_seconds, 1),
        "train_throughput": throughput,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    with open(osp.join(cfg.work_dir, "test_metrics.json"), "w") as f:
        json.dump(result, f, indent=2)

    if throughput and throughput.get("images_per_second"):
        peak = throughput.get("peak_memory_gib")
        print(
            f"train throughput: {throughput['images_per_second']:.1f} img/s"
            + ("" if peak is None else f", peak GPU memory {peak:.2f} GiB"),
            flush=True,
        )
    summary = ", ".join(f"{k}: {v:.4f}" for k, v in result["metrics"].items())
    print(f"test metrics ({num_images} images): {summary}", flush=True)
    if "accuracy/top1" in metrics:
        print(f"test accuracy: {metrics['accuracy/top1']:.4f} ({num_images} images)", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
