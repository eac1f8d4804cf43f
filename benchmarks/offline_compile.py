"""Compile, on a machine without a GPU, every Triton kernel a scan or SSD call would launch.

The launchers run on CPU tensors with ``JITFunction.run`` replaced by a recorder; each recorded
launch is then compiled for sm_90 (H100/H200) with the arguments' specialization (16-byte
pointer and integer divisibility, integers equal to 1), and the compiled kernel's registers,
spill stack, shared memory and SASS instruction counts are printed, or the compiler's error.
This catches compile failures and register/spill regressions of a Triton version before any
device time is spent, e.g. with the GPU host's Triton installed to a folder::

    PYTHONPATH=/path/to/triton-3.6:kernels python benchmarks/offline_compile.py scan --shape 8,768,197,16
    PYTHONPATH=kernels python benchmarks/offline_compile.py ssd --shape 8,4097,12,64,64 --backward

``--config`` sets the tiling (``ScanConfig`` / ``SSDConfig`` fields as a Python tuple).
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "kernels"))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

SASS_OPS = ("MUFU.EX2", "BAR.SYNC", "SHFL", "LDG", "STG", "LDS", "STS", "LDL", "STL")
DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32", torch.int64: "i64"}


def record_launches(call):
    """Run ``call()`` with every Triton launch recorded instead of run: [(kernel, args, options)]."""
    launches = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    JITFunction.run = record
    try:
        call()
    finally:
        JITFunction.run = original
    return launches


def _source(fn, args, kwargs):
    """The ASTSource of one launch, specialized as a launch on the GPU would be."""
    bound = dict(zip(fn.arg_names, args))
    bound.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    options = {k: v for k, v in kwargs.items() if k not in fn.arg_names}
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = bound[param.name]
        if param.is_constexpr or value is None:
            signature[param.name] = "constexpr"
            constexprs[(i,)] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # allocations are 16-byte aligned
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            if param.do_not_specialize:
                signature[param.name] = "i32" if abs(value) < 2**31 else "i64"
            elif value == 1:
                signature[param.name] = "constexpr"
                constexprs[(i,)] = 1
            else:
                signature[param.name] = "i32" if abs(value) < 2**31 else "i64"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {param.name}={value!r}")
    return ASTSource(fn, signature, constexprs=constexprs, attrs=attrs), options


def compile_launch(fn, args, kwargs, arch=90, sass_dir=None):
    """Compile one recorded launch; a dict of resources, or ``{"error": ...}``. With ``sass_dir``
    the SASS listing is also written there as ``<kernel>.sass``."""
    src, options = _source(fn, args, kwargs)
    start = time.time()
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # the compiler's own message is the result
        lines = [line for line in str(exc).splitlines() if "error" in line.lower()]
        return {"error": (lines[0] if lines else repr(exc))[:300]}
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([f"{tools}/cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([f"{tools}/cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    if sass_dir is not None:
        os.makedirs(sass_dir, exist_ok=True)
        with open(os.path.join(sass_dir, f"{fn.__name__}.sass"), "w") as f:
            f.write(sass)
    regs, stack, shared = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", usage).groups()
    result = {"regs": int(regs), "stack": int(stack), "shared": int(shared), "seconds": round(time.time() - start, 1)}
    result.update({op: len(re.findall(rf"\b{re.escape(op)}\b", sass)) for op in SASS_OPS})
    return result


def scan_call(shape, backward, bidirectional, config, channel_last=False):
    from mambazoo_kernels import to_channel_last
    from mambazoo_kernels.selective_scan import triton_op

    if config is not None:
        triton_op.CONFIG = triton_op.ScanConfig(*config)
    batch, dim, length, d_state = shape
    lead = (2,) if bidirectional else ()
    bf16 = dict(dtype=torch.bfloat16)
    u = torch.randn(*lead, batch, dim, length, **bf16)
    args = (u, torch.randn_like(u), -torch.rand(*lead, dim, d_state), torch.randn(*lead, batch, d_state, length, **bf16),
            torch.randn(*lead, batch, d_state, length, **bf16), torch.ones(*lead, dim),
            torch.randn(batch, dim, length, **bf16), torch.zeros(*lead, dim), None)
    if channel_last:
        args = tuple(to_channel_last(a) if i in (0, 1, 6) else a for i, a in enumerate(args))

    def call():
        out, final, ckpt, ypre, segdt = triton_op.scan_forward(*args, True, 0.5, bidirectional, backward)
        if backward:
            triton_op.scan_backward(torch.randn_like(out), torch.zeros_like(final), *args, ckpt, ypre, segdt,
                                    True, 0.5, bidirectional)

    return call


def ssd_call(shape, backward, bidirectional, config, gated=False):
    """One SSD call; bidirectional: x, B, C per direction (vim2's layout), or with ``gated`` shared
    by the directions and a gate z (the benchmark's "bidir" rows)."""
    from mambazoo_kernels.ssd import triton_op

    if config is not None:
        triton_op.CONFIG = triton_op.SSDConfig(*config)
    batch, length, heads, headdim, d_state = shape
    lead = (2,) if bidirectional else ()
    own = () if gated else lead
    bf16 = dict(dtype=torch.bfloat16)
    x = torch.randn(*own, batch, length, heads, headdim, **bf16)
    z = torch.randn(batch, length, heads, headdim, **bf16) if gated else None
    args = (x, torch.randn(*lead, batch, length, heads, **bf16), -torch.rand(*lead, heads),
            torch.randn(*own, batch, length, 1, d_state, **bf16), torch.randn(*own, batch, length, 1, d_state, **bf16),
            torch.ones(*lead, heads), z, torch.zeros(*lead, heads), None, None)

    def call():
        out, final, ckpt, ypre, segdecay = triton_op.ssd_forward(*args, True, (0.0, float("inf")), 0.5,
                                                                 bidirectional, backward)
        if backward:
            triton_op.ssd_backward(torch.randn_like(out), torch.zeros_like(final), *args, ckpt, ypre, segdecay,
                                   True, (0.0, float("inf")), 0.5, bidirectional)

    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("op", choices=("scan", "ssd"))
    parser.add_argument("--shape", required=True, help="scan: batch,dim,L,N; ssd: batch,L,heads,headdim,N")
    parser.add_argument("--backward", action="store_true")
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--config", type=ast.literal_eval, default=None)
    parser.add_argument("--channel-last", action="store_true", help="scan: u/delta/z as channel-last views")
    parser.add_argument("--gated", action="store_true", help="ssd: a gate z; bidirectional: x, B, C shared")
    parser.add_argument("--sass", metavar="DIR", default=None, help="also write each kernel's SASS listing to DIR")
    opts = parser.parse_args()
    shape = tuple(int(s) for s in opts.shape.split(","))
    rank = 4 if opts.op == "scan" else 5
    if len(shape) != rank:
        parser.error(f"--shape for {opts.op} needs {rank} comma-separated sizes, got {opts.shape!r}")
    if opts.op == "scan":
        call = scan_call(shape, opts.backward, opts.bidirectional, opts.config, opts.channel_last)
    else:
        call = ssd_call(shape, opts.backward, opts.bidirectional, opts.config, opts.gated)
    launches = record_launches(call)
    print(f"triton {triton.__version__}, {len(launches)} launches")
    seen = set()
    for fn, args, kwargs in launches:
        key = (fn.__name__, repr(sorted((k, v) for k, v in kwargs.items())))
        if key in seen:
            continue
        seen.add(key)
        const = {k: v for k, v in kwargs.items() if k.isupper() or k.startswith("num_") or k == "maxnreg"}
        print(f"{fn.__name__} {const}\n    {compile_launch(fn, args, kwargs, sass_dir=opts.sass)}", flush=True)


if __name__ == "__main__":
    main()
