# Vision Mamba ImageNet-1k training from scratch, mirroring the official hustvl/Vim recipe.
# Sources (github.com/hustvl/Vim): vim/main.py argument defaults (a DeiT fork) and the launch scripts
# vim/scripts/pt-vim-t.sh and pt-vim-s.sh (8 GPUs each). The size configs (vim_{tiny,small,base}_in1k.py)
# inherit this file and state only what differs. Data: ImageNet in folder layout,
#   data/imagenet/train/<wnid>/*.JPEG, data/imagenet/val/<wnid>/*.JPEG
# (or --cfg-options train_dataloader.dataset.name=... for the other map-style readers of
# timm.data.create_dataset). Launch as the official scripts do, on 8 GPUs:
#   torchrun --nproc-per-node 8 tools/train.py configs/vim_tiny_in1k.py --launcher pytorch
_base_ = ["default_runtime.py"]

data_root = "data/imagenet"
max_epochs = 300  # main.py --epochs default 300
warmup_epochs = 5  # main.py --warmup-epochs default 5

model = dict(
    type="TimmClassifier",
    model_name="vim_tiny",
    num_classes=1000,
    drop_rate=0.0,  # main.py --drop default 0.0
    drop_path_rate=0.1,  # main.py --drop-path default 0.1 (pt-vim-t.sh keeps it; sizes override)
    label_smoothing=0.1,  # main.py --smoothing 0.1 (applied to the Mixup targets)
    # main.py --mixup 0.8 --cutmix 1.0 --mixup-prob 1.0 --mixup-switch-prob 0.5 --mixup-mode batch;
    # with mixup on, the loss is SoftTargetCrossEntropy (main.py)
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5, mode="batch"),
)

# Preprocessing: input size, bicubic, ImageNet mean/std and crop_pct 0.875 are resolved from the
# model's pretrained cfg (mambazoo.data.create_model_transform; the same for all Vim sizes, see
# FACTS.md section 3; main.py --eval-crop-ratio 0.875, --train-interpolation bicubic).
train_pipeline = dict(
    model="vim_tiny",
    auto_augment="rand-m9-mstd0.5-inc1",  # main.py --aa
    color_jitter=0.3,  # main.py --color-jitter (timm ignores it when auto_augment is set)
    re_prob=0.25,  # main.py --reprob
    re_mode="pixel",  # main.py --remode
    re_count=1,  # main.py --recount
)
eval_pipeline = dict(model="vim_tiny")

train_dataloader = dict(
    batch_size=128,  # per GPU; pt-vim-t.sh --batch-size 128 on 8 GPUs
    num_workers=10,  # main.py --num_workers default 10 (the scripts pass 25)
    persistent_workers=True,
    pin_memory=True,  # main.py --pin-mem default
    drop_last=True,  # main.py train loader; Mixup needs even batches
    # main.py --repeated-aug (default on): DeiT's RASampler, 3 repeats, in distributed runs
    sampler=dict(type="RepeatAugSampler", shuffle=True, num_repeats=3),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="TimmImageDataset", root=data_root, split="train", transform=train_pipeline),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="TimmImageDataset", root=data_root, split="val", transform=eval_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="Accuracy", topk=(1, 5))
test_evaluator = val_evaluator

train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# main.py: lr = args.lr * batch_size * world_size / 512 (linear scaling, unless --unscale-lr);
# mmengine's auto_scale_lr applies exactly that to every parameter group at the start of training.
# (Gradient accumulation, optim_wrapper.accumulative_counts, is not counted by it: scale lr yourself.)
auto_scale_lr = dict(enable=True, base_batch_size=512)

# main.py: timm create_optimizer(args): --opt adamw, --opt-eps 1e-8, --opt-betas None (timm's
# (0.9, 0.999)), --weight-decay 0.05, no weight decay on 1-D parameters and no_weight_decay()
# names; --clip-grad None (no clip_grad key; add e.g. optim_wrapper.clip_grad.max_norm=1.0). The official scripts pass --no_amp (fp32); for bf16 autocast:
#   --cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.dtype=bfloat16
# (the selective-scan state stays fp32 under autocast).
optim_wrapper = dict(
    type="OptimWrapper",
    constructor="TimmOptimWrapperConstructor",
    optimizer=dict(type="adamw", lr=5e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),  # --lr default 5e-4
)
# main.py --sched cosine --warmup-lr 1e-6 --min-lr 1e-5 --warmup-epochs 5 (timm CosineLRScheduler,
# stepped per epoch there; here per iteration). start_factor = warmup-lr / scaled lr at 8x128
# (1e-6 / 1e-3); eta_min is absolute.
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type="CosineAnnealingLR", eta_min=1e-5, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
]

# main.py --model-ema (default on) --model-ema-decay 0.99996, updated every iteration (engine.py).
# mmengine's momentum is 1 - decay. Validation/test use the EMA weights; checkpoints hold both.
custom_hooks = [
    dict(type="NonFiniteLossHook"),
    dict(type="EpochSeedHook"),
    dict(type="EMAHook", ema_type="ExponentialMovingAverage", momentum=4e-5, update_buffers=True, priority=49),
    dict(type="TrainingCurvesHook"),
    dict(type="ThroughputHook"),
    dict(type="ProgressBarHook"),
]
default_hooks = dict(logger=dict(interval=100), checkpoint=dict(interval=1, max_keep_ckpts=3))
log_processor = dict(window_size=100)
randomness = dict(seed=0, diff_rank_seed=True)  # main.py: seed = args.seed + rank
