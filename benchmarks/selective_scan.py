"""Real-shape check and timing of the Triton selective scan (one GPU).

Run from the repository root::

    PYTHONUNBUFFERED=1 PYTHONPATH=kernels python benchmarks/selective_scan.py --out DIR

Phases (``--phases``, comma separated, default all):

* ``warmup``: compile every kernel variant the other phases use, in parallel processes that
  share Triton's on-disk cache (H200 host, triton 3.6, 2026-11-29: forward 27-35 s, its state
  pass 10-20 s, the sequential backward ~30 s, 16 kernels in 44 s on 15 processes; the
  time-parallel ``chunk`` backward takes 78-243 s).
* ``check``: bf16 inputs, Triton vs the PyTorch reference in fp32 on the same (rounded) inputs,
  relative L2 error of the output, final state and every gradient, at the FACTS.md shapes;
  the fused bidirectional op at Vim-S 224 and DNA 131k.
* ``time``: ``triton.testing.do_bench`` medians of forward and forward+backward for each tiling
  config (the forward also replayed from a CUDA graph: kernel time without Python), the fused bidirectional op vs two single-direction calls with flips, each against the
  exp-unit and memory floors of FACTS.md section 1 and mamba_ssm's times.
* ``big``: a forward over more than 2^31 elements, a slice at the far end checked against the
  reference (64-bit offsets).

``--forward-only`` skips the backward everywhere; ``--no-bidir`` times single-direction calls
only; ``--configs`` adds tilings from ``CONFIGS`` (ScanConfig fields) to the automatic one;
``--bwd`` picks the automatic tiling's backward (default ``seq``, ``triton_bwd_seq``; ``chunk`` is
the time-parallel ``triton_bwd``); CONFIGS entries name their own (``c16``/``c64`` the chunk one,
``seq*``/``*seq16`` the sequential one), so ``--configs c16,seq16`` times both in one run;
``--auto ahead`` makes the automatic tiling (and so the check, bidirectional and big phases) use
CONFIGS["ahead"]'s fields; ``--channel-last`` passes u/delta/z/B/C as channel-last views.
Writes ``selective_scan_<date>[_cl][_<tag>].json`` and ``.png`` into ``--out`` (``--tag``), with
the registers and spills of every compiled scan kernel.
``--dry-run`` runs the same code on the CPU under ``TRITON_INTERPRET=1`` at tiny shapes.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import traceback

# First: with --dry-run it sets TRITON_INTERPRET before Triton is imported.
from _harness import (DRY, Run, bench, bench_graph, bidir_result, bidir_summary, device, empty_cache, fmt_errors,
                      grad_errors, leaves, parser, plot, rel, run_warmup, selected, sync, targets_met, upcast)

import torch

from mambazoo_kernels import bidirectional_selective_scan, selective_scan, to_channel_last
from mambazoo_kernels.selective_scan import triton_op

# name, (batch, dim, length, d_state); mamba_ssm 2.3.2 CUDA fwd / fwd+bwd ms, FACTS.md section 1.
SHAPES = {
    "vim_s_224": ((128, 768, 197, 16), 0.894, 3.31),
    "vim_s_448": ((32, 768, 785, 16), 0.823, 2.87),
    "vim_s_1024": ((8, 768, 4097, 16), 1.188, 5.00),
    "byte_lm_8k": ((4, 2048, 8192, 16), 1.481, 6.27),
    "dna_131k": ((1, 512, 131072, 16), 1.642, 9.14),
}
DRY_SHAPES = {
    "vim_s_224": ((2, 64, 37, 4), 0.894, 3.31),
    "dna_131k": ((1, 32, 300, 4), 1.642, 9.14),
}
EXP_PER_S = 4.2e12  # H200 exp unit (FACTS.md)
BYTES_PER_S = 4.22e12  # device-to-device copy, read + write
ISSUE_TARGETS = {"fwd": {"vim_s_224": 4.0, "default": 2.0}, "fwdbwd": {"vim_s_224": 2.5, "default": 2.0},
                 "bidir": 1.8}

# Tilings tried by the time phase: (chunk, fwd_tile, fwd_warps, bwd_vec, bwd_warps[, segments,
# fwd_maxnreg, bwd_kind, bwd_tile, bc_ahead, bwd_sum, z_ahead, bwd_ahead]) as in
# triton_op.ScanConfig, or a dict of fields replaced in the automatic tiling of each length;
# "auto" is triton_op.default_config (per length, backward kind from --bwd, with --auto's
# replacements).
CONFIGS = {
    "ahead": {"bc_ahead": True},
    "noahead": {"bc_ahead": False},
    "w4a": {"fwd_warps": 4},
    "ahead4": {"bc_ahead": True, "fwd_warps": 4},
    "tsum": {"bwd_sum": "transpose"},
    "shuf": {"bwd_sum": "shuffle"},
    # forward register caps (168: 3 warps per scheduler, 128: 4) and the gate loaded a tile ahead
    "n168": {"fwd_maxnreg": 168},
    "n128": {"fwd_maxnreg": 128},
    "z": {"z_ahead": True},
    "zn168": {"z_ahead": True, "fwd_maxnreg": 168},
    "zn128": {"z_ahead": True, "fwd_maxnreg": 128},
    # the sequential backward's sub-tiles loaded one ahead, or not
    "bahead": {"bwd_ahead": True},
    "nobahead": {"bwd_ahead": False},
    "c64": (64, 8, 4, 8, 4, None, None, "chunk"),
    "c16": (16, 8, 4, 4, 4, None, None, "chunk"),
    "t16": (64, 16, 4, 8, 4),
    "w2": (64, 8, 2, 8, 4),
    "w1": (64, 8, 1, 8, 4),
    "s4": (64, 8, 4, 8, 4, 4),
    "r168": (64, 8, 4, 8, 4, None, 168),
    "r128": (64, 8, 4, 8, 4, None, 128),
    "seq16": (16, 8, 4, 4, 4, None, None, "seq", 2),
    "seq64": (64, 8, 4, 8, 4, None, None, "seq", 2),
    "seq64t4": (64, 8, 4, 8, 4, None, None, "seq", 4),
    "w1seq16": (16, 8, 1, 4, 4, None, None, "seq", 2),
    "w1t16seq16": (16, 16, 1, 4, 4, None, None, "seq", 2),
}
BACKWARD = "--forward-only" not in sys.argv
# u, delta, z, B and C as channel-last views ((batch, L, dim) memory), as a Mamba mixer's linear
# layers produce them; mamba_ssm's kernel needs time-contiguous ones (FACTS.md's times).
CHANNEL_LAST = "--channel-last" in sys.argv


def resolve(spec, length):
    """A CONFIGS entry as a ScanConfig tuple for sequences of ``length`` (None stays automatic)."""
    if isinstance(spec, dict):
        return dataclasses.astuple(dataclasses.replace(triton_op.default_config(length), **spec))
    return spec


def set_config(spec, segments=None):
    """Use tiling ``spec`` (a ScanConfig tuple; None: automatic), with ``segments`` if given."""
    if spec is None:
        triton_op.CONFIG = None
        return
    cfg = triton_op.ScanConfig(*spec)
    triton_op.CONFIG = cfg if segments is None else dataclasses.replace(cfg, segments=segments)


def replace_automatic(name):
    """Make CONFIGS[name]'s replacements part of the automatic tiling, for every phase."""
    automatic = triton_op.default_config
    triton_op.default_config = lambda length: dataclasses.replace(automatic(length), **CONFIGS[name])


def make_args(batch, dim, length, d_state, ndir=None, seed=0, grad=False, dtype=torch.bfloat16):
    """Mamba-like inputs: S4D-real A, dt = softplus(delta + bias) spread over [1e-3, 1e-1]."""
    g = torch.Generator(device=device()).manual_seed(seed)
    lead = () if ndir is None else (ndir,)
    dev = device()

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, device=dev, dtype=torch.float32).to(dt)

    dt0 = torch.exp(torch.rand(*lead, dim, generator=g, device=dev) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    args = dict(
        u=randn(*lead, batch, dim, length),
        delta=randn(*lead, batch, dim, length) * 0.5,
        A=-torch.arange(1, d_state + 1, device=dev, dtype=torch.float32).repeat(*lead, dim, 1),
        B=randn(*lead, batch, d_state, length),
        C=randn(*lead, batch, d_state, length),
        D=torch.ones(*lead, dim, device=dev),
        z=randn(batch, dim, length),
        delta_bias=torch.log(torch.expm1(dt0)),
        delta_softplus=True,
    )
    if CHANNEL_LAST:
        for name in ("u", "delta", "z", "B", "C"):
            args[name] = to_channel_last(args[name])
    if grad:
        for k, v in args.items():
            if isinstance(v, torch.Tensor):
                v.requires_grad_()
    return args


# ----------------------------------------------------------------------------------------------
# warmup


def _warm(spec, bidir, kind):
    """Compile one kernel (``kind`` as in ``triton_op.COMPILE_ONLY``) of one tiling, in its own process."""
    set_config(spec, 2 if kind.endswith("state") else 1)
    triton_op.COMPILE_ONLY = None if DRY else {kind}
    start = time.time()
    args = make_args(*((1, 8, 20, 4) if DRY else (2, 128, spec[0] * 6 + 3, 16)), ndir=2 if bidir else None, grad=True)
    op = bidirectional_selective_scan if bidir else selective_scan
    out = op(**args, backend="triton")
    if kind.startswith("bwd"):
        out.float().sum().backward()
    sync()
    return f"{spec} {'bidir' if bidir else 'single'} {kind} in {time.time() - start:.0f} s"


def phase_warmup(configs, log):
    def at_length(spec, length, bidir):
        """``spec`` with the B/C lookahead the forward picks at ``length`` (warmup shapes are short)."""
        cfg = triton_op.ScanConfig(*spec)
        if cfg.bc_ahead is None:
            cfg = dataclasses.replace(cfg, bc_ahead=triton_op.bc_ahead_default(length, CHANNEL_LAST, bidir))
        return dataclasses.astuple(cfg)

    specs = {}
    for shape, _, _ in SHAPES.values():
        for name in configs:
            spec = at_length(resolve(CONFIGS[name], shape[2]), shape[2], False)
            specs[(spec, False)] = spec
        for bidir in (False, True):
            spec = at_length(dataclasses.astuple(triton_op.default_config(shape[2])), shape[2], bidir)
            specs[(spec, bidir)] = spec
    kinds = ("fwd", "fwd_state", "bwd", "bwd_state") if BACKWARD else ("fwd", "fwd_state")
    jobs = sorted({(spec, bidir, kind) for (_, bidir), spec in specs.items() for kind in kinds}, key=repr)
    return run_warmup(_warm, jobs, log)


# ----------------------------------------------------------------------------------------------
# check


def check_against_reference(shape, bidirectional=False, with_grad=True):
    """Relative errors of the Triton op (single scan or fused bidirectional) against the reference
    on fp32 copies of the same inputs: output, final state and, with ``with_grad``, every gradient."""
    batch, dim, length, d_state = shape
    op, extra = (bidirectional_selective_scan, {"average": True}) if bidirectional else (selective_scan, {})
    args = make_args(batch, dim, length, d_state, ndir=2 if bidirectional else None, grad=with_grad,
                     seed=2 if bidirectional else 1)
    ref_args = upcast(args)
    out, state = op(**args, return_final_state=True, backend="triton", **extra)
    ref_out, ref_state = op(**ref_args, return_final_state=True, backend="reference", **extra)
    res = {"out": rel(out, ref_out), "final_state": rel(state, ref_state)}
    if with_grad:
        torch.manual_seed(3)  # the same cotangent on every run, so check errors repeat
        dout = torch.randn_like(out)
        res.update(grad_errors(out, ref_out, dout, dout.float(), args, ref_args))
    return res


def phase_check(shapes, log):
    set_config(None)
    results = {}
    for name, (shape, _, _) in shapes.items():
        start = time.time()
        results[name] = check_against_reference(shape, with_grad=BACKWARD)
        log(f"  {name:11s} single {fmt_errors(results[name])} ({time.time() - start:.1f} s)")
        empty_cache()
    for name in ("vim_s_224", "dna_131k"):
        if name in shapes:
            start = time.time()
            results[name + "_bidir"] = check_against_reference(shapes[name][0], bidirectional=True, with_grad=BACKWARD)
            log(f"  {name:11s} bidir  {fmt_errors(results[name + '_bidir'])} ({time.time() - start:.1f} s)")
    worst = max(v for r in results.values() for v in r.values())
    return {"errors": results, "worst": worst, "passed": worst < 2e-2}


# ----------------------------------------------------------------------------------------------
# time


def floors(shape, ndir, backward):
    """(exp-unit ms, memory ms): FACTS.md section 1 (bf16, one group), per the pass counted."""
    batch, dim, length, d_state = shape
    exps = batch * dim * length * d_state * ndir
    bytes_fwd = 2 * batch * length * (2 * ndir * dim + 2 * dim + 2 * ndir * d_state)  # u, delta per dir; z, out; B, C
    bytes_bwd = 2 * batch * length * (ndir * (2 * dim + 2 * dim) + 3 * dim + ndir * 4 * d_state)
    if backward:  # forward + backward; the backward recomputes every exp once (no (B,D,L,N) store)
        return 2 * exps / EXP_PER_S * 1e3, (bytes_fwd + bytes_bwd) / BYTES_PER_S * 1e3
    return exps / EXP_PER_S * 1e3, bytes_fwd / BYTES_PER_S * 1e3


def time_single(shape):
    batch, dim, length, d_state = shape
    args = make_args(batch, dim, length, d_state, seed=3)
    with torch.no_grad():
        fwd = bench(lambda: selective_scan(**args, backend="triton"))
        fwd_graph = bench_graph(lambda: selective_scan(**args, backend="triton"))
    if not BACKWARD:
        return fwd, fwd_graph, float("nan")
    gargs = make_args(batch, dim, length, d_state, seed=3, grad=True)
    dout = torch.randn(batch, dim, length, device=device(), dtype=torch.bfloat16)

    def fwd_bwd():
        selective_scan(**gargs, backend="triton").backward(dout)

    return fwd, fwd_graph, bench(fwd_bwd, grad_to_none=leaves(gargs))


def two_single_calls(args, average=True):
    """What a bidirectional layer does without a fused kernel: two scans, flips around the second."""
    flip = lambda t: t.flip(-1)  # noqa: E731
    common = dict(delta_softplus=True, backend="triton")
    y_f = selective_scan(args["u"][0], args["delta"][0], args["A"][0], args["B"][0], args["C"][0], args["D"][0],
                         args["z"], args["delta_bias"][0], **common)
    y_r = selective_scan(flip(args["u"][1]), flip(args["delta"][1]), args["A"][1], flip(args["B"][1]),
                         flip(args["C"][1]), args["D"][1], flip(args["z"]), args["delta_bias"][1], **common)
    out = y_f + flip(y_r)
    return out * 0.5 if average else out


def time_bidir(shape):
    batch, dim, length, d_state = shape
    args = make_args(batch, dim, length, d_state, ndir=2, seed=4)
    with torch.no_grad():
        fused = bench(lambda: bidirectional_selective_scan(**args, average=True, backend="triton"))
        two = bench(lambda: two_single_calls(args))
        graphs = (bench_graph(lambda: bidirectional_selective_scan(**args, average=True, backend="triton")),
                  bench_graph(lambda: two_single_calls(args)))
    if not BACKWARD:
        return fused, two, float("nan"), float("nan"), *graphs
    gargs = make_args(batch, dim, length, d_state, ndir=2, seed=4, grad=True)
    dout = torch.randn(batch, dim, length, device=device(), dtype=torch.bfloat16)
    fused_bwd = bench(lambda: bidirectional_selective_scan(**gargs, average=True, backend="triton").backward(dout),
                      grad_to_none=leaves(gargs))
    two_bwd = bench(lambda: two_single_calls(gargs).backward(dout), grad_to_none=leaves(gargs))
    return fused, two, fused_bwd, two_bwd, *graphs


def phase_time(shapes, configs, log):
    rows = {}
    for name, (shape, ref_fwd, ref_fwdbwd) in shapes.items():
        row = rows.setdefault(name, {"shape": shape, "mamba_ssm_ms": [ref_fwd, ref_fwdbwd], "configs": {}})
        auto = triton_op.default_config(shape[2])
        tried = [("auto", None)] + [(c, resolve(CONFIGS[c], shape[2])) for c in configs]
        for cname, spec in tried:
            set_config(spec)
            try:
                fwd, fwd_graph, fwdbwd = time_single(shape)
            except Exception as exc:  # one failing tiling must not lose the others
                log(f"  {name} {cname} FAILED: {exc!r}")
                row["configs"][cname] = {"error": repr(exc)}
                continue
            exp_f, mem_f = floors(shape, 1, False)
            exp_b, mem_b = floors(shape, 1, True)
            row["configs"][cname] = {
                "spec": list(dataclasses.astuple(auto) if spec is None else spec),
                "fwd_ms": fwd, "fwd_graph_ms": fwd_graph, "fwd_graph_speedup": ref_fwd / fwd_graph, "fwdbwd_ms": fwdbwd,
                "fwd_frac_exp": exp_f / fwd, "fwd_frac_mem": mem_f / fwd,
                "fwdbwd_frac_exp": exp_b / fwdbwd, "fwdbwd_frac_mem": mem_b / fwdbwd,
                "fwd_speedup": ref_fwd / fwd, "fwdbwd_speedup": ref_fwdbwd / fwdbwd,
            }
            c = row["configs"][cname]
            log(f"  {name:11s} {cname:5s} fwd {fwd:7.3f} ms ({c['fwd_speedup']:.2f}x, exp {c['fwd_frac_exp']:.0%}, "
                f"mem {c['fwd_frac_mem']:.0%}; graph {fwd_graph:.3f} ms)  fwd+bwd {fwdbwd:7.3f} ms ({c['fwdbwd_speedup']:.2f}x, "
                f"exp {c['fwdbwd_frac_exp']:.0%}, mem {c['fwdbwd_frac_mem']:.0%})")
        set_config(None)
        if "--no-bidir" in sys.argv:
            continue
        try:
            exp_f, mem_f = floors(shape, 2, False)
            row["bidir"] = bidir_result(time_bidir(shape), exp=exp_f, mem=mem_f)
            log(f"  {name:11s} bidir {bidir_summary(row['bidir'])}")
        except Exception as exc:
            log(f"  {name} bidir FAILED: {exc!r}")
            row["bidir"] = {"error": repr(exc)}
        empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------
# big


def phase_big(log):
    """Forward over > 2^31 elements; the last channels of the last batch row, whose offsets pass
    2^31, against the reference."""
    set_config(None)
    batch, dim, length, d_state = (2, 1024, (1 << 20) + 1, 16) if not DRY else (2, 8, 70, 4)
    args = make_args(batch, dim, length, d_state, seed=5)
    start = time.time()
    with torch.no_grad():
        out, state = selective_scan(**args, return_final_state=True, backend="triton")
    sync()
    elapsed = time.time() - start
    far = slice(dim - 4, dim)
    sl = dict(u=args["u"][-1:, far], delta=args["delta"][-1:, far], A=args["A"][far], B=args["B"][-1:],
              C=args["C"][-1:], D=args["D"][far], z=args["z"][-1:, far], delta_bias=args["delta_bias"][far])
    with torch.no_grad():
        ref_out, ref_state = selective_scan(**upcast(sl), delta_softplus=True, return_final_state=True,
                                            backend="reference")
    res = {"elements": batch * dim * length, "first_checked_offset": ((batch - 1) * dim + dim - 4) * length,
           "out": rel(out[-1:, far], ref_out), "final_state": rel(state[-1:, far], ref_state),
           "seconds_incl_first_call": elapsed}
    log(f"  {res}")
    del args, out
    return res


# ----------------------------------------------------------------------------------------------
# report


def kernel_resources():
    """Registers, spills and shared memory of every compiled scan kernel (Triton's launch caches)."""
    import gc

    res = {}
    for fn in gc.get_objects():
        if type(fn).__name__ != "JITFunction" or not fn.__name__.startswith("ss_"):
            continue
        for cache in getattr(fn, "device_caches", {}).values():
            for kernel in cache[0].values():
                try:
                    kernel._init_handles()
                    entry = {"n_regs": kernel.n_regs, "n_spills": kernel.n_spills, "shared": kernel.metadata.shared}
                except Exception as exc:  # a resource report only
                    entry = {"error": repr(exc)}
                res[f"{fn.__name__} #{len(res)}"] = entry
    return res


def main():
    args = parser(__doc__, "warmup,check,time,big", CONFIGS, SHAPES)
    args.add_argument("--forward-only", action="store_true", help="no backward compile, check or timing")
    args.add_argument("--no-bidir", action="store_true", help="time single-direction calls only")
    args.add_argument("--channel-last", action="store_true",
                      help="u/delta/z/B/C as channel-last views (what the mixers pass); file tag 'cl'")
    args.add_argument("--bwd", choices=triton_op.BWD_KINDS, default=triton_op.BWD_KIND,
                      help="backward kernel of the automatic tiling (sets MAMBAZOO_SCAN_BWD for workers too)")
    args.add_argument("--auto", choices=sorted(k for k, v in CONFIGS.items() if isinstance(v, dict)), default=None,
                      help="CONFIGS entry whose replacements the automatic tiling takes, in every phase")
    args.add_argument("--tag", default="", help="appended to the result file names (after 'cl')")
    opts = args.parse_args()
    if opts.auto is not None:
        replace_automatic(opts.auto)
    os.environ["MAMBAZOO_SCAN_BWD"] = triton_op.BWD_KIND = opts.bwd
    shapes, configs = selected(opts, SHAPES, DRY_SHAPES)
    tag = "_".join(t for t in ("cl" if CHANNEL_LAST else "", opts.tag) if t)
    run = Run(opts.out, "selective_scan", tag=tag, channel_last=CHANNEL_LAST,
              dtype="bf16 u/delta/z/B/C, fp32 A/D/delta_bias, softplus, D, z, one group",
              floors={"exp_per_s": EXP_PER_S, "bytes_per_s": BYTES_PER_S}, configs=CONFIGS, bwd_auto=opts.bwd,
              auto_replacements=CONFIGS.get(opts.auto))

    def time_phase():
        rows = run.report["phases"]["time"] = phase_time(shapes, configs, run.log)
        run.report["targets"] = targets_met(rows, ISSUE_TARGETS, ("bidir",))
        run.save()
        plot(rows, run.path + ".png", "Triton selective scan vs mamba_ssm 2.3.2 CUDA",
             "bidir fused / two calls (fwd)", [("fwd_frac_exp", "fwd: exp-unit"), ("fwd_frac_mem", "fwd: memory")],
             "fraction of floor")
        return rows

    run.phases(opts.phases.split(","), {
        "warmup": lambda: phase_warmup(configs, run.log),
        "check": lambda: phase_check(shapes, run.log),
        "time": time_phase,
        "big": lambda: phase_big(run.log),
    })
    if not DRY:
        try:
            run.report["kernels"] = kernel_resources()
            for name, r in run.report["kernels"].items():
                run.log(f"  kernel {name}: {r}")
        except Exception:
            run.log(traceback.format_exc())
    run.finish(11, ("bidir",))


if __name__ == "__main__":
    main()
