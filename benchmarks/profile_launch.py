"""Launch the kernels of one scan or SSD call for a profiler (Nsight Compute), nothing else.

Run from the repository root on the GPU, e.g.::

    ncu --clock-control none --profile-from-start off --section WarpStateStats --section Occupancy \\
        --section SourceCounters python benchmarks/profile_launch.py scan --shape vim_s_224
    ncu ... -k regex:ssd_bwd python benchmarks/profile_launch.py ssd --shape lm_8k

The kernels are compiled and run once before ``cudaProfilerStart``, so the profiled launches are
one forward (+ state pass when segmented) and, unless ``--forward-only``, one backward with the
automatic tiling (for the scan ``MAMBAZOO_SCAN_BWD`` picks the backward kernel), or with
``--config`` a ``ScanConfig`` / ``SSDConfig`` given as a Python tuple. Shapes: the benchmarks'
``SHAPES`` (``selective_scan.py``, ``ssd.py``).
"""
from __future__ import annotations

import argparse
import ast
import os
import sys

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "kernels"), os.path.dirname(__file__)]

import torch  # noqa: E402


def scan_step(opts):
    """One scan call's forward (+ backward) as a function; ``selective_scan`` reads --channel-last."""
    import selective_scan as bench
    from mambazoo_kernels import bidirectional_selective_scan, selective_scan
    from mambazoo_kernels.selective_scan import triton_op

    if opts.config is not None:
        triton_op.CONFIG = triton_op.ScanConfig(*opts.config)
    batch, dim, length, d_state = bench.SHAPES[opts.shape][0]
    args = bench.make_args(batch, dim, length, d_state, ndir=2 if opts.bidirectional else None, grad=True)
    op = bidirectional_selective_scan if opts.bidirectional else selective_scan
    dout = torch.randn(batch, dim, length, device=bench.device(), dtype=torch.bfloat16)
    return lambda: op(**args, backend="triton"), dout


def ssd_step(opts):
    """One SSD call's forward (+ backward) as a function (the benchmark's inputs)."""
    import ssd as bench
    from mambazoo_kernels.ssd import triton_op

    if opts.config is not None:
        triton_op.CONFIG = triton_op.SSDConfig(*opts.config)
    shape, _, _, n_seqs = bench.SHAPES[opts.shape]
    args = bench.make_args(*shape, n_seqs=n_seqs, bidir=opts.bidirectional, z=opts.bidirectional, grad=True)
    op = bench.triton_bidirectional_ssd if opts.bidirectional else bench.triton_ssd
    dout = torch.randn(shape[:4], device=bench.device(), dtype=torch.bfloat16)
    return lambda: op(**args), dout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("op", choices=("scan", "ssd"))
    parser.add_argument("--shape", default="vim_s_224", help="a row of the op's benchmark SHAPES")
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--channel-last", action="store_true",
                        help="scan: u/delta/z as (batch, L, dim) memory, the mixers' layout")
    parser.add_argument("--config", type=ast.literal_eval, default=None,
                        help="ScanConfig / SSDConfig fields as a tuple, e.g. (16, 8, 1)")
    opts = parser.parse_args()
    forward, dout = (scan_step if opts.op == "scan" else ssd_step)(opts)

    def step():
        out = forward()
        if not opts.forward_only:
            out.backward(dout)

    step()  # compile
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    step()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
