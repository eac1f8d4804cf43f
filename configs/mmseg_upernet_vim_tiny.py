# UperNet on Vim-Ti, ADE20K 512x512, 160k iterations, for mmsegmentation 1.x.
#
# mmseg cannot be installed next to torch 2.14 (mmcv has no wheels), so this file is written for
# an environment that has mmseg 1.x; here it is only loaded and its backbone + neck built
# (tests/downstream/test_openmmlab.py). Run it there with mmseg's own tools/train.py.
#
# Backbone: four taps (blocks 6, 12, 18, 24, through the final RMSNorm), each made into one
# pyramid level at strides 4, 8, 16, 32 by ViTDet's simple feature pyramid (as BEiT/ViT UperNet
# configs do with their multi-level neck). `custom_imports` registers VimBackbone /
# SimpleFeaturePyramid in mmengine's root MODELS registry, which mmseg's MODELS registry falls
# back to for unscoped type names.
_base_ = ["_base_/openmmlab_vim_optim.py"]
custom_imports = dict(imports=["mambazoo.downstream"], allow_failed_imports=False)
default_scope = "mmseg"

crop_size = (512, 512)
# Official Vim-Ti ImageNet checkpoint (hustvl/Vim-tiny-midclstok, file vim_t_midclstok_76p1acc.pth);
# its 14x14 pos_embed is resampled once to the 32x32 grid of `img_size` when it is loaded.
vim_checkpoint = "checkpoints/vim_t_midclstok_76p1acc.pth"
embed_dim = 192
num_classes = 150
norm_cfg = dict(type="SyncBN", requires_grad=True)

model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=crop_size,
    ),
    pretrained=None,  # the backbone loads its own checkpoint (below)
    backbone=dict(
        type="VimBackbone",
        model_name="vim_tiny",
        img_size=crop_size[0],  # nominal size of pos_embed; other sizes are resampled on the fly
        out_indices=(5, 11, 17, 23),
        norm=True,
        drop_path_rate=0.1,
        pretrained=vim_checkpoint,
    ),
    neck=dict(
        type="SimpleFeaturePyramid",
        in_channels=embed_dim,
        out_channels=embed_dim,
        in_stride=16,
        strides=(4, 8, 16, 32),  # level i from tap i
        top_block_pool=False,
    ),
    decode_head=dict(
        type="UPerHead",
        in_channels=[embed_dim] * 4,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=embed_dim,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),
)

dataset_type = "ADE20KDataset"
data_root = "data/ade/ADEChallengeData2016"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator

# Schedule: 160k iterations at batch 16 (8 GPUs x 2), linear warmup then poly decay.
max_iters = 160000
interval = 16000
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=interval)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
# No weight decay on the SSM parameters, embeddings and norms: configs/_base_/openmmlab_vim_optim.py
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
)

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=interval),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
tta_model = dict(type="SegTTAModel")
