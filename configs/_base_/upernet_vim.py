# What every UperNet-on-Vim segmentation config shares (configs/vim_tiny_upernet_ade20k.py, the
# official recipe; configs/vim_upernet_scenes.py, its scaled-down copy): the segmentor with a
# ViTDet simple pyramid under UperNet + an auxiliary FCN on stride 16, mIoU, an iteration-based
# loop and runtime. Each config adds its backbone size, classes, data, pipelines and schedule.
_base_ = ["default_runtime.py"]

model = dict(
    type="SegEncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],  # ImageNet, 0-255 scale
        std=[58.395, 57.12, 57.375],
        pad_val=0,
        seg_pad_val=255,
    ),
    backbone=dict(type="VimPyramidBackbone", strides=(4, 8, 16, 32), top_block_pool=False),
    decode_head=dict(type="UperNetHead", pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, loss_weight=1.0),
    auxiliary_head=dict(
        type="FCNHead", in_index=2, num_convs=1, dropout_ratio=0.1, loss_weight=0.4  # in_index 2: stride 16
    ),
)

train_dataloader = dict(persistent_workers=True, sampler=dict(type="InfiniteSampler", shuffle=True))
val_dataloader = dict(persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric")
test_evaluator = val_evaluator

train_cfg = dict(type="IterBasedTrainLoop")
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

# The official recipe's optimizer (AdamW, wd 0.05); timm's factory keeps A_log / D / pos_embed /
# norms / biases out of weight decay.
optim_wrapper = dict(
    constructor="TimmOptimWrapperConstructor",
    optimizer=dict(type="adamw", betas=(0.9, 0.999), weight_decay=0.05),
)

# Iteration-based logging and checkpoints (default_runtime.py counts epochs); no EpochSeedHook.
default_hooks = dict(
    logger=dict(log_metric_by_epoch=False),  # lines carry the ETA
    checkpoint=dict(by_epoch=False),
)
custom_hooks = [
    dict(type="NonFiniteLossHook"),
    dict(type="TrainingCurvesHook"),
    dict(type="ProgressBarHook"),
    dict(type="ThroughputHook"),
]
log_processor = dict(by_epoch=False)
visualizer = dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend")])
