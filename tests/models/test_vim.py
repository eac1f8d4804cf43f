"""Vim as a timm model: registration, parameter counts, the timm model API, official layout.

Everything runs the tiny ``test_vim`` variant on CPU; the full-size variants are only built on
the meta device (parameter counts, pretrained cfgs, feature shapes). The float64 oracle in
``_vim_oracle.py`` is the official forward written independently of mambazoo.
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
from _vim_oracle import official_forward, official_tokens
from mambazoo.models.vim import Vim, checkpoint_filter_fn, resample_pos_embed

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
    "test_vim": 182_440,  # 3 blocks of 34,624
}
TEST_TOKENS = 4 * 4 + 1  # 32 px, patch 8: 16 patches + the class token
TEST_DIM = 64
TEST_DEPTH = 3
TEST_D_STATE = 8


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
    assert model.feature_info[0]["reduction"] == 8


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
    """The model against an independent float64 rewrite of VisionMamba.forward (eval mode)."""
    model = _create()
    x = _images()
    with torch.no_grad():
        expected = official_forward(model.state_dict(), x, d_state=TEST_D_STATE)
        torch.testing.assert_close(model(x).double(), expected, rtol=1e-4, atol=1e-4)
        # The kernels keep scan state in fp32 even for a float64 model, hence 1e-5, not 1e-7.
        model.double()
        torch.testing.assert_close(model(x.double()), expected, rtol=1e-5, atol=1e-5)


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
    for i in range(TEST_DEPTH):
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


# --- forward_intermediates / features_only -------------------------------------------------

def _without_middle(tokens):
    middle = (tokens.shape[1] - 1) // 2
    return torch.cat([tokens[:, :middle], tokens[:, middle + 1:]], dim=1), tokens[:, middle:middle + 1]


def _to_nchw(tokens, grid=(4, 4)):
    return tokens.reshape(tokens.shape[0], *grid, -1).permute(0, 3, 1, 2)


def test_forward_intermediates_are_block_outputs():
    """Each tap is the residual stream after that block's mixer output (float64 oracle), class
    token taken out of the middle; the final output is forward_features exactly.

    Tolerance 1e-5: the scans keep their state in fp32 even in a float64 model."""
    model = _create().double()
    x = _images().double()
    close = dict(rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        streams, final_tokens = official_tokens(model.state_dict(), x, d_state=TEST_D_STATE)
        final, taps = model.forward_intermediates(x)
        assert len(taps) == TEST_DEPTH
        for tap, stream in zip(taps, streams):
            patches, _ = _without_middle(stream)
            assert tap.shape == (2, TEST_DIM, 4, 4)
            torch.testing.assert_close(tap, _to_nchw(patches), **close)
        torch.testing.assert_close(final, final_tokens, **close)
        assert torch.equal(final, model.forward_features(x))

        pairs = model.forward_intermediates(x, indices=[0, -1], return_prefix_tokens=True, output_fmt="NLC",
                                            intermediates_only=True)
        for (patches, cls), stream in zip(pairs, (streams[0], streams[-1])):
            expected_patches, expected_cls = _without_middle(stream)
            torch.testing.assert_close(patches, expected_patches, **close)
            torch.testing.assert_close(cls, expected_cls, **close)

        normed = model.forward_intermediates(x, indices=2, norm=True, intermediates_only=True)
        for tap, stream in zip(normed, streams[1:]):
            weight = model.norm_f.weight
            expected = stream * torch.rsqrt(stream.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
            torch.testing.assert_close(tap, _to_nchw(_without_middle(expected)[0]), **close)


def test_forward_intermediates_stop_early_and_prune():
    model = _create()
    x = _images()
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(early[0], taps[1])
        model.prune_intermediate_layers([1], prune_norm=True)
        assert len(model.layers) == 2 and model.num_classes == 0 and model.global_pool == ""
        assert torch.equal(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], taps[1])
        # Without norm_f, forward_features ends at the tap (class token still in the middle).
        patches, _ = _without_middle(model.forward_features(x))
        torch.testing.assert_close(_to_nchw(patches), taps[1], rtol=0, atol=0)


def test_features_only():
    torch.manual_seed(0)
    model = timm.create_model("test_vim", features_only=True, out_indices=(0, 2)).eval()
    assert model.feature_info.channels() == [TEST_DIM, TEST_DIM]
    assert model.feature_info.reduction() == [8, 8]
    assert len(model.model.layers) == 3 and isinstance(model.model.norm_f, torch.nn.Identity)
    reference = _create()
    reference.load_state_dict(model.model.state_dict(), strict=False)
    x = _images()
    with torch.no_grad():
        features = model(x)
        expected = reference.forward_intermediates(x, indices=(0, 2), intermediates_only=True)
    assert [f.shape for f in features] == [(2, TEST_DIM, 4, 4)] * 2
    for feature, tap in zip(features, expected):
        torch.testing.assert_close(feature, tap)


def test_features_only_full_size_shapes():
    """Vim-S maps for a detector neck (the blocks Vim's own segmentation config taps)."""
    with torch.device("meta"):
        model = timm.create_model("vim_small", features_only=True, out_indices=(5, 11, 17, 23))
        features = model(torch.empty(1, 3, 224, 224))
    assert [tuple(f.shape) for f in features] == [(1, 384, 14, 14)] * 4
    assert model.feature_info.reduction() == [16] * 4


def test_features_only_grad_checkpointing_same_grads():
    x = _images()
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = timm.create_model("test_vim", features_only=True, drop_path_rate=0.1).train()
        model.model.set_grad_checkpointing(enable)  # FeatureGetterNet wraps the Vim as .model
        torch.manual_seed(1)
        sum(f.pow(2).mean() for f in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(g is not None for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


# --- input size ------------------------------------------------------------------------------

def test_resample_pos_embed_middle_class_row():
    pos_embed = torch.randn(1, 4 * 4 + 1, 8, dtype=torch.float64)
    resampled = resample_pos_embed(pos_embed, (6, 5), (4, 4))
    assert resampled.shape == (1, 6 * 5 + 1, 8)
    torch.testing.assert_close(resampled[:, 15], pos_embed[:, 8])  # class row, old and new middle
    grid = torch.cat([pos_embed[:, :8], pos_embed[:, 9:]], dim=1).reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid.float(), size=(6, 5), mode="bicubic", antialias=True)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 30, 8).double()
    torch.testing.assert_close(torch.cat([resampled[:, :15], resampled[:, 16:]], dim=1), expected)
    assert resample_pos_embed(pos_embed, (4, 4), (4, 4)) is pos_embed


def test_dynamic_img_size():
    model = _create(dynamic_img_size=True)
    fixed = _create()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), fixed(x), rtol=0, atol=0)
        big = torch.randn(2, 3, 48, 40)
        out, taps = model.forward_intermediates(big, indices=[-1])
        assert out.shape == (2, 6 * 5 + 1, TEST_DIM) and taps[0].shape == (2, TEST_DIM, 6, 5)
        # The same as a model built for 48x40 with the weights loaded through the filter.
        resized = _create(img_size=(48, 40))
        resized.load_state_dict(checkpoint_filter_fn(model.state_dict(), resized))
        torch.testing.assert_close(model(big), resized(big))
    with pytest.raises(AssertionError):
        fixed(big)


def test_dynamic_img_pad():
    model = _create(dynamic_img_size=True, dynamic_img_pad=True)
    x = torch.randn(2, 3, 30, 27)
    with torch.no_grad():
        out = model.forward_features(x)
        assert out.shape == (2, 4 * 4 + 1, TEST_DIM)
        torch.testing.assert_close(out, model.forward_features(F.pad(x, (0, 5, 0, 2))))
    assert model.patch_embed.dynamic_feat_size((30, 27)) == (4, 4)
    overlapping = Vim(img_size=30, patch_size=8, stride=4, dynamic_img_pad=True, embed_dim=16, depth=1, d_state=4)
    assert overlapping.patch_embed.grid_size == (7, 7)  # (30 -> 32 - 8) / 4 + 1


def test_set_input_size():
    model = _create()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = _create(img_size=48)
        expected.load_state_dict(checkpoint_filter_fn(model.state_dict(), expected))
        model.set_input_size(img_size=48)
        assert model.patch_embed.grid_size == (6, 6) and model.pos_embed.shape == (1, 37, TEST_DIM)
        torch.testing.assert_close(model(x), expected(x), rtol=0, atol=0)
        model.set_input_size(patch_size=4)  # 12x12 grid, kernel resampled
        assert model.patch_embed.proj.kernel_size == (4, 4) and model.patch_embed.stride == (4, 4)
        assert model.feature_info[0]["reduction"] == 4
        assert model(x).shape == (2, 1000)
    overlapping = Vim(img_size=32, patch_size=8, stride=4, embed_dim=16, depth=1, d_state=4)
    overlapping.set_input_size(patch_size=16)
    assert overlapping.patch_embed.stride == (8, 8) and overlapping.patch_embed.grid_size == (3, 3)


# --- optimizer factory, batching --------------------------------------------------------------

def test_layer_decay_through_timm_optimizer():
    from timm.optim import create_optimizer_v2

    model = _create()
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scale, decay = {}, {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            scale[names[id(p)]] = group["lr_scale"]
            decay[names[id(p)]] = group["weight_decay"]
    assert len(scale) == len(names)
    # stem, three blocks (norm_f joins the last), head: 0.75 ** (4, 3, 2, 1, 0)
    assert scale["pos_embed"] == scale["cls_token"] == scale["patch_embed.proj.weight"] == pytest.approx(0.75 ** 4)
    for i in range(TEST_DEPTH):
        assert scale[f"layers.{i}.mixer.in_proj.weight"] == pytest.approx(0.75 ** (3 - i))
    assert scale["norm_f.weight"] == pytest.approx(0.75)
    assert scale["head.weight"] == 1.0
    for name in model.no_weight_decay():
        assert decay[name] == 0.0, name
    assert decay["layers.0.mixer.in_proj.weight"] == 0.05


def test_init_weights_after_to_empty():
    """init_weights() re-initialises every parameter (timm's to_empty test, in float32: the
    float64 variant in the timm suite is an expected failure, see tests/timm_suite)."""
    model = timm.create_model("test_vim", device="meta", num_classes=5).to_empty(device="cpu").eval()
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.fill_(float("nan"))
    model.init_weights()
    for name, tensor in model.named_parameters():
        assert torch.isfinite(tensor).all(), name
    torch.testing.assert_close(model.layers[0].mixer.A_log[0], torch.log(torch.arange(1.0, TEST_D_STATE + 1)))
    with torch.no_grad():
        assert torch.isfinite(model(_images())).all()


def test_batch_consistency():
    model = _create()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
