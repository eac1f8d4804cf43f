"""What ``tools/train.py`` and ``tools/test.py`` share: the common command-line arguments, loading
a config with checked ``--cfg-options``, running a GPU config as CPU processes, the process setup,
and reporting test metrics."""
from __future__ import annotations

import argparse
import difflib
import inspect
import json

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

# Top-level keys the Runner (or the tools) read besides its constructor's arguments.
EXTRA_TOP_LEVEL_KEYS = {"model_wrapper_cfg", "find_unused_parameters", "sync_bn", "custom_imports", "torch_num_threads"}
# Dicts without a ``type`` whose keys still go to a constructor that rejects unknown ones.
KWARGS_DICTS = {"train_cfg", "val_cfg", "test_cfg", "train_dataloader", "val_dataloader", "test_dataloader", "randomness"}


def add_config_args(parser: argparse.ArgumentParser, cfg_options_example: str) -> None:
    """Add ``config``, ``--launcher`` and ``--cfg-options`` (``cfg_options_example`` goes in its help)."""
    parser.add_argument("config", help="mmengine config file")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        default={},
        help=f"override config entries, e.g. {cfg_options_example}",
    )


def load_config(args: argparse.Namespace) -> Config:
    """``args.config`` with ``args.cfg_options`` merged (checked first, see :func:`check_cfg_options`)
    and ``args.launcher`` set (see :func:`adapt_launcher`); a bad key stops with ``config error: ...``."""
    cfg = Config.fromfile(args.config)
    try:
        check_cfg_options(cfg, args.cfg_options, args.config)
    except KeyError as error:
        raise SystemExit(f"config error: {error.args[0]}") from None
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    adapt_launcher(cfg)
    return cfg


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
        for part in parts:
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


def setup_process(cfg: Config) -> None:
    """Set the config's ``torch_num_threads`` (intra-op CPU threads; unset: torch's default) and, for
    ``--launcher pytorch`` without a GPU, start the gloo process group (torchrun's ``env://``):
    mmengine's ``init_dist`` calls ``torch.cuda.set_device``, which fails there; the Runner then
    uses this group as it is."""
    import torch.distributed as dist

    if cfg.get("torch_num_threads"):
        # small models on a few busy cores run faster with one intra-op thread (see the config)
        torch.set_num_threads(cfg.torch_num_threads)
    if cfg.launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group(backend=cfg.env_cfg.dist_cfg.get("backend", "gloo"))


def report_test_metrics(runner: Runner, metrics: dict, path: str, info: dict, extra: dict | None = None,
                        note: str = "") -> dict:
    """The test result ``{**info, "num_images", "metrics", **extra}``, written to ``path`` as JSON and
    printed: ``test metrics (N images<note>): name: value, ...`` then, for classification,
    ``test accuracy: ...``. ``metrics`` is what ``runner.test()`` returned."""
    num_images = len(runner.test_dataloader.dataset)
    result = {**info, "num_images": num_images, "metrics": {k: float(v) for k, v in metrics.items()}, **(extra or {})}
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    summary = ", ".join(f"{k}: {v:.4f}" for k, v in result["metrics"].items())
    print(f"test metrics ({num_images} images{note}): {summary}", flush=True)
    if "accuracy/top1" in metrics:
        print(f"test accuracy: {metrics['accuracy/top1']:.4f} ({num_images} images)", flush=True)
    return result
