# GPU run (one H200, a few minutes): vim_tiny trained from scratch on Fashion-MNIST upsampled to
# 224x224 RGB (the grey image in 3 channels, bicubic), bf16 autocast, batch 128. Trains on 55,000
# images, validates on the 5,000 held back every epoch, tests on the official 10,000; prints test
# accuracy, training img/s (ThroughputHook; first 20 iterations of each epoch excluded, they hold
# the Triton kernels' compilation) and peak GPU memory, all also in <work_dir>/test_metrics.json.
#   python tools/train.py configs/vim_tiny_fashion_mnist_224.py
# The same run for DeiT-S (timm's deit_small_patch16_224, same tool, data, schedule and precision):
#   python tools/train.py configs/vim_tiny_fashion_mnist_224.py --work-dir work_dirs/deit_small_fashion_mnist_224 \
#       --cfg-options model.model_name=deit_small_patch16_224
# From pretrained ImageNet weights instead of scratch (a local official or converted file, timm loads
# it, the 1000-class head is dropped): add
#       model.pretrained=True model.pretrained_cfg_overlay.file=/path/to/vim_t_midclstok_76p1acc.pth
# Shorter/longer: train_cfg.max_epochs=N (the schedule follows), train_dataloader.dataset.num_samples=N.
# Differs from configs/vim_fashion_mnist.py (the CPU run) only where written below.
_base_ = ["vim_fashion_mnist.py"]

max_epochs = 2
num_workers = 12  # of the 16 CPU cores: PIL resize to 224 + crop/flip per image keeps up with the GPU

model = dict(
    _delete_=True,
    type="TimmClassifier",
    model_name="vim_tiny",
    num_classes=10,
    drop_path_rate=0.05,
    label_smoothing=0.1,
)

train_transform = dict(
    input_size=(3, 224, 224), interpolation="bicubic", is_training=True, scale=(0.6, 1.0), ratio=(0.75, 1.33)
)
eval_transform = dict(input_size=(3, 224, 224), interpolation="bicubic")
train_dataloader = dict(
    num_workers=num_workers, pin_memory=True, drop_last=True,
    dataset=dict(channels=3, transform=train_transform),
)
val_dataloader = dict(
    num_workers=num_workers, pin_memory=True, dataset=dict(channels=3, transform=eval_transform),
)
test_dataloader = dict(
    num_workers=num_workers, pin_memory=True, dataset=dict(channels=3, transform=eval_transform),
)
val_evaluator = dict(topk=(1, 5))
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=max_epochs)

# bf16 autocast through mmengine's AmpOptimWrapper (AutocastOptimWrapper is that class on CUDA, and
# also builds on CPU-only machines); the scan keeps its state in fp32.
optim_wrapper = dict(type="AutocastOptimWrapper", dtype="bfloat16", optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type="CosineAnnealingLR", eta_min=1e-5, by_epoch=True, begin=0, convert_to_iter_based=True),
]
custom_hooks = [
    dict(type="NonFiniteLossHook"),
    dict(type="EpochSeedHook"),
    dict(type="TrainingCurvesHook"),
    dict(type="ThroughputHook", warmup=20),
    dict(type="ProgressBarHook"),
]
env_cfg = dict(cudnn_benchmark=True)
torch_num_threads = 0  # unset: torch's default on the GPU host
# JSON scalars only: the GPU image may lack the tensorboard package (add dict(type="TensorboardVisBackend")
# where it is installed, as configs/_base_/default_runtime.py does)
visualizer = dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend")], _delete_=True)
