"""Real-shape check and timing of the Triton SSD (Mamba-2) kernels (one GPU).

Run from the repository root::

    PYTHONUNBUFFERED=1 PYTHONPATH=.:kernels python3 benchmarks/ssd.py --out DIR

Phases (``--phases``, comma separated, default all):

* ``warmup``: compile every kernel variant the other phases use, in parallel processes that
  share Triton's on-disk cache (one job per (d_state, single/packed/bidirectional, segmented or
  not), each compiling its forward and backward).
* ``check``: bf16 inputs, Triton vs the PyTorch reference in fp32 on the same (rounded) inputs,
  relative L2 error of the output, final states and every gradient, at the FACTS.md shapes; the
  packed varlen row; the bidirectional op against two reference runs, in both layouts (shared
  x/B/C with a gate z; and vim2's: x, B and C per direction, no gate).
* ``time``: ``triton.testing.do_bench`` medians of forward and forward+backward per row (eager
  calls, and replayed from a CUDA graph: the GPU time without the Python and launch work that
  dominates the small rows' eager time), each as a fraction of the memory and bf16-matmul limits
  (FACTS.md section 1 formulas) and against mamba_ssm 2.3.2's ``mamba_chunk_scan_combined`` (chunk
  256); the bidirectional op in one launch vs two single-direction calls with flips, in both
  layouts ("bidir" and "bidir_vim2": what ``BidirectionalMamba2Mixer`` calls, one conv per
  direction, so x, B and C per direction).
* ``profile``: torch.profiler's kernel table of each row's forward+backward.
* ``host``: host ms per call at a tiny shape (the launchers, the backward op, the public op's
  forward and forward+backward) and cProfile of the backward launcher (where the host time goes).
* ``big``: a forward over more than 2^31 elements of x, the last head of the last batch row
  checked against the reference, and separately its ~40 % of tokens whose offsets pass 2^31.

Writes ``ssd_<date>.json`` (and ``ssd_<date>.png`` after ``time``) into ``--out``, saved after
every phase. ``--dry-run`` runs the same code on the CPU under ``TRITON_INTERPRET=1`` at tiny
shapes.
"""
from __future__ import annotations

import math
import time

# First: with --dry-run it sets TRITON_INTERPRET before Triton is imported.
from _harness import (DRY, Run, bench, bench_graph, bench_graph_step, bidir_result, bidir_summary, device, empty_cache,
                      fmt_errors, grad_errors, leaves, parser, plot, rel, run_warmup, selected, sync, targets_met,
                      upcast)

import torch
import torch.nn.functional as F

from mambazoo_kernels import bidirectional_ssd, ssd
from mambazoo_kernels.ssd import triton_op
from mambazoo_kernels.ssd.reference import ssd_reference

# name: (batch, length, heads, headdim, d_state), mamba_ssm 2.3.2 fwd / fwd+bwd ms (FACTS.md
# section 1; None where FACTS has no anchor), sequences packed per row (seq_idx) or 1.
SHAPES = {
    "vim_s_224": ((128, 197, 12, 64, 64), 1.225, 4.94, 1),
    "vim_s_1024": ((8, 4097, 12, 64, 64), 0.686, 3.93, 1),
    "lm_8k": ((4, 8192, 32, 64, 128), 0.957, 5.89, 1),
    "dna_131k": ((1, 131072, 8, 64, 128), 1.198, 5.46, 1),
    # The Vim-S 1024 work as one packed row of 8 sequences (varlen, seq_idx); no mamba_ssm anchor.
    "packed_8x4097": ((1, 8 * 4097, 12, 64, 64), None, None, 8),
}
DRY_SHAPES = {
    "vim_s_224": ((2, 37, 2, 16, 16), 1.225, 4.94, 1),
    "dna_131k": ((1, 300, 2, 16, 16), 1.198, 5.46, 1),
    "packed_8x4097": ((1, 3 * 41, 2, 16, 16), None, None, 3),
}
BIDIR_ROWS = ("vim_s_224", "vim_s_1024")
BYTES_PER_S = 4.22e12  # device-to-device copy, read + write
MATMUL_FLOPS = 790e12  # bf16 8192^3 matmul
ISSUE_TARGETS = {"fwd": {"vim_s_224": 2.0, "default": 1.3}, "fwdbwd": 1.5, "bidir": 1.6}
# Tilings besides the automatic one: SSDConfig fields (chunk, block_p, fwd_warps, bwd_warps,
# segments, prefetch). "c64" was the automatic tiling of the 2026-11-28 runs; "sK" fixes K sequence
# segments; "p32" 32-channel headdim blocks; "bw16" 16-warp backward programs; "pf" / "nopf" the
# forward with / without its L1 prefetch of the next chunk.
CONFIGS = {"c64": (64, 64), "c32": (32, 64), "c16": (16, 64), "w4": (64, 64, 4, 4), "w8": (64, 64, 8, 8), "p32": (None, 32),
           "bw16": (None, 64, None, 16), "pf": (None, 64, None, None, None, True),
           "nopf": (None, 64, None, None, None, False),
           **{f"s{k}": (None, 64, None, None, k) for k in (1, 2, 4, 5, 6, 11, 16, 22, 33, 44, 66)}}


def set_config(spec, segments=None):
    if spec is None and segments is None:
        triton_op.CONFIG = None
    else:
        triton_op.CONFIG = triton_op.SSDConfig(*(spec or ()))
        if segments is not None:
            triton_op.CONFIG = triton_op.SSDConfig(**{**triton_op.CONFIG.__dict__, "segments": segments})


def make_args(batch, length, heads, headdim, d_state, n_seqs=1, bidir=False, z=False, seed=0, grad=False,
              per_dir=False):
    """Mamba-2-like inputs as the FACTS anchors ran them: bf16 x/B/C(/z), fp32 dt, one group,
    A in [-16, -1], dt = softplus(dt + dt_bias) in [1e-3, 1e-1], D per head; ``per_dir``: x, B
    and C per direction (the vim2 layout)."""
    g = torch.Generator(device=device()).manual_seed(seed)
    dev = device()
    lead = (2,) if bidir else ()
    own = (2,) if per_dir else ()

    def randn(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=g, device=dev, dtype=torch.float32).to(dtype)

    dt0 = torch.exp(torch.rand(*lead, heads, generator=g, device=dev) * (math.log(0.1) - math.log(1e-3))
                    + math.log(1e-3))
    args = dict(
        x=randn(*own, batch, length, heads, headdim),
        dt=randn(*lead, batch, length, heads, dtype=torch.float32) * 0.5,
        A=-torch.empty(*lead, heads, device=dev).uniform_(1, 16, generator=g),
        B=randn(*own, batch, length, 1, d_state),
        C=randn(*own, batch, length, 1, d_state),
        D=torch.ones(*lead, heads, device=dev),
        z=randn(batch, length, heads, headdim) if z else None,
        dt_bias=torch.log(torch.expm1(dt0)),
        dt_softplus=True,
        seq_idx=None,
    )
    if n_seqs > 1:
        args["seq_idx"] = (torch.arange(length, device=dev) * n_seqs // length).to(torch.int32).expand(batch, -1)
    if grad:
        for v in args.values():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                v.requires_grad_()
    return args


def triton_ssd(*args, **kwargs):
    return ssd(*args, **kwargs, backend="triton")


def triton_bidirectional_ssd(*args, **kwargs):
    return bidirectional_ssd(*args, **kwargs, backend="triton")


def two_single_calls(args, average=True, op=triton_ssd):
    """What a bidirectional layer does without the fused op: two calls, flips around the second."""
    flip = lambda t: None if t is None else t.flip(1)  # noqa: E731
    own = lambda t, d: t[d] if t.dim() == 5 else t  # noqa: E731  (per direction or shared)
    common = dict(dt_softplus=True)
    y_f = op(own(args["x"], 0), args["dt"][0], args["A"][0], own(args["B"], 0), own(args["C"], 0),
             D=args["D"][0], dt_bias=args["dt_bias"][0], **common)
    y_r = op(flip(own(args["x"], 1)), flip(args["dt"][1]), args["A"][1], flip(own(args["B"], 1)),
             flip(own(args["C"], 1)), D=args["D"][1], dt_bias=args["dt_bias"][1], **common)
    out = y_f + flip(y_r)
    out = out * 0.5 if average else out
    return out * F.silu(args["z"]) if args["z"] is not None else out


# ----------------------------------------------------------------------------------------------
# warmup


def _warm(d_state, kind, segments, spec):
    """Compile forward and backward of one variant (``kind``: single/packed/bidir/bidir_vim2) in
    its own process."""
    set_config(spec, segments)
    start = time.time()
    shape = (1, 90, 2, 16, 16) if DRY else (1, 1100, 2, 64, d_state)
    bidir = kind.startswith("bidir")
    args = make_args(*shape, n_seqs=3 if kind == "packed" else 1, bidir=bidir, z=kind == "bidir",
                     per_dir=kind == "bidir_vim2", grad=True)
    if bidir:
        out = triton_bidirectional_ssd(**args, average=True)
    else:
        out = triton_ssd(**args)
    out.float().sum().backward()
    sync()
    return f"N={d_state} {kind} segments={segments} {spec} in {time.time() - start:.0f} s"


def phase_warmup(shapes, configs, log):
    jobs = set()
    for name, (shape, _, _, n_seqs) in shapes.items():
        kinds = ["packed" if n_seqs > 1 else "single"] + (["bidir", "bidir_vim2"] if name in BIDIR_ROWS else [])
        for kind in kinds:
            for spec in [None] + [CONFIGS[c] for c in configs if kind == "single"]:
                for segments in (1, 2):
                    jobs.add((shape[4], kind, segments, spec))
    return run_warmup(_warm, sorted(jobs, key=str), log)


# ----------------------------------------------------------------------------------------------
# check


def check_row(shape, n_seqs=1, bidirectional=False, per_dir=False):
    """Relative errors of the Triton op against the reference on fp32 copies of the same inputs:
    output, final states and every gradient (one random cotangent for each)."""
    args = make_args(*shape, n_seqs=n_seqs, bidir=bidirectional, z=bidirectional and not per_dir, seed=1, grad=True,
                     per_dir=per_dir)
    ref_args = upcast(args)
    if bidirectional:
        out = triton_bidirectional_ssd(**args, average=True)
        ref = two_single_calls(ref_args, op=ssd_reference)
        res = {"out": rel(out, ref)}
        outputs, ref_outputs = (out,), (ref,)
    else:
        out, state = triton_ssd(**args, return_final_states=True)
        ref, ref_state = ssd_reference(**ref_args, return_final_states=True)
        res = {"out": rel(out, ref), "final_states": rel(state, ref_state)}
        outputs, ref_outputs = (out, state), (ref, ref_state)
    torch.manual_seed(3)  # the same cotangents on every run, so check errors repeat
    cot = [torch.randn_like(o, dtype=torch.float32) for o in outputs]
    res.update(grad_errors(outputs, ref_outputs, [c.to(o.dtype) for c, o in zip(cot, outputs)], cot, args, ref_args))
    return res


def phase_check(shapes, log):
    set_config(None)
    results = {}
    for name, (shape, _, _, n_seqs) in shapes.items():
        start = time.time()
        results[name] = check_row(shape, n_seqs)
        log(f"  {name:13s} {fmt_errors(results[name])} ({time.time() - start:.1f} s)")
        if name in BIDIR_ROWS:
            for kind in ("bidir", "bidir_vim2"):
                start = time.time()
                results[f"{name}_{kind}"] = check_row(shape, bidirectional=True, per_dir=kind == "bidir_vim2")
                log(f"  {name:13s} {kind} {fmt_errors(results[f'{name}_{kind}'])} ({time.time() - start:.1f} s)")
        empty_cache()
    worst = max(v for r in results.values() for v in r.values())
    return {"errors": results, "worst": worst, "passed": worst < 2e-2}


# ----------------------------------------------------------------------------------------------
# time


def limits(shape, chunk, ndir=1, z=False, per_dir=False):
    """(memory ms, matmul ms) lower bounds, FACTS.md section 1 (bf16, one group): forward, and
    forward + backward (bytes of both passes; flops 3x the forward's, the usual ratio).
    ``per_dir``: x, B and C (and their gradients) once per direction."""
    batch, length, heads, headdim, d_state = shape
    groups = 1
    own = ndir if per_dir else 1
    bytes_fwd = 2 * batch * length * ((own + 1) * heads * headdim + 2 * own * groups * d_state + ndir * heads
                                      + (heads * headdim if z else 0))
    # backward: read x, dout (z), dt, B, C; write dx (dz), ddt, dB, dC
    bytes_bwd = 2 * batch * length * ((2 * own + 1) * heads * headdim + 4 * own * groups * d_state
                                      + 2 * ndir * heads + (2 * heads * headdim if z else 0))
    flops = ndir * 2 * batch * length * (groups * chunk * d_state / 2 + heads * chunk * headdim / 2
                                         + 2 * heads * d_state * headdim)
    return ((bytes_fwd / BYTES_PER_S * 1e3, flops / MATMUL_FLOPS * 1e3),
            ((bytes_fwd + bytes_bwd) / BYTES_PER_S * 1e3, 3 * flops / MATMUL_FLOPS * 1e3))


def time_single(shape, n_seqs):
    args = make_args(*shape, n_seqs=n_seqs, seed=3)
    with torch.no_grad():
        fwd = bench(lambda: triton_ssd(**args))
        fwd_graph = bench_graph(lambda: triton_ssd(**args))
    gargs = make_args(*shape, n_seqs=n_seqs, seed=3, grad=True)
    dout = torch.randn(shape[:4], device=device(), dtype=torch.bfloat16)
    step = lambda: triton_ssd(**gargs).backward(dout)  # noqa: E731
    return fwd, fwd_graph, bench(step, grad_to_none=leaves(gargs)), bench_graph_step(step)


def time_bidir(shape, per_dir=False):
    """Fused vs two calls; shared x/B/C with a gate, or (``per_dir``) the vim2 layout, no gate."""
    layout = dict(bidir=True, z=not per_dir, per_dir=per_dir, seed=4)
    args = make_args(*shape, **layout)
    with torch.no_grad():
        fused = bench(lambda: triton_bidirectional_ssd(**args, average=True))
        two = bench(lambda: two_single_calls(args))
        fused_graph = bench_graph(lambda: triton_bidirectional_ssd(**args, average=True))
        two_graph = bench_graph(lambda: two_single_calls(args))
    gargs = make_args(*shape, **layout, grad=True)
    dout = torch.randn(shape[:4], device=device(), dtype=torch.bfloat16)
    fused_step = lambda: triton_bidirectional_ssd(**gargs, average=True).backward(dout)  # noqa: E731
    two_step = lambda: two_single_calls(gargs).backward(dout)  # noqa: E731
    fused_bwd = bench(fused_step, grad_to_none=leaves(gargs))
    two_bwd = bench(two_step, grad_to_none=leaves(gargs))
    return (fused, two, fused_bwd, two_bwd, fused_graph, two_graph, bench_graph_step(fused_step),
            bench_graph_step(two_step))


def phase_time(shapes, configs, log, on_row=lambda rows: None):
    rows = {}
    for name, (shape, ref_fwd, ref_fwdbwd, n_seqs) in shapes.items():
        row = rows.setdefault(name, {"shape": shape, "packed_sequences": n_seqs,
                                     "mamba_ssm_ms": [ref_fwd, ref_fwdbwd], "configs": {}})
        for cname, spec in [("auto", None)] + [(c, CONFIGS[c]) for c in configs]:
            set_config(spec)
            chunk = triton_op.SSDConfig(*(spec or ())).chunk_for(shape[1], need_grad=True)
            try:
                fwd, fwd_graph, fwdbwd, fwdbwd_graph = time_single(shape, n_seqs)
            except Exception as exc:  # one failing tiling must not lose the others
                log(f"  {name} {cname} FAILED: {exc!r}")
                row["configs"][cname] = {"error": repr(exc)}
                continue
            (mem_f, mm_f), (mem_b, mm_b) = limits(shape, chunk)
            c = row["configs"][cname] = {
                "spec": spec, "fwd_ms": fwd, "fwd_graph_ms": fwd_graph, "fwdbwd_ms": fwdbwd,
                "fwdbwd_graph_ms": fwdbwd_graph,
                "fwdbwd_graph_speedup": ref_fwdbwd / fwdbwd_graph if ref_fwdbwd and fwdbwd_graph else None,
                "fwd_graph_speedup": ref_fwd / fwd_graph if ref_fwd else None,
                "fwd_frac_mem": mem_f / fwd, "fwd_frac_matmul": mm_f / fwd,
                "fwdbwd_frac_mem": mem_b / fwdbwd, "fwdbwd_frac_matmul": mm_b / fwdbwd,
                "fwd_speedup": ref_fwd / fwd if ref_fwd else None,
                "fwdbwd_speedup": ref_fwdbwd / fwdbwd if ref_fwdbwd else None,
            }
            vs = lambda s: f"{s:.2f}x mamba_ssm, " if s else ""  # noqa: E731
            log(f"  {name:13s} {cname:6s} fwd {fwd:7.3f} ms ({vs(c['fwd_speedup'])}mem {c['fwd_frac_mem']:.0%}, "
                f"mm {c['fwd_frac_matmul']:.0%}; graph {fwd_graph:.3f} ms)  fwd+bwd {fwdbwd:7.3f} ms ({vs(c['fwdbwd_speedup'])}"
                f"mem {c['fwdbwd_frac_mem']:.0%}, mm {c['fwdbwd_frac_matmul']:.0%}"
                + (f"; graph {fwdbwd_graph:.3f} ms" if fwdbwd_graph else "") + ")")
        for kind in ("bidir", "bidir_vim2") if name in BIDIR_ROWS else ():
            per_dir = kind == "bidir_vim2"
            for cname, spec in [("auto", None)] + [(c, CONFIGS[c]) for c in configs]:
                key = kind if cname == "auto" else f"{kind}_{cname}"
                set_config(spec)
                try:
                    times = time_bidir(shape, per_dir)
                    (mem_f, mm_f), _ = limits(shape, triton_op.SSDConfig().chunk_for(shape[1], False), ndir=2,
                                              z=not per_dir, per_dir=per_dir)
                    row[key] = {"spec": spec, **bidir_result(times, mem=mem_f, matmul=mm_f)}
                    log(f"  {name:13s} {key} {bidir_summary(row[key])}")
                except Exception as exc:
                    log(f"  {name} {key} FAILED: {exc!r}")
                    row[key] = {"error": repr(exc)}
        set_config(None)
        on_row(rows)
        empty_cache()
    return rows


def _train_step(name, shapes):
    shape, _, _, n_seqs = shapes[name]
    set_config(None)
    gargs = make_args(*shape, n_seqs=n_seqs, seed=3, grad=True)
    dout = torch.randn(shape[:4], device=device(), dtype=torch.bfloat16)
    step = lambda: triton_ssd(**gargs).backward(dout)  # noqa: E731
    step()
    sync()
    return step


def phase_profile(shapes, log):
    """Where the GPU time of one forward+backward goes, per row: the kernels, from torch.profiler."""
    tables = {}
    for name in shapes:
        step = _train_step(name, shapes)
        activities = [torch.profiler.ProfilerActivity.CPU] + ([] if DRY else [torch.profiler.ProfilerActivity.CUDA])
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                step()
            sync()
        tables[name] = prof.key_averages().table(sort_by="cpu_time_total" if DRY else "cuda_time_total",
                                                 row_limit=16)
        log(f"  {name}, 3 x forward+backward:\n{tables[name]}")
        empty_cache()
    return tables


def host_costs(log, shape=(1, 64, 2, 64, 64), calls=200):
    """Host ms per call at a shape whose GPU work is negligible: one small torch op (the host's
    speed), the Triton launchers alone (``triton_op.ssd_forward`` / ``ssd_backward``), the
    backward op (``mambazoo::ssd_backward``) called directly, the public op's forward, and its
    forward+backward through autograd; and cProfile's view of the backward launcher."""
    args = make_args(*shape, seed=3)

    def per_call(fn):
        for _ in range(10 if DRY else 20):
            fn()
        sync()
        start = time.perf_counter()
        n = 2 if DRY else calls
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - start) / n * 1e3

    # x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx; then softplus, dt_limit, scale, bidirectional
    inputs = (args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"], None, args["dt_bias"], None, None)
    flags = (True, (0.0, math.inf), 1.0, False)
    costs = {}
    with torch.no_grad():
        costs["torch add_"] = per_call(lambda: args["x"].add_(0))
        costs["launcher forward"] = per_call(lambda: triton_op.ssd_forward(*inputs, *flags, False))
        out, final, *saved = triton_op.ssd_forward(*inputs, *flags, True)
        grads_in = (torch.ones_like(out), torch.zeros_like(final), *inputs, *saved)
        backward = lambda: triton_op.ssd_backward(*grads_in, *flags)  # noqa: E731
        costs["launcher backward"] = per_call(backward)
        costs["backward op"] = per_call(lambda: torch.ops.mambazoo.ssd_backward(*grads_in, 256, True, [0.0, math.inf],
                                                                                True))
        costs["public forward"] = per_call(lambda: triton_ssd(**args))
    gargs = make_args(*shape, seed=3, grad=True)
    dout = torch.randn(shape[:4], device=device(), dtype=torch.bfloat16)
    costs["public forward+backward"] = per_call(lambda: triton_ssd(**gargs).backward(dout))
    log("  host ms per call, shape %s: %s" % (shape, ", ".join(f"{k} {v:.3f}" for k, v in costs.items())))
    stats = profiled(backward, 2 if DRY else 50)
    log(f"  the backward launcher under cProfile\n{stats}")
    return {"costs_ms": costs, "backward_launcher_stats": stats}


def profiled(fn, calls):
    """cProfile's 25 most expensive functions (own time) over ``calls`` calls of ``fn``."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    sync()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue()


def phase_host(log):
    """Where the host time of an eager call goes (:func:`host_costs`): short rows' eager steps are
    host-bound (compare the eager and CUDA-graph times of the time phase). cProfile sees only the
    launcher called directly: under Python 3.12 it mixes the autograd device thread of a full
    forward+backward step into the main thread's stacks."""
    return host_costs(log)


# ----------------------------------------------------------------------------------------------
# big


def phase_big(log):
    """Forward over > 2^31 elements of x; the last head of the last batch row against the
    reference on that head alone (heads are independent), and separately its tokens whose x/out
    offsets pass 2^31 (64-bit offsets)."""
    set_config(None)
    shape = (2, 70, 3, 16, 16) if DRY else (2, (1 << 20) + (1 << 18), 16, 64, 64)
    batch, length, heads, headdim, d_state = shape
    args = make_args(*shape, seed=5)
    start = time.time()
    with torch.no_grad():
        out, state = triton_ssd(**args, return_final_states=True)
    sync()
    elapsed = time.time() - start
    last = dict(args, x=args["x"][-1:, :, -1:], dt=args["dt"][-1:, :, -1:], A=args["A"][-1:], B=args["B"][-1:],
                C=args["C"][-1:], D=args["D"][-1:], dt_bias=args["dt_bias"][-1:])
    with torch.no_grad():
        ref, ref_state = ssd_reference(**upcast(last), return_final_states=True)
    # First token of the checked head whose elements all sit at offsets >= 2^31 (0 in the dry run).
    first_far = max(0, -(-((1 << 31) // headdim - heads + 1) // heads) - (batch - 1) * length)
    first_far = min(first_far, length - 1)
    res = {"elements": batch * length * heads * headdim,
           "first_far_token": first_far, "far_tokens": length - first_far,
           "out": rel(out[-1:, :, -1:], ref), "out_past_2^31": rel(out[-1:, first_far:, -1:], ref[:, first_far:]),
           "final_state": rel(state[-1:, -1:], ref_state), "seconds_incl_first_call": elapsed}
    log(f"  {res}")
    return res


def main():
    args = parser(__doc__, "warmup,check,time,big,profile,host", CONFIGS, SHAPES)
    args.add_argument("--tag", default="", help="appended to the result file names")
    opts = args.parse_args()
    shapes, configs = selected(opts, SHAPES, DRY_SHAPES)
    run = Run(opts.out, "ssd", opts.tag,
              dtype="bf16 x/B/C/z, fp32 dt/A/D/dt_bias, softplus, D per head, one group; z only in the "
                    "bidirectional rows",
              limits={"bytes_per_s": BYTES_PER_S, "matmul_flops": MATMUL_FLOPS},
              default_config="chunk 32 (64 for inference up to 256 tokens), block_p 64, warps fwd 4 (d_state <= 64) "
                             "or 8, bwd 8, segments by the waves x chunks model of triton_op._best_segments",
              configs=CONFIGS)

    def time_phase():
        rows = phase_time(shapes, configs, run.log, lambda rows: (run.report["phases"].update(time=rows), run.save()))
        run.report["phases"]["time"] = rows
        run.report["targets"] = targets_met(rows, ISSUE_TARGETS, ("bidir", "bidir_vim2"))
        plot(rows, run.path + ".png", "Triton SSD vs mamba_ssm 2.3.2 mamba_chunk_scan_combined",
             "bidir one launch / two calls (fwd)",
             [("fwd_frac_mem", "fwd: memory"), ("fwd_frac_matmul", "fwd: bf16 matmul")], "fraction of limit")
        return rows

    run.phases(opts.phases.split(","), {
        "warmup": lambda: phase_warmup(shapes, configs, run.log),
        "check": lambda: phase_check(shapes, run.log),
        "time": time_phase,
        "profile": lambda: phase_profile(shapes, run.log),
        "host": lambda: phase_host(run.log),
        "big": lambda: phase_big(run.log),
    })
    run.finish(13, ("bidir", "bidir_vim2"))


if __name__ == "__main__":
    main()
