# Vim-S on ImageNet-1k from scratch, official recipe (hustvl/Vim vim/scripts/pt-vim-s.sh: 8 GPUs x
# batch 64, --lr 1e-3 (-> 1e-3 at 512 after linear scaling), --drop-path 0.05, --weight-decay 0.05).
# Official result: 80.5 top-1 / 95.1 top-5 (hustvl/Vim README).
_base_ = ["_base_/vim_imagenet.py"]

model = dict(model_name="vim_small", drop_path_rate=0.05)
train_dataloader = dict(batch_size=64)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
