"""What the kernel benchmarks (``selective_scan.py``, ``ssd.py``) share: the device and dry-run
switch, error measure, timing, the parallel warmup, the report and its phase loop, the plot and
the speed-up targets.

Import it before torch and the kernels: with ``--dry-run`` on the command line it sets
``TRITON_INTERPRET=1`` (CPU, interpreter) before Triton is loaded. The scripts run as
``python benchmarks/X.py``, so this folder is ``sys.path[0]`` and ``import _harness`` finds it.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import datetime
import json
import multiprocessing
import os
import sys
import time
import traceback

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402


def device():
    return torch.device("cpu" if DRY else "cuda")


def sync():
    if not DRY:
        torch.cuda.synchronize()


def leaves(args):
    """The tensors of an argument dict that require grad, in order."""
    return [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad]


def rel(x, ref):
    """Relative L2 error of ``x`` against ``ref``, in float64."""
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def upcast(args):
    """fp32 detached copies of the floating-point tensors of an argument dict (grad flags kept)."""
    return {k: (v.detach().float().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor)
                and v.is_floating_point() else v) for k, v in args.items()}


def grad_errors(outputs, ref_outputs, cot, ref_cot, args, ref_args):
    """``{"d<name>": rel error}`` of the gradients of ``outputs`` (cotangents ``cot``) with respect
    to the tensors of ``args`` that require grad, against those of ``ref_outputs`` (``ref_cot``)
    with respect to ``ref_args``."""
    got = torch.autograd.grad(outputs, leaves(args), cot)
    want = torch.autograd.grad(ref_outputs, leaves(ref_args), ref_cot)
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    return {f"d{n}": rel(a, b) for n, a, b in zip(names, got, want)}


def fmt_errors(res):
    return " ".join(f"{k}={v:.1e}" for k, v in res.items())


def bench(fn, grad_to_none=None):
    """Median ms of ``fn`` (``triton.testing.do_bench``); in the dry run one timed call after one."""
    if DRY:
        fn()
        start = time.time()
        fn()
        return (time.time() - start) * 1e3
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def bench_graph(fn):
    """Median ms of ``fn`` replayed from a CUDA graph: the GPU time of its kernels without the
    Python and launch overhead of an eager call, which ``bench`` includes once it exceeds the GPU
    time (short calls). In the dry run: ``bench``."""
    if DRY:
        return bench(fn)
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn, rep=100, return_mode="median")


def bench_graph_step(fn):
    """:func:`bench_graph` of a forward+backward step (the leaves' gradients accumulate over the
    replays), or ``None`` when the step cannot be captured in a CUDA graph."""
    try:
        return bench_graph(fn)
    except Exception as exc:  # a capture failure costs this one number, not the row
        print(f"    (no CUDA-graph forward+backward: {exc!r:.200})")
        return None


def bidir_result(times, **limit_ms):
    """A bidirectional row's record from ``(fused, two calls)`` x (eager forward, eager forward +
    backward, CUDA-graph forward) ms, ordered (fused, two, fused_bwd, two_bwd, fused_graph,
    two_graph), optionally followed by the CUDA-graph forward + backward (fused, two; None where
    not captured); ``limit_ms`` (name=ms) adds the fused forward's fraction of each limit."""
    fused, two, fused_bwd, two_bwd, fused_graph, two_graph, *graph_steps = times
    row = {"fused_fwd_ms": fused, "two_calls_fwd_ms": two, "fused_fwdbwd_ms": fused_bwd,
           "two_calls_fwdbwd_ms": two_bwd, "fwd_ratio": two / fused, "fwdbwd_ratio": two_bwd / fused_bwd,
           "fused_fwd_graph_ms": fused_graph, "two_calls_fwd_graph_ms": two_graph,
           "fwd_graph_ratio": two_graph / fused_graph}
    if graph_steps and None not in graph_steps:
        fused_step, two_step = graph_steps
        row.update(fused_fwdbwd_graph_ms=fused_step, two_calls_fwdbwd_graph_ms=two_step,
                   fwdbwd_graph_ratio=two_step / fused_step)
    row.update({f"fused_fwd_frac_{name}": ms / fused for name, ms in limit_ms.items()})
    return row


def bidir_summary(row):
    """One log line of :func:`bidir_result`'s record."""
    return (f"fused fwd {row['fused_fwd_ms']:.3f} ms vs two calls {row['two_calls_fwd_ms']:.3f} ms "
            f"({row['fwd_ratio']:.2f}x); fwd+bwd {row['fused_fwdbwd_ms']:.3f} vs {row['two_calls_fwdbwd_ms']:.3f} ms "
            f"({row['fwdbwd_ratio']:.2f}x); graph fwd {row['fused_fwd_graph_ms']:.3f} vs "
            f"{row['two_calls_fwd_graph_ms']:.3f} ms ({row['fwd_graph_ratio']:.2f}x)"
            + (f"; graph fwd+bwd {row['fused_fwdbwd_graph_ms']:.3f} vs {row['two_calls_fwdbwd_graph_ms']:.3f} ms "
               f"({row['fwdbwd_graph_ratio']:.2f}x)" if "fwdbwd_graph_ratio" in row else ""))


def empty_cache():
    if not DRY:
        torch.cuda.empty_cache()


def run_warmup(warm, jobs, log):
    """Run ``warm(*job)`` (compile one kernel variant, return a line) for every job: in parallel
    spawned processes sharing Triton's on-disk cache; in the dry run the first two, in-process. A
    failing job is logged and listed under "failed" (the time phase reports it again)."""
    start = time.time()
    if DRY:
        for job in jobs[:2]:
            log("  " + warm(*job))
        return {"jobs": len(jobs), "seconds": time.time() - start}
    ctx = multiprocessing.get_context("spawn")
    workers = min(len(jobs), max(1, (os.cpu_count() or 4) - 1))
    failed = []
    with futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        submitted = {pool.submit(warm, *job): job for job in jobs}
        for done in futures.as_completed(submitted):
            try:
                log(f"  compiled {done.result()}  ({time.time() - start:.0f} s)")
            except Exception as exc:
                failed.append(str(submitted[done]))
                log(f"  FAILED {submitted[done]}: {str(exc).splitlines()[0]}")
    return {"jobs": len(jobs), "workers": workers, "seconds": time.time() - start, "failed": failed}


def parser(doc, phases, configs, shapes):
    """The options both scripts take; ``doc``'s first line is the description."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    p.add_argument("--phases", default=phases)
    p.add_argument("--configs", default="", help="tilings tried besides auto, from " + ",".join(configs))
    p.add_argument("--shapes", default=None, help="comma-separated subset of " + ",".join(shapes))
    p.add_argument("--dry-run", action="store_true", help="CPU, interpreter, tiny shapes")
    return p


def selected(opts, shapes, dry_shapes):
    """(shapes, tiling names) chosen by ``--shapes``/``--dry-run`` and ``--configs``."""
    rows = dry_shapes if DRY else shapes
    if opts.shapes:
        rows = {k: v for k, v in rows.items() if k in opts.shapes.split(",")}
    return rows, [c for c in opts.configs.split(",") if c]


class Run:
    """The JSON report of one run (``<out>/<name>_<date>[_<tag>].json``) and its log, saved after
    every phase; ``fields`` go into the report after the versions."""

    def __init__(self, out, name, tag="", **fields):
        import triton

        os.makedirs(out, exist_ok=True)
        self.lines = []
        stamp = datetime.datetime.now().strftime("%Y-%m-%d")
        self.path = os.path.join(out, f"{name}_{stamp}{'_' + tag if tag else ''}")
        self.report = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "gpu": "cpu (interpreter)" if DRY else torch.cuda.get_device_name(),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            **fields, "phases": {},
        }

    def log(self, msg):
        print(msg, flush=True)
        self.lines.append(msg)

    def save(self):
        with open(self.path + ".json", "w") as f:
            json.dump(self.report, f, indent=1, default=str)

    def phases(self, names, runners):
        """Run ``runners[name]()`` for each name and store its result under "phases"; a failing
        phase is logged and stored as its traceback, and the next one runs."""
        for phase in names:
            self.log(f"== {phase}")
            start = time.time()
            try:
                if phase in runners:
                    self.report["phases"][phase] = runners[phase]()
            except Exception:
                self.log(traceback.format_exc())
                self.report["phases"][phase] = {"error": traceback.format_exc()}
            self.log(f"   ({time.time() - start:.0f} s)")
            self.save()

    def finish(self, width, bidir_kinds):
        """Log the targets (if timed), store the log, save."""
        if "targets" in self.report:
            self.log("== targets (best tiling; auto in parentheses)")
            for name, t in self.report["targets"].items():
                self.log(
                    f"  {name:{width}s} fwd {t['fwd_best']:.2f}x ({t['fwd_auto'] or 0:.2f}x) target {t['fwd_target']}x "
                    f"{'MET' if t['fwd_met'] else 'missed'} | fwd+bwd {t['fwdbwd_best']:.2f}x "
                    f"({t['fwdbwd_auto'] or 0:.2f}x) target {t['fwdbwd_target']}x "
                    f"{'MET' if t['fwdbwd_met'] else 'missed'}"
                    + "".join(f" | {kind} {t[kind + '_ratio']:.2f}x {'MET' if t[kind + '_met'] else 'missed'}"
                              for kind in bidir_kinds if kind + "_ratio" in t))
        self.report["log"] = self.lines
        self.save()


def _target(targets, name):
    return targets.get(name, targets["default"]) if isinstance(targets, dict) else targets


def targets_met(rows, targets, bidir_kinds):
    """Best and automatic-tiling speed-ups per row against ``targets`` ({"fwd", "fwdbwd": a number
    or {row: number, "default": number}, "bidir": number}); rows without a mamba_ssm anchor are skipped."""
    met = {}
    for name, row in rows.items():
        cfgs = [c for c in row["configs"].values() if c.get("fwd_speedup")]
        if not cfgs:
            continue
        auto = row["configs"].get("auto", {})
        best_f = max(c["fwd_speedup"] for c in cfgs)
        best_b = max(c["fwdbwd_speedup"] for c in cfgs)
        t_f, t_b = _target(targets["fwd"], name), _target(targets["fwdbwd"], name)
        met[name] = {"fwd_auto": auto.get("fwd_speedup"), "fwd_best": best_f, "fwd_target": t_f,
                     "fwd_met": best_f >= t_f, "fwdbwd_auto": auto.get("fwdbwd_speedup"), "fwdbwd_best": best_b,
                     "fwdbwd_target": t_b, "fwdbwd_met": best_b >= t_b}
        for kind in bidir_kinds:
            if "fwd_ratio" in row.get(kind, {}):
                met[name][f"{kind}_ratio"] = row[kind]["fwd_ratio"]
                met[name][f"{kind}_met"] = row[kind]["fwd_ratio"] >= targets["bidir"]
    return met


def plot(rows, path, title, bidir_label, fractions, fraction_label):
    """Left: best fwd and fwd+bwd speed-ups and the bidirectional ratio per row; right: the best
    forward's ``fractions`` ([(config key, legend)], two) of its limits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    best = {n: min((c for c in rows[n]["configs"].values() if "fwd_ms" in c), key=lambda c: c["fwd_ms"], default=None)
            for n in names}
    best_b = {n: min((c for c in rows[n]["configs"].values() if "fwdbwd_ms" in c), key=lambda c: c["fwdbwd_ms"],
                     default=None) for n in names}
    x = range(len(names))
    w = 0.27
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    ax.bar([i - w for i in x], [(best[n] or {}).get("fwd_speedup") or 0 for n in names], w, label="fwd")
    ax.bar(list(x), [(best_b[n] or {}).get("fwdbwd_speedup") or 0 for n in names], w, label="fwd+bwd")
    ax.bar([i + w for i in x], [rows[n].get("bidir", {}).get("fwd_ratio", 0) for n in names], w, label=bidir_label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(x), names, rotation=20)
    ax.set_ylabel("speed-up (x)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax = axes[1]
    for offset, (key, label) in zip((-w / 2, w / 2), fractions):
        ax.bar([i + offset for i in x], [(best[n] or {}).get(key, 0) for n in names], w, label=label)
    ax.set_xticks(list(x), names, rotation=20)
    ax.set_ylabel(fraction_label)
    ax.set_title("forward: fraction of the two limits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
