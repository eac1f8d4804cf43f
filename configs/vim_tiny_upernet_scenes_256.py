# One-GPU version of configs/vim_upernet_scenes.py: the real vim_tiny (24 blocks, taps 5/11/17/23
# like the official recipe) with UperNet + auxiliary FCN on 256 px composite scenes, bf16 autocast,
# batch 16, 1,500 iterations (~2 min on one H200). The GPU image has neither scikit-image nor the
# Debian Fashion-MNIST files, so build the set on a CPU machine first and carry data/scenes256:
#   python -c "from mambazoo.data.scenes import build_composite_scenes as b; b('data/scenes256', num_train=600, num_val=100, size=256)"
#   python tools/train.py configs/vim_tiny_upernet_scenes_256.py
_base_ = ["vim_upernet_scenes.py"]

data_root = "data/scenes256"
scene_build = dict(num_train=600, num_val=100, size=256, seed=0, fashion_mnist_root="data")
crop_size = (256, 256)
max_iters = 1500
val_interval = 500
embed_dim = 192

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        model_name="vim_tiny", depth=24, patch_size=16, embed_dim=embed_dim, d_state=16, img_size=crop_size[0],
        out_indices=(5, 11, 17, 23), out_channels=embed_dim,
    ),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim),  # official: 192
    auxiliary_head=dict(in_channels=embed_dim, channels=256),
)
train_pipeline = [
    dict(type="LoadSegImage"),
    dict(type="LoadSegAnnotations"),
    dict(type="SegRandomResize", scale=(1024, 256), ratio_range=(0.5, 2.0)),  # ADE20k's (2048, 512) / 2
    dict(type="SegRandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="SegRandomFlip", prob=0.5),
    dict(type="SegPhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadSegImage"),
    dict(type="SegResize", scale=(1024, 256), keep_ratio=True),
    dict(type="LoadSegAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=16, num_workers=8,
    dataset=dict(data_root=data_root, build=scene_build, pipeline=train_pipeline),
)
val_dataloader = dict(
    num_workers=4,
    dataset=dict(data_root=data_root, build=scene_build, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
optim_wrapper = dict(type="AutocastOptimWrapper", dtype="bfloat16", optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=100, end=max_iters),
]
default_hooks = dict(
    logger=dict(interval=50), checkpoint=dict(interval=val_interval),
)
torch_num_threads = 0  # unset: torch's default on the GPU host
