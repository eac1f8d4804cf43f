#!/usr/bin/env bash
# One H200 call for the training tools (issue 5) and the model table: vim_tiny and timm's
# deit_small trained by the same tool on Fashion-MNIST at 224 px (1 epoch of 55,000 images, bf16),
# vim_tiny UperNet on the 256 px composite scenes (1,000 iterations), then benchmarks/models.py.
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

if [ -z "${SKIP_DEIT:-}" ]; then
    LIMIT=150 run deit_small_fmnist224 configs/vim_tiny_fashion_mnist_224.py model.model_name=deit_small_patch16_224 \
        train_cfg.max_epochs=1
    rm -f "$OUT/deit_small_fmnist224_curves.png"  # keep within the 8 files a device call returns
fi
# The two Vim runs side by side: each spends its first ~2 min compiling its Triton kernels on the
# CPU (different tilings: 197 vs 257 tokens), then they share the GPU, so their img/s are lower
# bounds; benchmarks/models.py below times models alone.
LIMIT=${VIM_LIMIT:-330} run vim_tiny_fmnist224 configs/vim_tiny_fashion_mnist_224.py train_cfg.max_epochs=1 &
LIMIT=${VIM_LIMIT:-330} run vim_tiny_upernet_scenes256 configs/vim_tiny_upernet_scenes_256.py \
    train_cfg.max_iters=1000 train_cfg.val_interval=500 param_scheduler.1.end=1000 &
wait
timeout "${MODELS_LIMIT:-150}" python3 benchmarks/models.py --out "$OUT" --repeats 10 \
    --models ${MODELS:-deit_small_patch16_224 vim_small vim2_small} 2>&1 | tail -12
