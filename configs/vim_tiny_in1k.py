# Vim-Ti on ImageNet-1k from scratch, official recipe (hustvl/Vim vim/scripts/pt-vim-t.sh: 8 GPUs x
# batch 128, --lr default 5e-4 -> 1e-3 after linear scaling, --drop-path default 0.1, 300 epochs).
# Official result: 76.1 top-1 / 93.0 top-5 (hustvl/Vim README).
_base_ = ["_base_/vim_imagenet.py"]
