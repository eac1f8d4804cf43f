"""The Triton kernels compile for the GPU (sm_90) on this CPU machine.

The interpreter tests run the kernels' Python, never Triton's GPU compiler, so a kernel that the
compiler rejects (as triton 3.6 rejected one form of the sequential scan backward on the H200)
would pass them. ``benchmarks/offline_compile.py`` records the launches of one call and compiles
each for sm_90; here every compile must succeed.
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("op,shape,extra,kernels", [
    ("scan", "2,64,40,16", [], {"stage_bc_kernel", "ss_fwd_seq_n16_t8_uni_zahead", "ss_bwd_seq_n16_t2_uni_tsum"}),
    ("scan", "2,64,40,16", ["--channel-last", "--bidirectional"],
     {"ss_fwd_seq_n16_t8_bi_cl", "ss_bwd_seq_n16_t2_bi_cl_tsum_ahead"}),
    ("ssd", "2,40,2,16,16", [], {"ssd_fwd_kernel", "ssd_bwd_kernel"}),
])
def test_forward_and_backward_kernels_compile_for_sm90(op, shape, extra, kernels, tmp_path):
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "offline_compile.py"), op,
                           "--shape", shape, "--backward", *extra], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    results = {lines[i].split()[0]: ast.literal_eval(lines[i + 1].strip()) for i in range(1, len(lines) - 1, 2)}
    assert kernels <= set(results), done.stdout
    for name, res in results.items():
        assert "error" not in res, (name, res)
        assert 0 < res["regs"] <= 255, (name, res)
