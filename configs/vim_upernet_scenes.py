# UperNet on a Vim simple-pyramid backbone, trained from scratch on the composite scenes: a small
# ADE20k-format set of real images (Fashion-MNIST product photos pasted with their silhouettes on
# real textures and photographs from scikit-image; mambazoo/data/scenes.py), built into
# data/scenes on first use (seconds). 13 classes (brick, grass, gravel, 10 clothing items);
# label 0 ("other": photo backgrounds) is ignored through reduce_zero_label, as in ADE20k.
# Same pipeline, segmentor, metric and schedule shape as configs/vim_tiny_upernet_ade20k.py (what
# they share: configs/_base_/upernet_vim.py), scaled down (128 px scenes, 96 px crops).
#
# CPU (default, 2 cores): a 4-block test_vim (embed 64, patch 8), 400 iterations at batch 8:
#   python tools/train.py configs/vim_upernet_scenes.py
# Measured 2026-11-28 on the shared 2-core machine: 11-19 min (1.5-3 s/iteration, with and without
# other jobs); test mIoU 15.73, aAcc 64.43, mAcc 23.98 on the 100 validation scenes (the best
# single-class predictor: mIoU 2.38). The textures are learnt (IoU 54-83 %), the ten clothing
# classes barely (Bag 10 %, others 0) in 400 steps; lr 6e-3 gave mIoU 14.24.
#
# One GPU (H200, ~2 min): vim_tiny (24 blocks, taps 5/11/17/23 like the official recipe), 256 px
# crops of 256 px scenes resized by 0.5-2, batch 16, bf16 autocast, 1,500 iterations. The GPU image
# has neither scikit-image nor the Debian Fashion-MNIST files, so build the set here first (45 s,
# 34 MB) and carry data/scenes256 along; the dataset then finds it built and reads it:
#   python -c "from mambazoo.data.scenes import build_composite_scenes as b; b('data/scenes256', num_train=1000, num_val=200, size=256)"
#   python tools/train.py configs/vim_upernet_scenes.py --work-dir work_dirs/scenes_gpu --cfg-options \
#     train_dataloader.dataset.data_root=data/scenes256 val_dataloader.dataset.data_root=data/scenes256 \
#     test_dataloader.dataset.data_root=data/scenes256 train_dataloader.dataset.build.size=256 \
#     val_dataloader.dataset.build.size=256 test_dataloader.dataset.build.size=256 \
#     train_dataloader.dataset.build.num_train=1000 val_dataloader.dataset.build.num_train=1000 \
#     test_dataloader.dataset.build.num_train=1000 train_dataloader.dataset.build.num_val=200 \
#     val_dataloader.dataset.build.num_val=200 test_dataloader.dataset.build.num_val=200 \
#     train_dataloader.dataset.pipeline.2.scale="(1024,256)" train_dataloader.dataset.pipeline.3.crop_size="(256,256)" \
#     val_dataloader.dataset.pipeline.1.scale="(1024,256)" test_dataloader.dataset.pipeline.1.scale="(1024,256)" \
#     model.data_preprocessor.size="(256,256)" model.backbone.model_name=vim_tiny model.backbone.depth=24 \
#     model.backbone.patch_size=16 model.backbone.embed_dim=192 model.backbone.d_state=16 \
#     model.backbone.img_size=256 model.backbone.out_indices="(5,11,17,23)" model.backbone.out_channels=192 \
#     model.decode_head.in_channels="[192,192,192,192]" model.decode_head.channels=192 \
#     model.auxiliary_head.in_channels=192 model.auxiliary_head.channels=256 train_dataloader.batch_size=16 \
#     train_dataloader.num_workers=8 val_dataloader.num_workers=4 test_dataloader.num_workers=4 \
#     optim_wrapper.type=AutocastOptimWrapper optim_wrapper.dtype=bfloat16 optim_wrapper.optimizer.lr=1e-3 \
#     train_cfg.max_iters=1500 train_cfg.val_interval=500 default_hooks.checkpoint.interval=500 \
#     default_hooks.logger.interval=50 param_scheduler.0.end=100 param_scheduler.1.begin=100 \
#     param_scheduler.1.end=1500 torch_num_threads=0
_base_ = ["_base_/upernet_vim.py"]

data_root = "data/scenes"  # gitignored; built on first use
scene_build = dict(num_train=300, num_val=100, size=128, seed=0, fashion_mnist_root="data")
crop_size = (96, 96)
num_classes = 13
max_iters = 400
val_interval = 200

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        model_name="test_vim",
        depth=4,
        patch_size=8,
        embed_dim=64,
        d_state=8,
        img_size=crop_size[0],  # nominal pos_embed grid; other sizes are resampled on the fly
        out_indices=(0, 1, 2, 3),  # one tap per pyramid level, as the official recipe's 5/11/17/23
        out_channels=64,
    ),
    decode_head=dict(in_channels=[64, 64, 64, 64], num_classes=num_classes, channels=64, norm="BN"),
    auxiliary_head=dict(in_channels=64, num_classes=num_classes, channels=64, norm="BN"),
    test_cfg=dict(mode="whole"),
)

train_pipeline = [
    dict(type="LoadSegImage"),
    dict(type="LoadSegAnnotations"),  # reduce_zero_label from the dataset
    dict(type="SegRandomResize", scale=(512, 128), ratio_range=(0.5, 2.0)),  # ADE20k's (2048, 512) / 4
    dict(type="SegRandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="SegRandomFlip", prob=0.5),
    dict(type="SegPhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadSegImage"),
    dict(type="SegResize", scale=(512, 128), keep_ratio=True),
    dict(type="LoadSegAnnotations"),  # after the resize: scored at the original size
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        type="CompositeScenesDataset", data_root=data_root, split="training", build=scene_build,
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        type="CompositeScenesDataset", data_root=data_root, split="validation", build=scene_build,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader

train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
# From scratch: a larger lr than the official fine-tuning recipe, no layer decay.
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(lr=2e-3), clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=50, end=max_iters),
]

default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=val_interval, max_keep_ckpts=2))
log_processor = dict(window_size=20)
env_cfg = dict(cudnn_benchmark=False)
torch_num_threads = 1  # one core for the model, one for the data worker (see vim_fashion_mnist.py)
