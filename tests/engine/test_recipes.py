"""The ImageNet recipe configs carry the official hustvl/Vim values (vim/main.py defaults and
vim/scripts/pt-vim-{t,s}.sh, ft-vim-t.sh), build into the optimizer/schedule they describe, and the
pieces they use (repeated-augmentation sampler, CPU autocast wrapper, FSDP wrapper) work."""
import os
import socket
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DATA_SAMPLERS, MODEL_WRAPPERS, MODELS, OPTIM_WRAPPERS, OPTIM_WRAPPER_CONSTRUCTORS

import mambazoo.data  # noqa: F401  (registers the sampler and datasets)
import mambazoo.engine  # noqa: F401
from mambazoo.data import RepeatAugSampler, resolve_model_transform_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = dict(model_name="test_vim", num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=2, d_state=4, expand=1)


@pytest.mark.parametrize(
    "name, model_name, drop_path, batch, lr",
    [
        ("vim_tiny_in1k", "vim_tiny", 0.1, 128, 5e-4),  # pt-vim-t.sh: --batch-size 128, main.py defaults
        ("vim_small_in1k", "vim_small", 0.05, 64, 1e-3),  # pt-vim-s.sh: --batch-size 64 --drop-path 0.05 --lr 1e-3
        ("vim_base_in1k", "vim_base", 0.1, 128, 5e-4),  # no official script: main.py defaults as for Ti
        ("vim_tiny_ft_in1k", "vim_tiny_stride8", 0.0, 128, 5e-6),  # ft-vim-t.sh
    ],
)
def test_recipe_values(name, model_name, drop_path, batch, lr):
    cfg = Config.fromfile(str(CONFIGS / f"{name}.py"))
    assert (cfg.model.model_name, cfg.model.drop_path_rate) == (model_name, drop_path)
    assert (cfg.train_dataloader.batch_size, cfg.optim_wrapper.optimizer.lr) == (batch, lr)
    # shared by all: main.py --smoothing 0.1 --mixup 0.8 --cutmix 1.0, AdamW, linear lr scaling to 512,
    # EMA decay 0.99996, RandAugment rand-m9-mstd0.5-inc1, reprob 0.25, repeated augmentation, top-1/5
    assert cfg.model.label_smoothing == 0.1
    assert (cfg.model.mixup.mixup_alpha, cfg.model.mixup.cutmix_alpha) == (0.8, 1.0)
    assert cfg.optim_wrapper.optimizer.type == "adamw"
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=512)
    ema = [h for h in cfg.custom_hooks if h.type == "EMAHook"]
    assert len(ema) == 1 and ema[0].momentum == pytest.approx(1 - 0.99996)
    transform = cfg.train_dataloader.dataset.transform
    assert (transform.auto_augment, transform.re_prob, transform.re_mode) == ("rand-m9-mstd0.5-inc1", 0.25, "pixel")
    assert cfg.train_dataloader.sampler.type == "RepeatAugSampler" and cfg.train_dataloader.drop_last
    assert tuple(cfg.val_evaluator.topk) == (1, 5)
    expected_epochs = 30 if name.endswith("ft_in1k") else 300
    assert cfg.train_cfg.max_epochs == expected_epochs == cfg.param_scheduler[1].end
    if name.endswith("ft_in1k"):
        assert cfg.optim_wrapper.optimizer.weight_decay == 1e-8 and cfg.model.pretrained
        assert cfg.model.pretrained_cfg_overlay.file.endswith(".pth")
    else:
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
        assert cfg.param_scheduler[0].end == 5  # main.py --warmup-epochs 5


def test_vim_preprocessing_is_resolved_from_the_model():
    # FACTS.md section 3: ImageNet mean/std, bicubic, crop 0.875, 224 px; the same for all sizes
    for name in ("vim_tiny", "vim_small", "vim_base"):
        options = resolve_model_transform_config(name)
        assert options["input_size"] == (3, 224, 224) and options["interpolation"] == "bicubic"
        assert options["crop_pct"] == 0.875 and options["mean"] == (0.485, 0.456, 0.406)
    assert resolve_model_transform_config("deit_small_patch16_224")["crop_pct"] == 0.9
    assert resolve_model_transform_config("vim_tiny", input_size=112, crop_pct=1.0)["input_size"] == (3, 112, 112)
    with pytest.raises(ValueError, match="no_such_model"):
        resolve_model_transform_config("no_such_model")


def test_recipe_optimizer_and_schedule_build():
    cfg = Config.fromfile(str(CONFIGS / "vim_small_in1k.py"))
    model = MODELS.build({**cfg.model, **TINY})
    wrapper = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(type=cfg.optim_wrapper.constructor, optim_wrapper_cfg={k: v for k, v in cfg.optim_wrapper.items()
                                                                   if k != "constructor"})
    )(model)
    optimizer = wrapper.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}


def test_repeat_aug_sampler():
    single = RepeatAugSampler(list(range(300)), seed=1)
    order = list(single)
    assert sorted(order) == list(range(300))  # one process: a plain shuffle, as main.py without DDP
    single.set_epoch(1)
    assert list(single) != order
    single.set_epoch(0)
    assert list(single) == order  # depends only on seed + epoch
    assert DATA_SAMPLERS.get("RepeatAugSampler") is RepeatAugSampler


def test_cpu_autocast_wrapper_refuses_fp16():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if torch.cuda.is_available():
        pytest.skip("on CUDA the wrapper is mmengine's AmpOptimWrapper, which accepts float16")
    with pytest.raises(ValueError, match="dtype must be 'bfloat16'"):
        OPTIM_WRAPPERS.build(dict(type="AutocastOptimWrapper", dtype="float16", optimizer=optimizer))
    wrapper = OPTIM_WRAPPERS.build(dict(type="AutocastOptimWrapper", dtype="bfloat16", optimizer=optimizer))
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 2))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().sum())
    assert wrapper.state_dict()["loss_scaler"] == {}


# one process: FSDP says it falls back to NO_SHARD, which is expected here
@pytest.mark.filterwarnings("ignore:FSDP is switching to use:UserWarning")
def test_fsdp_switch_builds_and_trains_a_step():
    """model_wrapper_cfg.type=MMFullyShardedDataParallel: mmengine's FSDP wrapper around the
    classifier, our optimizer constructor on it, one train step (one gloo process on CPU)."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dist.init_process_group("gloo")
    try:
        torch.manual_seed(0)
        model = MODELS.build(dict(type="TimmClassifier", **TINY))
        fsdp = MODEL_WRAPPERS.build(dict(type="MMFullyShardedDataParallel", module=model, device_id=torch.device("cpu")))
        wrapper = OPTIM_WRAPPER_CONSTRUCTORS.build(
            dict(type="TimmOptimWrapperConstructor",
                 optim_wrapper_cfg=dict(optimizer=dict(type="adamw", lr=1e-3, weight_decay=0.05)))
        )(fsdp)
        before = [p.detach().clone() for p in fsdp.parameters()]
        losses = fsdp.train_step((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])), wrapper)
        assert torch.isfinite(losses["loss"])
        assert any(not torch.equal(a, b) for a, b in zip(before, fsdp.parameters()))
    finally:
        dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_gpu_fashion_mnist_config_changes_only_model_input_precision_and_workers():
    # configs/vim_tiny_fashion_mnist_224.py inherits the CPU main job's config; what it must change
    # (and the split and schedule it must keep) resolved through mmengine's inheritance.
    cpu = Config.fromfile(str(CONFIGS / "vim_fashion_mnist.py"))
    gpu = Config.fromfile(str(CONFIGS / "vim_tiny_fashion_mnist_224.py"))
    assert dict(gpu.model) == dict(type="TimmClassifier", model_name="vim_tiny", num_classes=10, drop_path_rate=0.05,
                                   label_smoothing=0.1)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds, cpu_ds = gpu[loader].dataset, cpu[loader].dataset
        assert ds.channels == 3 and tuple(ds.transform.input_size) == (3, 224, 224), loader
        assert (ds.split, ds.get("start"), ds.get("num_samples")) == (cpu_ds.split, cpu_ds.get("start"),
                                                                     cpu_ds.get("num_samples")), loader
        assert gpu[loader].batch_size == cpu[loader].batch_size and gpu[loader].num_workers == 12
    assert (gpu.optim_wrapper.type, gpu.optim_wrapper.dtype) == ("AutocastOptimWrapper", "bfloat16")
    assert gpu.optim_wrapper.constructor == cpu.optim_wrapper.constructor == "TimmOptimWrapperConstructor"
    assert [h.type for h in gpu.visualizer.vis_backends] == ["LocalVisBackend"]
    assert "ThroughputHook" in [h.type for h in gpu.custom_hooks] and not gpu.get("torch_num_threads")
    assert gpu.train_cfg.max_epochs == 2 and gpu.env_cfg.cudnn_benchmark
