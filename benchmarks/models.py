"""Model-level throughput on one GPU: zoo backbones next to timm's DeiT, same process, same settings.

Run from the repository root::

    PYTHONUNBUFFERED=1 PYTHONPATH=.:kernels python benchmarks/models.py --out DIR

For each model and image size: inference img/s (``inference_mode``, bf16 autocast) and one
training step (forward + backward + AdamW step, bf16 autocast, fp32 master weights) in img/s,
with the peak memory of each. Times are medians of CUDA-event timed repeats after warm-up
(which also compiles every Triton kernel the shape needs). A model that fails at a size
(e.g. out of memory) gets an ``error`` entry instead of numbers; the others still run.

Writes ``models_<date>.json`` and ``models_<date>.png`` into ``--out``. ``--dry-run`` runs the
same code on the CPU at tiny sizes (test models, 1 repeat) to check the script itself.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

sys.path[:0] = [os.path.join(os.path.dirname(__file__), ".."), os.path.join(os.path.dirname(__file__), "..", "kernels")]

import timm  # noqa: E402

import mambazoo  # noqa: E402,F401  (registers the zoo with timm)

# (model, img_size, inference batch, training batch)
GPU_ROWS = [
    ("deit_small_patch16_224", 224, 256, 128),
    ("vim_small", 224, 256, 128),
    ("vim2_small", 224, 256, 128),
    ("deit_small_patch16_224", 1024, 16, 8),
    ("vim_small", 1024, 16, 8),
    ("vim2_small", 1024, 16, 8),
]
DRY_ROWS = [("test_vim", 32, 4, 4), ("test_vim2", 32, 4, 4)]


def timed(fn, device, repeats, warmup):
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_gib(device):
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(name, img_size, infer_batch, train_batch, device, repeats, warmup):
    """Inference and training img/s and peak memory of one model at one size."""
    model = timm.create_model(name, img_size=img_size, num_classes=1000).to(device)
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    row = {"model": name, "img_size": img_size, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}

    model.eval()
    x = torch.randn(infer_batch, 3, img_size, img_size, device=device)

    def infer():
        with torch.inference_mode(), autocast():
            model(x)

    reset_peak(device)
    seconds = timed(infer, device, repeats, warmup)
    row.update(infer_batch=infer_batch, infer_img_s=infer_batch / seconds, infer_peak_gib=peak_gib(device))

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(train_batch, 3, img_size, img_size, device=device)
    target = torch.randint(0, 1000, (train_batch,), device=device)

    def train_step():
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    seconds = timed(train_step, device, repeats, warmup)
    row.update(train_batch=train_batch, train_step_ms=seconds * 1e3, train_img_s=train_batch / seconds,
               train_peak_gib=peak_gib(device))
    return row


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["img_size"] for r in rows})
    if not sizes:
        return
    fig, axes = plt.subplots(2, len(sizes), figsize=(5 * len(sizes), 7), squeeze=False)
    for col, size in enumerate(sizes):
        for row_idx, key in enumerate(("infer_img_s", "train_img_s")):
            ax = axes[row_idx][col]
            done = [r for r in rows if r["img_size"] == size and key in r]
            ax.bar([r["model"] for r in done], [r[key] for r in done], color="tab:blue")
            for i, r in enumerate(done):
                ax.text(i, r[key], f"{r[key]:,.0f}", ha="center", va="bottom", fontsize=8)
            ax.set_title(f"{size} px: {'inference' if key == 'infer_img_s' else 'training'} img/s (bf16)")
            ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU run of the script itself")
    parser.add_argument("--models", nargs="*", help="only these model names")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    device = torch.device("cpu" if args.dry_run else "cuda")
    rows_spec = DRY_ROWS if args.dry_run else GPU_ROWS
    if args.models:
        rows_spec = [r for r in rows_spec if r[0] in args.models]
    repeats, warmup = (1, 1) if args.dry_run else (args.repeats, 3)
    os.makedirs(args.out, exist_ok=True)
    date = datetime.date.today().isoformat()
    path = os.path.join(args.out, f"models_{date}")
    report = {
        "date": date,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "timm": timm.__version__,
        "settings": "bf16 autocast; inference under inference_mode; training = fwd + bwd + AdamW step; "
                    f"median of {repeats} CUDA-event timed repeats after {warmup} warm-ups",
        "rows": [],
    }
    for name, img_size, infer_batch, train_batch in rows_spec:
        t0 = time.perf_counter()
        try:
            row = measure(name, img_size, infer_batch, train_batch, device, repeats, warmup)
        except Exception as exc:  # one failing row (e.g. OOM) must not lose the others
            row = {"model": name, "img_size": img_size, "error": f"{type(exc).__name__}: {exc}"[:500]}
        row["wall_s"] = time.perf_counter() - t0
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(path + ".json", "w") as f:
            json.dump(report, f, indent=1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    plot([r for r in report["rows"] if "error" not in r], path + ".png")
    print(f"wrote {path}.json and {path}.png")


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
