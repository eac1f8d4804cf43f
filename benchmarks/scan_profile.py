"""Launch the selective-scan kernels of one shape for a profiler (Nsight Compute), nothing else.

Run from the repository root on the GPU, e.g.::

    ncu --clock-control none --profile-from-start off --section WarpStateStats --section Occupancy \\
        --section SourceCounters python benchmarks/scan_profile.py --shape vim_s_224

The kernels are compiled and run once before ``cudaProfilerStart``, so the profiled launches are
one forward (+ state pass when segmented) and, unless ``--forward-only``, one backward with the
automatic tiling of ``triton_op`` (``MAMBAZOO_SCAN_BWD`` picks the backward kernel), or with
``--config`` a ``ScanConfig`` given as a Python tuple.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "kernels"), os.path.dirname(__file__)]

import torch  # noqa: E402

from selective_scan import SHAPES, make_args  # noqa: E402

from mambazoo_kernels import bidirectional_selective_scan, selective_scan  # noqa: E402
from mambazoo_kernels.selective_scan import triton_op  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="vim_s_224", choices=sorted(SHAPES))
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--channel-last", action="store_true",
                        help="u/delta/z as (batch, L, dim) memory, the mixers' layout (read by selective_scan.make_args)")
    parser.add_argument("--config", type=ast.literal_eval, default=None, help="ScanConfig fields, e.g. (16, 8, 1)")
    opts = parser.parse_args()
    if opts.config is not None:
        triton_op.CONFIG = triton_op.ScanConfig(*opts.config)
    batch, dim, length, d_state = SHAPES[opts.shape][0]
    args = make_args(batch, dim, length, d_state, ndir=2 if opts.bidirectional else None, grad=True)
    op = bidirectional_selective_scan if opts.bidirectional else selective_scan
    dout = torch.randn(batch, dim, length, device="cuda", dtype=torch.bfloat16)

    def step():
        out = op(**args, backend="triton")
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
