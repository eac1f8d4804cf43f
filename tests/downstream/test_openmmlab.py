"""mmengine registration and the mmdet / mmseg example configs.

mmdet and mmseg cannot be installed here (no mmcv wheels for torch 2.14), so their registries
are stood in for by a child of mmengine's root MODELS, made exactly as theirs are
(``Registry('model', parent=MMENGINE_MODELS, scope=...)``), and the configs are loaded with
``mmengine.Config.fromfile`` and only their backbone + neck are built and run.
"""
import subprocess
import sys
from pathlib import Path

import torch
from mmengine import Config
from mmengine.registry import MODELS, DefaultScope, Registry

import mambazoo.downstream
from mambazoo.downstream import SimpleFeaturePyramid, VimBackbone, VimPyramidBackbone

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# A child registry like mmdet's / mmseg's; the scope name must be unique in the root's tree.
DOWNSTREAM_MODELS = Registry("model", parent=MODELS, scope="mambazoo_test_downstream")


def test_registered_in_the_root_registry():
    for cls in (VimBackbone, SimpleFeaturePyramid, VimPyramidBackbone):
        assert MODELS.get(cls.__name__) is cls
        assert MODELS.get(f"mmengine.{cls.__name__}") is cls


def test_child_registry_finds_them_under_its_default_scope():
    """What mmdet's runner does: default_scope='mmdet', then its own MODELS.build(cfg)."""
    assert DOWNSTREAM_MODELS.get("VimBackbone") is VimBackbone  # parent fallback for unscoped names
    with DefaultScope.overwrite_default_scope("mambazoo_test_downstream"):
        backbone = DOWNSTREAM_MODELS.build(dict(type="VimBackbone", model_name="test_vim"))
        neck = MODELS.build(dict(type="SimpleFeaturePyramid", in_channels=64, out_channels=8, in_stride=8))
    assert isinstance(backbone, VimBackbone) and isinstance(neck, SimpleFeaturePyramid)


def test_import_mambazoo_does_not_import_downstream():
    code = "import sys, mambazoo; assert 'mambazoo.downstream' not in sys.modules; assert 'mmengine' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _build_backbone_and_neck(config_name):
    cfg = Config.fromfile(str(CONFIGS / config_name))  # runs custom_imports
    assert cfg.custom_imports.imports == ["mambazoo.downstream"]
    # The configs load the official Vim-Ti checkpoint, which the tests do not have.
    assert cfg.model.backbone.pretrained.endswith("vim_t_midclstok_76p1acc.pth")
    cfg.model.backbone.pretrained = False
    torch.manual_seed(0)
    backbone = MODELS.build(cfg.model.backbone).eval()
    neck = MODELS.build(cfg.model.neck).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        levels = neck(backbone(images))
    return cfg, backbone, neck, levels


def test_mmdet_mask_rcnn_config():
    cfg, backbone, neck, levels = _build_backbone_and_neck("mmdet_mask_rcnn_vim_tiny_fpn.py")
    assert cfg.model.type == "MaskRCNN" and cfg.default_scope == "mmdet"
    assert isinstance(backbone, VimBackbone) and backbone.model.embed_dim == 192
    assert neck.strides == [4, 8, 16, 32, 64]
    # The heads' strides and widths agree with what the backbone + neck give.
    assert cfg.model.rpn_head.anchor_generator.strides == neck.strides
    assert cfg.model.roi_head.bbox_roi_extractor.featmap_strides == neck.strides[:4]
    assert cfg.model.roi_head.mask_roi_extractor.featmap_strides == neck.strides[:4]
    assert cfg.model.rpn_head.in_channels == cfg.model.roi_head.bbox_roi_extractor.out_channels == neck.out_channels
    assert [tuple(level.shape) for level in levels] == [
        (1, 256, 64 // s, 96 // s) for s in (4, 8, 16, 32)
    ] + [(1, 256, 1, 2)]


def test_mmseg_upernet_config():
    cfg, backbone, neck, levels = _build_backbone_and_neck("mmseg_upernet_vim_tiny.py")
    assert cfg.model.type == "EncoderDecoder" and cfg.default_scope == "mmseg"
    assert backbone.out_indices == [5, 11, 17, 23]
    head = cfg.model.decode_head
    assert head.type == "UPerHead" and len(levels) == len(head.in_index) == 4
    assert [level.shape[1] for level in levels] == head.in_channels
    assert levels[cfg.model.auxiliary_head.in_index].shape[1] == cfg.model.auxiliary_head.in_channels
    assert [tuple(level.shape[-2:]) for level in levels] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]


def test_package_exports():
    assert set(mambazoo.downstream.__all__) >= {"VimBackbone", "SimpleFeaturePyramid", "vim_faster_rcnn"}


def test_openmmlab_no_decay_keys_cover_the_models_no_weight_decay():
    """mmdet/mmseg pick no-decay parameters by substring (their constructor cannot call the
    model's ``no_weight_decay()``): every name the backbone declares must match a key, and no
    key may match a Linear/conv weight (which must keep weight decay)."""
    for config_name in ("mmdet_mask_rcnn_vim_tiny_fpn.py", "mmseg_upernet_vim_tiny.py"):
        cfg = Config.fromfile(str(CONFIGS / config_name))
        keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
        assert all(rule == dict(decay_mult=0.0) for rule in keys.values())
        assert cfg.optim_wrapper.clip_grad == dict(max_norm=1.0) and "optimizer" in cfg.optim_wrapper
        cfg.model.backbone.pretrained = False
        backbone = MODELS.build(cfg.model.backbone)
        declared = backbone.model.no_weight_decay()
        names = [name for name, _ in backbone.named_parameters()]
        assert sum(name.split("model.", 1)[-1] in declared for name in names) == len(declared) > 0
        for name in names:
            matched = any(key in name for key in keys)
            short = name.split("model.", 1)[-1]
            if short in declared or name.endswith("norm.weight") or "norm_f" in name:
                assert matched, (config_name, name)
            elif name.endswith(("proj.weight", "conv1d.weight")):
                assert not matched, (config_name, name)
