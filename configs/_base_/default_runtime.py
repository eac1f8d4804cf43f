# Runtime shared by the training configs: mmengine's Runner with the zoo's hooks.
# Logs: console lines with ETA, a tqdm bar on terminals, scalars as JSON (<work_dir>/<timestamp>/
# vis_data/scalars.json, LocalVisBackend) and TensorBoard events (same folder, TensorboardVisBackend:
# `tensorboard --logdir work_dirs`), loss/lr/metric curves as curves.png + curves.json.
custom_imports = dict(imports=["mambazoo.data", "mambazoo.engine"], allow_failed_imports=False)
default_scope = "mmengine"

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # epoch_N.pth written atomically (temp file + fsync + rename); keep >= 2 (see checkpoint.py)
    checkpoint=dict(type="AtomicCheckpointHook", interval=1, max_keep_ckpts=2),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
# NonFiniteLossHook: a NaN/inf loss stops the run before the poisoned weights are saved.
# EpochSeedHook: each epoch's RNG streams (augmentation, Mixup, drop path) depend only on (seed,
# epoch), so --resume continues exactly. ThroughputHook: img/s and peak GPU memory at the end.
custom_hooks = [
    dict(type="NonFiniteLossHook"),
    dict(type="EpochSeedHook"),
    dict(type="TrainingCurvesHook"),
    dict(type="ThroughputHook"),
    dict(type="ProgressBarHook"),
]
log_processor = dict(by_epoch=True, window_size=50)
visualizer = dict(
    type="Visualizer",
    vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")],
)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),  # tools/train.py switches to gloo on CPU-only machines
)
# Under --launcher pytorch the model is wrapped in DDP (mmengine's default, broadcast_buffers=False).
# FSDP instead (mmengine's MMFullyShardedDataParallel around torch's FullyShardedDataParallel, every
# parameter sharded across the ranks; with fp16 also pass optim_wrapper.use_fsdp=True for the sharded
# grad scaler):
#   torchrun --nproc-per-node 8 tools/train.py CONFIG --launcher pytorch \
#       --cfg-options model_wrapper_cfg.type=MMFullyShardedDataParallel
launcher = "none"
log_level = "INFO"
randomness = dict(seed=0)
load_from = None
resume = False
