#!/usr/bin/env bash
# One H200 call for the training tools (issue 5) and the model table: vim_tiny and timm's
# deit_small trained by the same tool on Fashion-MNIST at 224 px (1 epoch of 55,000 images, bf16),
# vim_tiny UperNet on the 256 px composite scenes (1,500 iterations), then benchmarks/models.py.
# Needs: mmengine importable, Fashion-MNIST's .gz files in /usr/share/datasets/fashion-mnist
# (Debian's dataset-fashion-mnist), data/scenes256 built beforehand (configs/vim_tiny_upernet_scenes_256.py).
# Usage, from the repository root:  OUT=DIR bash benchmarks/h200_training.sh
set -u
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1 PYTHONPATH=.:kernels:${PYTHONPATH:-}
WD=/tmp/mambazoo_work
mkdir -p "$OUT" "$WD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"

# Compile the Vim runs' scan kernels (bidirectional fwd + bwd, for the tilings of 197 and 257
# tokens) in parallel processes sharing Triton's cache, while DeiT-S trains.
python3 - > "$WD/warmup.log" 2>&1 <<'PY' &
import concurrent.futures as cf, multiprocessing as mp, sys, time
sys.argv = ["warmup"]
sys.path.insert(0, "benchmarks")
import selective_scan as bench
from mambazoo_kernels.selective_scan import triton_op
specs = {(c.chunk, c.fwd_tile, c.fwd_warps, c.bwd_vec, c.bwd_warps) for c in map(triton_op.default_config, (197, 257))}
jobs = [(spec, True, kind) for spec in sorted(specs) for kind in ("fwd", "bwd")]
start = time.time()
with cf.ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn")) as pool:
    for done in cf.as_completed([pool.submit(bench._warm, *job) for job in jobs]):
        print("compiled", done.result(), f"({time.time() - start:.0f} s)", flush=True)
PY
WARM=$!

run() {  # name config [cfg-options...]
    local name=$1 config=$2 opts=(); shift 2
    [ $# -gt 0 ] && opts=(--cfg-options "$@")
    echo "=== $name"
    timeout "${LIMIT:-300}" python3 tools/train.py "$config" --work-dir "$WD/$name" "${opts[@]}" > "$WD/$name.log" 2>&1
    echo "exit $?"
    grep -E "Epoch\(train\).*\[[0-9]*00/|Iter\(train\).*\[[0-9]*00/|Iter\(val\)|Iter\(test\)|throughput|peak|accuracy|mIoU|Error" "$WD/$name.log" | tail -30
    cp "$WD/$name/test_metrics.json" "$OUT/${name}_metrics.json" 2>/dev/null
    cp "$WD/$name/curves.png" "$OUT/${name}_curves.png" 2>/dev/null
}

LIMIT=150 run deit_small_fmnist224 configs/vim_tiny_fashion_mnist_224.py model.model_name=deit_small_patch16_224 \
    train_cfg.max_epochs=1
wait $WARM; cat "$WD/warmup.log"
LIMIT=200 run vim_tiny_fmnist224 configs/vim_tiny_fashion_mnist_224.py train_cfg.max_epochs=1
LIMIT=170 run vim_tiny_upernet_scenes256 configs/vim_tiny_upernet_scenes_256.py
rm -f "$OUT/deit_small_fmnist224_curves.png"  # keep within the 8 files a device call returns
timeout "${MODELS_LIMIT:-150}" python3 benchmarks/models.py --out "$OUT" --repeats 10 \
    --models deit_small_patch16_224 vim_small 2>&1 | tail -12
