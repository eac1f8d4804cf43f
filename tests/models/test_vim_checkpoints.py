"""Official hustvl/Vim checkpoints: pretrained cfgs, checkpoint_filter_fn, loading, tools/convert.py.

No official file is downloaded: each test writes one in the official layout (FACTS.md section 3:
``torch.save({"model": ..., "model_ema": ..., "args": argparse.Namespace, "epoch": ...})``) at
``test_vim`` scale, with asymmetric values, and checks the loaded model against the independent
float64 official forward in ``_vim_oracle.py``.
"""
import argparse
import fractions
import importlib.util
import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

import mambazoo  # noqa: F401  (registers the models)
from _vim_oracle import official_forward, official_state_dict
from mambazoo.models.vim import checkpoint_filter_fn

EMBED, DEPTH, D_STATE, PATCH = 64, 3, 8, 8  # test_vim
REPO_ROOT = Path(__file__).resolve().parents[2]
# float32 model vs float64 oracle, logits of size ~3: measured max difference ~1e-6.
LOGIT_ATOL = 1e-4

OFFICIAL = {
    "vim_tiny.in1k": ("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_stride8.in1k": ("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small.in1k": ("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth"),
    "vim_small_stride8.in1k": ("hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth"),
    "vim_base.in1k": ("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth"),
}


def _official_weights(grid=4, seed=0, num_classes=1000):
    return official_state_dict(EMBED, DEPTH, D_STATE, PATCH, grid * grid, num_classes=num_classes, seed=seed)


def _save_official(path, grid=4, extra=None):
    """An official-layout training checkpoint; returns (model weights, EMA weights)."""
    model, ema = _official_weights(grid, seed=0), _official_weights(grid, seed=1)
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-3, "weight_decay": 0.05, "params": [0]}]}
    torch.save({
        "model": model, "model_ema": ema, "optimizer": optimizer, "lr_scheduler": {"last_epoch": 3},
        "epoch": 3, "scaler": "none",
        "args": argparse.Namespace(model="vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_"
                                         "midclstok_div2", lr=5e-4, model_ema=True),
        **(extra or {}),
    }, path)
    return model, ema


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "vim_test_midclstok.pth"
    model, ema = _save_official(path)
    return path, model, ema


def _images(size=32, batch=2):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(3))


def _load_convert_tool():
    spec = importlib.util.spec_from_file_location("mambazoo_convert_tool", REPO_ROOT / "tools" / "convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _max_logit_diff(model, weights, size=32, **oracle_kwargs):
    x = _images(size)
    with torch.no_grad():
        return (model(x).double() - official_forward(weights, x, D_STATE, **oracle_kwargs)).abs().max().item()


def test_official_pretrained_cfgs():
    assert set(OFFICIAL) <= set(timm.list_pretrained("vim_*"))
    for tag, (hub_id, filename) in OFFICIAL.items():
        cfg = timm.models.get_pretrained_cfg(tag)
        assert (cfg.hf_hub_id, cfg.hf_hub_filename) == (hub_id, filename), tag
        assert cfg.mean == timm.data.IMAGENET_DEFAULT_MEAN and cfg.crop_pct == 0.875, tag
        assert cfg.license == "apache-2.0" and cfg.num_classes == 1000 and not cfg.custom_load, tag


def test_official_layout_is_ours():
    model = timm.create_model("test_vim")
    official = _official_weights()
    assert {k: tuple(v.shape) for k, v in official.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_pretrained_file_overlay_loads_official_checkpoint(official_file):
    """``pretrained_cfg_overlay=dict(file=...)`` reads the official .pth (args Namespace and all)."""
    path, weights, ema = official_file
    model = timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[key]), key  # timm's file loader takes model_ema when present
    diff = _max_logit_diff(model, ema)
    print(f"\nmax |logit - float64 official forward| via pretrained_cfg_overlay(file=.pth): {diff:.3g}")
    assert diff < LOGIT_ATOL
    # The asymmetric checkpoint makes the classic mistakes visible.
    assert _max_logit_diff(model, ema, swap_directions=True) > 0.1
    assert _max_logit_diff(model, ema, cls_row=0) > 0.1


def test_hub_tag_path(official_file, monkeypatch):
    """timm's hub path for a .pth tag (download, torch.load weights_only with Namespace allowed,
    whole training checkpoint to the filter), with the download pointed at the local file."""
    path, _, ema = official_file
    requested = []

    def download(repo_id, filename=None, **kwargs):
        requested.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", download)
    hub_id, filename = OFFICIAL["vim_tiny.in1k"]
    model = timm.create_model(
        "test_vim", pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=hub_id, hf_hub_filename=filename))
    assert requested == [(hub_id, filename)]
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[key]), key


def test_filter_unwraps_like_timm_loader(official_file):
    """The hub path hands the whole training checkpoint to the filter; it must pick what timm's
    file loader picks (model_ema), and ``use_ema=False`` the raw model weights."""
    path, weights, ema = official_file
    model = timm.create_model("test_vim")
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, weights_only=True)
    via_file = checkpoint_filter_fn(timm.models.load_state_dict(str(path)), model)
    via_hub = checkpoint_filter_fn(raw, model)
    assert via_file.keys() == via_hub.keys() == ema.keys()
    for key in ema:
        assert torch.equal(via_hub[key], ema[key]) and torch.equal(via_file[key], ema[key]), key
    plain = checkpoint_filter_fn(raw, model, use_ema=False)
    assert all(torch.equal(plain[key], weights[key]) for key in weights)
    wrapped_ddp = checkpoint_filter_fn({"model": {f"module.{k}": v for k, v in weights.items()}}, model)
    assert wrapped_ddp.keys() == weights.keys()


def test_convert_round_trip(official_file, tmp_path):
    path, weights, ema = official_file
    convert = _load_convert_tool()
    for choice, expected in (("model", weights), ("ema", ema)):
        out = tmp_path / choice
        summary = convert.main([str(path), "--model", "test_vim", "--out", str(out), "--weights", choice])
        assert summary["weights"] == ("model" if choice == "model" else "model_ema")
        assert summary["epoch"] == 3 and summary["official_model"].startswith("vim_tiny_patch16_224")
        tensors = safetensors.torch.load_file(out / "model.safetensors")
        assert tensors.keys() == expected.keys()
        assert all(torch.equal(tensors[k], expected[k]) for k in expected)
        config = json.loads((out / "config.json").read_text())
        assert config["architecture"] == "test_vim" and config["num_classes"] == 1000
        cfg = config["pretrained_cfg"]
        assert cfg["custom_load"] is False and cfg["mean"] == list(timm.data.IMAGENET_DEFAULT_MEAN)
        assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875 and cfg["first_conv"] == "patch_embed.proj"

        model = timm.create_model(
            "test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"))).eval()
        diff = _max_logit_diff(model, expected)
        print(f"\nmax |logit - float64 official forward| after tools/convert.py --weights {choice}: {diff:.3g}")
        assert diff < LOGIT_ATOL
        from_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert _max_logit_diff(from_dir, expected) < LOGIT_ATOL


def test_convert_refuses_non_allowlisted_objects(tmp_path):
    """Only argparse.Namespace is allow-listed; any other object stops the load with a clear error,
    in the converter and in timm's pretrained path alike (never a weights_only=False fallback)."""
    path = tmp_path / "odd.pth"
    _save_official(path, extra={"note": fractions.Fraction(1, 3)})
    with pytest.raises(RuntimeError, match="allow-list.*fractions.Fraction|fractions.Fraction.*allow"):
        _load_convert_tool().main([str(path), "--model", "test_vim", "--out", str(tmp_path / "out")])
    with pytest.raises(RuntimeError, match="non-allowlisted"):
        timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_convert_wrong_architecture_fails(official_file, tmp_path):
    path, _, _ = official_file
    with pytest.raises(RuntimeError, match="size mismatch"):
        _load_convert_tool().main([str(path), "--model", "vim_tiny", "--out", str(tmp_path / "out")])


def test_pos_embed_resampled_on_load(official_file):
    """A 32 px (4x4 grid) checkpoint into a 48 px model (6x6): patch rows resampled as a grid, the
    middle class-token row kept and moved to the new middle (row 18)."""
    path, _, ema = official_file
    model = timm.create_model(
        "test_vim", img_size=48, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    old = ema["pos_embed"]
    grid = torch.cat([old[:, :8], old[:, 9:]], dim=1).reshape(1, 4, 4, EMBED).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 36, EMBED)
    expected = torch.cat([grid[:, :18], old[:, 8:9], grid[:, 18:]], dim=1)
    torch.testing.assert_close(model.pos_embed.data, expected)
    resampled = dict(ema, pos_embed=expected)
    assert _max_logit_diff(model, resampled, size=48) < LOGIT_ATOL


@pytest.mark.parametrize("name,old_grid,new_grid", [
    ("vim_tiny", 14, 16),  # patch 16: 14x14 at 224 px -> 16x16 at 256 px, class row 98 -> 128
    ("vim_tiny_stride8", 27, 31),  # stride 8: 27x27 -> 31x31, class row 364 -> 480
])
def test_pos_embed_full_size_224_to_256(name, old_grid, new_grid):
    with torch.device("meta"):
        model = timm.create_model(name, img_size=256)
    old_mid, new_mid, new_shape = old_grid ** 2 // 2, new_grid ** 2 // 2, (1, new_grid ** 2 + 1, 192)
    old = torch.randn(1, old_grid ** 2 + 1, 192)
    new = checkpoint_filter_fn({"pos_embed": old}, model)["pos_embed"]
    assert new.shape == new_shape
    assert torch.equal(new[:, new_mid], old[:, old_mid])


def test_head_reset_when_num_classes_differs(official_file):
    path, _, ema = official_file
    model = timm.create_model(
        "test_vim", num_classes=7, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert model.head.weight.shape == (7, EMBED)
    for key, value in model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, ema[key]), key
    x = _images()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = official_forward(ema, x, D_STATE, pre_logits=True)
    torch.testing.assert_close(pre_logits.double(), expected, rtol=1e-4, atol=1e-4)


def test_in_chans_adapted_on_load(official_file):
    path, _, ema = official_file
    model = timm.create_model("test_vim", in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.patch_embed.proj.weight, ema["patch_embed.proj.weight"].sum(1, keepdim=True))
