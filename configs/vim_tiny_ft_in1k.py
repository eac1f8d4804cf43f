# Fine-tune a pretrained Vim-Ti on ImageNet-1k: the official "finer granularity" recipe
# (hustvl/Vim vim/scripts/ft-vim-t.sh: patch stride 8, 30 epochs, 8 GPUs x batch 128, --lr 5e-6 ->
# 1e-5 after linear scaling, --min-lr 1e-5, --warmup-lr 1e-5, --drop-path 0.0, --weight-decay 1e-8,
# --finetune <pretrained checkpoint>). Official result: 78.3 top-1 (Vim-Ti+, README).
# Weights: the official file (or tools/convert.py's model.safetensors) at a local path, loaded by
# timm through pretrained_cfg_overlay (EMA weights preferred, pos_embed resampled to the stride-8 grid):
#   --cfg-options model.pretrained_cfg_overlay.file=/path/to/vim_t_midclstok_76p1acc.pth
# Layer-wise lr decay (group_matcher of the model) is off as in the official script; for transfer
# to a small dataset set e.g. optim_wrapper.paramwise_cfg.layer_decay=0.75.
_base_ = ["_base_/vim_imagenet.py"]

max_epochs = 30
model = dict(
    model_name="vim_tiny_stride8",
    pretrained=True,
    pretrained_cfg_overlay=dict(file="checkpoints/vim_t_midclstok_76p1acc.pth"),
    drop_path_rate=0.0,
)
optim_wrapper = dict(optimizer=dict(lr=5e-6, weight_decay=1e-8), paramwise_cfg=dict(layer_decay=None))
# warmup from 1e-5 to 1e-5 and cosine down to 1e-5: the official schedule is a constant 1e-5
param_scheduler = [
    dict(type="LinearLR", start_factor=1.0, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type="CosineAnnealingLR", eta_min=1e-5, by_epoch=True, begin=5, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
