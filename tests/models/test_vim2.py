"""Vim2 (Vim layout, bidirectional Mamba-2 mixers) as a timm model.

Everything runs the tiny ``test_vim2`` variant on CPU; the full-size variants are only built on
the meta device. The model forward is checked against a float64 rewrite from the layout's
equations (patch conv, middle class token, pos embed, add -> RMSNorm -> mixer blocks with the
residual in fp32 as the model carries it, final add + RMSNorm, head on the middle token) around the mixer oracle of
``tests/layers/test_mamba2.py``. The timm API shared with Vim (pooling, resizing, taps, pruning)
is the same code and is tested in depth in ``test_vim.py``; here it is exercised once on vim2.
"""
import importlib.util
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import mambazoo  # noqa: F401  (registers the models)
from mambazoo.engine import TimmClassifier
from mambazoo.layers import BidirectionalMamba2Mixer
from mambazoo.models.vim import checkpoint_filter_fn
from mambazoo.models.vim2 import Vim2

REPO = Path(__file__).resolve().parents[2]


def _load_mixer_oracle():
    """tests/layers/_mamba2_oracle.py (another test folder, so not on this one's import path)."""
    spec = importlib.util.spec_from_file_location("_mamba2_oracle", REPO / "tests/layers/_mamba2_oracle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


naive_mixer = _load_mixer_oracle().naive_mixer

# Per block (d = embed_dim, e = 2d channels, h = e / 64 heads, N = 64, one group):
# in_proj d * (2e + 2 * (2N + h)), per direction conv (e + 2N) * 5 and dt_bias/A_log/D 3h, gated
# norm e, out_proj e * d, block RMSNorm d. Outside: patch conv 768d + d, cls d, pos_embed 197d,
# norm_f d, head 1000d + 1000. E.g. tiny: 24 * 278,372 + 378,856.
PARAM_COUNTS = {
    "vim2_tiny": 7_059_784,
    "vim2_small": 24_815_272,
    "vim2_base": 92_508_520,
    "test_vim2": 173_176,
}
TEST_DIM, TEST_DEPTH, TEST_TOKENS = 64, 3, 4 * 4 + 1


def _create(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("test_vim2", **kwargs).eval()


def _images(batch=2, chans=3):
    return torch.randn(batch, chans, 32, 32, generator=torch.Generator().manual_seed(1))


def _count_formula(d, depth=24, d_state=64, headdim=64, tokens=197):
    e = 2 * d
    h = e // headdim
    block = d * (2 * e + 2 * (2 * d_state + h)) + 2 * ((e + 2 * d_state) * 5 + 3 * h) + e + e * d + d
    return depth * block + 768 * d + d + d + tokens * d + d + 1000 * d + 1000


def test_param_counts_follow_the_formula():
    assert [PARAM_COUNTS[n] for n in ("vim2_tiny", "vim2_small", "vim2_base")] == [
        _count_formula(d) for d in (192, 384, 768)]


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_and_cfg(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert isinstance(model, Vim2)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]
    mixer = model.layers[0].mixer
    assert isinstance(mixer, BidirectionalMamba2Mixer) and mixer.ngroups == 1
    if name != "test_vim2":
        assert (mixer.d_state, mixer.headdim, len(model.layers)) == (64, 64, 24)
        assert model.patch_embed.patch_size == (16, 16)
    cfg = model.pretrained_cfg
    assert cfg["mean"] == IMAGENET_DEFAULT_MEAN and cfg["std"] == IMAGENET_DEFAULT_STD
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert not cfg.get("hf_hub_id") and not cfg.get("url")
    assert cfg["input_size"] == ((3, 32, 32) if name == "test_vim2" else (3, 224, 224))


def test_tiny_has_six_heads():
    with torch.device("meta"):
        mixer = timm.create_model("vim2_tiny").layers[0].mixer
    assert (mixer.d_inner, mixer.nheads) == (384, 6)


def _rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_matches_layout_equations_float64():
    model = _create().double()
    x = _images().double()
    with torch.no_grad():
        tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        mid = tokens.shape[1] // 2
        tokens = torch.cat([tokens[:, :mid], model.cls_token.expand(2, -1, -1), tokens[:, mid:]], 1) + model.pos_embed
        residual, hidden = None, tokens
        for layer in model.layers:
            residual = hidden if residual is None else residual + hidden
            hidden = naive_mixer(layer.mixer, _rms(residual, layer.norm.weight))
        final = _rms(residual + hidden, model.norm_f.weight)
        expected = model.head(final[:, mid])
        # MambaBlock carries the residual stream in fp32 even in a float64 model (residual_in_fp32),
        # so fp32 rounding (unit roundoff 6e-8) of the stream is what separates the two.
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2])
def test_forward_shapes_and_pooling(batch):
    model = _create()
    x = _images(batch)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (batch, TEST_TOKENS, TEST_DIM)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, 8])
        assert model(x).shape == (batch, 1000)
        model.reset_classifier(5, global_pool="avg")
        patch_mean = torch.cat([features[:, :8], features[:, 9:]], dim=1).mean(1)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), patch_mean)
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == (batch, TEST_TOKENS, TEST_DIM)


def test_backward_and_grad_checkpointing():
    model = _create(drop_path_rate=0.1).train()
    x = _images()
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(3)
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_no_weight_decay_and_group_matcher():
    model = _create()
    names = model.no_weight_decay()
    assert names <= dict(model.named_parameters()).keys()
    for i in range(TEST_DEPTH):
        for local in ("A_log", "A_b_log", "D", "D_b", "dt_bias", "dt_bias_b"):
            assert f"layers.{i}.mixer.{local}" in names
    assert {"pos_embed", "cls_token"} <= names
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))


def test_features_and_intermediates():
    model = _create()
    x = _images()
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [t.shape for t in taps] == [(2, TEST_DIM, 4, 4)] * TEST_DEPTH
        torch.manual_seed(0)
        features = timm.create_model("test_vim2", features_only=True, out_indices=(0, 2)).eval()
        features.model.load_state_dict(model.state_dict(), strict=False)
        for got, tap in zip(features(x), (taps[0], taps[2])):
            torch.testing.assert_close(got, tap)
    with torch.device("meta"):
        small = timm.create_model("vim2_small", features_only=True, out_indices=(5, 11, 17, 23))
        maps = small(torch.empty(1, 3, 224, 224))
    assert [tuple(f.shape) for f in maps] == [(1, 384, 14, 14)] * 4


def test_input_size_changes():
    model = _create(dynamic_img_size=True)
    with torch.no_grad():
        big = torch.randn(2, 3, 48, 40)
        resized = _create(img_size=(48, 40))
        resized.load_state_dict(checkpoint_filter_fn(model.state_dict(), resized))
        torch.testing.assert_close(model(big), resized(big))
        fixed = _create()
        fixed.set_input_size(img_size=48)
        assert fixed.pos_embed.shape == (1, 37, TEST_DIM) and fixed(torch.randn(1, 3, 48, 48)).shape == (1, 1000)


def test_init_weights_after_to_empty():
    model = timm.create_model("test_vim2", device="meta").to_empty(device="cpu")
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.fill_(float("nan"))
    model.init_weights()
    for name, tensor in model.named_parameters():
        assert torch.isfinite(tensor).all(), name
    A = torch.exp(model.layers[0].mixer.A_b_log)
    assert ((A >= 1) & (A <= 16)).all()


def test_one_training_step_with_the_fashion_mnist_config():
    """The README config with ``model.model_name=test_vim2``: build the TimmClassifier and the
    optimizer as the Runner does, take two steps, the loss is finite and every parameter moves."""
    cfg = Config.fromfile(str(REPO / "configs/vim_fashion_mnist.py"))
    cfg.merge_from_dict({"model.model_name": "test_vim2"})
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    assert isinstance(model, TimmClassifier) and isinstance(model.model, Vim2)
    optim_cfg = cfg.optim_wrapper.copy()
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type=optim_cfg.pop("constructor"), optim_wrapper_cfg=optim_cfg))
    optim_wrapper = constructor(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = dict(inputs=torch.randn(4, 1, 28, 28), data_samples=torch.tensor([0, 3, 7, 9]))
    model.train()
    losses = [model.train_step(data, optim_wrapper)["loss"].item() for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    for name, param in model.named_parameters():
        assert not torch.equal(param, before[name]), name


def test_batch_consistency():
    model = _create()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
