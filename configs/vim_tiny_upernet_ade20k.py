# UperNet + Vim-Ti on ADE20k (150 classes), 512x512 crops: the official Vim segmentation recipe
# (hustvl/Vim, seg/configs/vim/upernet/upernet_vim_tiny_24_512_slide_60k.py and the _base_ files
# it lists: models/upernet_vim.py, datasets/ade20k.py, schedules/schedule_60k.py) on mmengine with
# the zoo's own dataset / segmentor / metric, no mmseg needed:
#   torchrun --nproc-per-node 4 tools/train.py configs/vim_tiny_upernet_ade20k.py --launcher pytorch
# Data: ADEChallengeData2016 unpacked at data/ade/ADEChallengeData2016 (images/ + annotations/).
#
# Official values, and where this config differs:
# - backbone: vim_tiny (embed 192, depth 24, patch 16), img_size 512, taps after blocks
#   5/11/17/23 (out_indices=[5, 11, 17, 23]), made into strides 4/8/16/32 (official fpn1..fpn4:
#   2 deconvs / 1 deconv / identity / max pool; here the ViTDet simple pyramid, which adds a 1x1 +
#   3x3 conv with LayerNorm per level). The official seg model has no class token
#   (if_cls_token=False); the zoo's Vim keeps its middle class token and drops it from the maps.
# - decode head: UPerHead, in_channels [192] * 4, channels 192 (the tiny config overrides the
#   base 512), pool_scales (1, 2, 3, 6), dropout 0.1, SyncBN, CE loss weight 1.0.
# - auxiliary head: FCNHead on in_index 2 (stride 16), channels 256, num_convs 1, concat_input
#   False, dropout 0.1, CE loss weight 0.4.
# - test: slide inference, crop (512, 512), stride (341, 341).
# - optimizer: AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, layer-wise lr decay 0.92
#   over the 24 blocks (official LayerDecayOptimizerConstructor, num_layers=24,
#   layer_decay_rate=0.92). Here timm's factory through the segmentor's group_matcher: stem
#   (patch/pos embed, class token) at 0.92^25, block i at 0.92^(24-i), pyramid and heads at 1.
#   No weight decay on 1-D params and the model's no_weight_decay() (pos_embed, cls_token, and
#   the zoo's choice: A_log / D / dt biases, which the official code decays when 2-D).
# - schedule: 60k iterations (schedule_60k), linear warmup 1500 iters from 1e-6 x lr, then poly
#   power 1.0 to 0; evaluation and checkpoints every 1000 iterations (schedule_60k; max 4 kept).
#   (mmseg's own ADE20k UperNet recipes use 160k iterations at batch 16.)
# - batch: 4 GPUs x 8 images = 32 ("By default, models are trained on 4 GPUs with 8 images per
#   GPU"); fp16 AMP there (IterBasedRunnerAmp); here bf16 autocast through AutocastOptimWrapper.
# - data: reduce_zero_label, Resize (2048, 512) ratio_range (0.5, 2.0), RandomCrop 512
#   cat_max_ratio 0.75, RandomFlip 0.5, PhotoMetricDistortion, ImageNet mean/std (0-255), pad to
#   512 with label 255; test: keep-ratio resize to (2048, 512), scored at the original size.
# - init: the official ImageNet Vim-Ti checkpoint (hustvl/Vim-tiny-midclstok,
#   vim_t_midclstok_76p1acc.pth), pos_embed resampled to the 32x32 grid on load.
_base_ = ["_base_/upernet_vim.py"]

data_root = "data/ade/ADEChallengeData2016"
vim_checkpoint = "checkpoints/vim_t_midclstok_76p1acc.pth"
crop_size = (512, 512)
embed_dim = 192
num_classes = 150
max_iters = 60000
interval = 1000

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        model_name="vim_tiny",
        img_size=crop_size[0],
        out_indices=(5, 11, 17, 23),
        out_channels=embed_dim,
        pretrained=vim_checkpoint,
    ),
    decode_head=dict(
        in_channels=[embed_dim] * 4,
        in_index=(0, 1, 2, 3),
        num_classes=num_classes,
        channels=192,
        norm="SyncBN",  # BN when not distributed (mmengine's Runner reverts SyncBN)
    ),
    auxiliary_head=dict(in_channels=embed_dim, num_classes=num_classes, channels=256, norm="SyncBN"),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),
)

train_pipeline = [
    dict(type="LoadSegImage"),
    dict(type="LoadSegAnnotations", reduce_zero_label=True),
    dict(type="SegRandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0)),
    dict(type="SegRandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="SegRandomFlip", prob=0.5),
    dict(type="SegPhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadSegImage"),
    dict(type="SegResize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadSegAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=8,
    dataset=dict(
        type="ADE20KSegDataset",
        data_root=data_root,
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    dataset=dict(
        type="ADE20KSegDataset",
        data_root=data_root,
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader

train_cfg = dict(max_iters=max_iters, val_interval=interval)
optim_wrapper = dict(
    type="AutocastOptimWrapper",
    dtype="bfloat16",
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(layer_decay=0.92),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=max_iters),
]

default_hooks = dict(
    checkpoint=dict(interval=interval, max_keep_ckpts=4, save_best="mIoU", rule="greater"),
)
env_cfg = dict(cudnn_benchmark=True)
find_unused_parameters = False
