"""Vim as a timm model: registration, parameter counts, the timm model API, official layout.

Everything runs the tiny ``test_vim`` variant on CPU; the full-size variants are only built on
the meta device (parameter counts and pretrained cfgs).
"""
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import mambazoo  # noqa: F401  (registers the models)
from mambazoo.models.vim import Vim

# Counted from the official architecture (hustvl/Vim models_mamba.py + its mamba_simple.py
# "v2" mixer) per block: in_proj 4d^2, out_proj 2d^2, per direction conv 5*(2d), x_proj
# 2d*(r+32), dt_proj (r+1)*2d, A_log 32d, D 2d, plus RMSNorm d; outside the blocks: patch conv
# 768d+d, cls d, pos_embed (P+1)d, norm_f d, head 1000d+1000. Vim-Ti 7.15 M / S 25.8 M /
# B 97.6 M as published ("7M / 26M / 98M").
PARAM_COUNTS = {
    "vim_tiny": 7_148_008,
    "vim_tiny_stride8": 7_250_344,
    "vim_small": 25_796_584,
    "vim_small_stride8": 26_001_256,
    "vim_base": 97_598_440,
    "test_vim": 147_816,
}
TEST_TOKENS = 4 * 4 + 1  # 32 px, patch 8: 16 patches + the class token
TEST_DIM = 64


def _create(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("test_vim", **kwargs).eval()


def _images(batch=2, chans=3):
    return torch.randn(batch, chans, 32, 32, generator=torch.Generator().manual_seed(1))


def test_registered():
    assert set(PARAM_COUNTS) <= set(timm.list_models("*vim*"))


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_and_pretrained_cfg(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]
    cfg = model.pretrained_cfg
    assert cfg["mean"] == IMAGENET_DEFAULT_MEAN and cfg["std"] == IMAGENET_DEFAULT_STD
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head"
    assert cfg["license"] == "apache-2.0"
    assert cfg["input_size"] == ((3, 32, 32) if name == "test_vim" else (3, 224, 224))


def test_stride8_grid():
    with torch.device("meta"):
        model = timm.create_model("vim_small_stride8")
    assert model.patch_embed.grid_size == (27, 27)
    assert model.pos_embed.shape == (1, 27 * 27 + 1, 384)


@pytest.mark.parametrize("batch", [1, 2])
def test_forward_shapes(batch):
    model = _create()
    x = _images(batch)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (batch, TEST_TOKENS, TEST_DIM)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (batch, TEST_DIM)
        torch.testing.assert_close(pre_logits, features[:, 16 // 2])  # the middle class token
        logits = model(x)
    assert logits.shape == (batch, 1000)
    torch.testing.assert_close(logits, model.head(pre_logits))


def test_matches_official_forward():
    """Independent float64 rewrite of VisionMamba.forward (fused add+norm path, eval mode)."""
    model = _create().double()
    x = _images().double()

    def rms_norm(t, weight, eps=1e-5):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * weight

    with torch.no_grad():
        tokens = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=8)
        tokens = tokens.flatten(2).transpose(1, 2)
        middle = tokens.shape[1] // 2
        cls = model.cls_token.expand(x.shape[0], -1, -1)
        hidden = torch.cat([tokens[:, :middle], cls, tokens[:, middle:]], dim=1) + model.pos_embed
        residual = None
        for layer in model.layers:
            residual = hidden if residual is None else residual + hidden
            hidden = layer.mixer(rms_norm(residual, layer.norm.weight))
        out = rms_norm(residual + hidden, model.norm_f.weight)
        expected = out[:, middle] @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(model(x), expected)


def test_global_pool_and_reset_classifier():
    model = _create()
    x = _images()
    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(0)
        assert model.get_classifier().__class__ is torch.nn.Identity
        torch.testing.assert_close(model(x), features[:, 8])
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.num_classes == 5
        model.reset_classifier(5, global_pool="avg")
        patch_mean = torch.cat([features[:, :8], features[:, 9:]], dim=1).mean(1)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), patch_mean)
        model.reset_classifier(5, global_pool="")
        assert model.forward_head(features).shape == (2, TEST_TOKENS, 5)

    avg_model = _create(global_pool="avg", num_classes=0)
    avg_model.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    with torch.no_grad():
        torch.testing.assert_close(avg_model(x), patch_mean)


def test_in_chans_and_num_classes():
    model = _create(in_chans=1, num_classes=0)
    with torch.no_grad():
        out = model(_images(chans=1))
    assert out.shape == (2, TEST_DIM) and model.num_features == model.head_hidden_size == TEST_DIM
    assert model.num_prefix_tokens == 1


def test_overlapping_patches():
    model = Vim(img_size=32, patch_size=8, stride=4, embed_dim=32, depth=1, d_state=4, num_classes=3)
    assert model.patch_embed.grid_size == (7, 7)
    with torch.no_grad():
        assert model.forward_features(_images()).shape == (2, 50, 32)


def _loss_and_grads(model, x):
    torch.manual_seed(123)  # same stochastic-depth draws in both runs
    loss = model(x).square().mean()
    model.zero_grad()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_backward_reaches_every_parameter():
    model = _create(drop_path_rate=0.0).train()
    _, grads = _loss_and_grads(model, _images())
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name


def test_grad_checkpointing_same_result():
    model = _create(drop_path_rate=0.2).train()
    x = _images()
    loss, grads = _loss_and_grads(model, x)
    model.set_grad_checkpointing(True)
    loss_ckpt, grads_ckpt = _loss_and_grads(model, x)
    torch.testing.assert_close(loss_ckpt, loss)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], msg=name)


def test_no_weight_decay_names():
    model = _create()
    params = dict(model.named_parameters())
    names = model.no_weight_decay()
    assert names <= set(params)
    assert {"pos_embed", "cls_token"} <= names
    for i in range(len(model.layers)):
        for local in ("A_log", "A_b_log", "D", "D_b"):
            assert f"layers.{i}.mixer.{local}" in names


def test_group_matcher_covers_every_parameter():
    model = _create()
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))


def test_official_state_dict_keys():
    """The key layout of the official checkpoints (FACTS.md section 3)."""
    model = _create()
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "head.weight", "head.bias", "norm_f.weight"}
    mixer_keys = ["A_log", "D", "A_b_log", "D_b", "in_proj.weight", "conv1d.weight", "conv1d.bias",
                  "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "conv1d_b.weight", "conv1d_b.bias",
                  "x_proj_b.weight", "dt_proj_b.weight", "dt_proj_b.bias", "out_proj.weight"]
    for i in range(2):
        expected |= {f"layers.{i}.mixer.{k}" for k in mixer_keys} | {f"layers.{i}.norm.weight"}
    assert set(model.state_dict()) == expected


def test_import_is_cheap():
    """``import mambazoo`` adds no Triton module, makes no CUDA call, and works without Triton.

    ``import timm`` already pulls in ``triton`` through torchvision -> torch._dynamo, so the
    check is against what timm imported, plus a run with Triton made unimportable.
    """
    code = textwrap.dedent("""
        import sys
        import timm, torch
        before = set(sys.modules)
        import mambazoo
        added = [name for name in set(sys.modules) - before if "triton" in name]
        assert not added, added
        assert not torch.cuda.is_initialized()
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)
    no_triton = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # any "import triton" now raises ImportError
        import torch, timm, mambazoo
        model = timm.create_model("test_vim")
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
        assert not torch.cuda.is_initialized()
    """)
    subprocess.run([sys.executable, "-c", no_triton], check=True, timeout=120, env=env)


def test_fx_traceable_with_mixer_leaves():
    """timm's FX feature extraction traces the model, the mixers staying leaf modules."""
    from timm.models._features_fx import create_feature_extractor

    model = _create()
    extractor = create_feature_extractor(model, {"layers.1.mixer": "mixer", "norm_f": "tokens"})
    x = _images()
    with torch.no_grad():
        out = extractor(x)
        torch.testing.assert_close(out["tokens"], model.forward_features(x))
    assert out["mixer"].shape == (2, TEST_TOKENS, TEST_DIM)
