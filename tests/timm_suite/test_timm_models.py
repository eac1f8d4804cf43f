"""timm's own model tests, run on mambazoo's models.

``timm_test_models.py`` beside this file is timm 1.0.31's ``tests/test_models.py`` (from the
sdist; Apache-2.0, see its header and LICENSE-timm), unmodified. Its test functions are
parametrized at import with timm's own model lists, so this module loads it as a plain module
(pytest does not collect it), takes each test function it adopts WITHOUT timm's marks, and
parametrizes it with our model names. The bodies run unchanged, so a failure points at timm's code.

Every test function of the vendored file is either adopted (``ADOPTED``) or listed in
``NOT_APPLICABLE`` with the reason; ``test_every_timm_test_is_accounted_for`` keeps it that way
when the file is refreshed for a new timm.

Which models: every model registered by a mambazoo family listed in ``IMAGE_FAMILIES``; the
tiny ``test_*`` variants get every adopted test, the full-size ones only the config test (run on
the meta device, as timm runs it: shapes and API at full size without the CPU cost).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

import pytest
import timm
import torch

import mambazoo  # noqa: F401  (registers the models)

VENDORED = Path(__file__).with_name("timm_test_models.py")
VENDORED_TIMM_VERSION = "1.0.31"
VENDORED_SHA256 = "ffb62c6df02601a96c2fda403723a7f96a806897ee061d1009c1f3135fb64eb7"  # of timm's file


def _load_vendored() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("mambazoo_timm_suite.timm_test_models", VENDORED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timm_tests = _load_vendored()
cfg_device = timm_tests.cfg_device  # the fixture timm's config tests ask for

# mambazoo families whose models are image backbones, and how forward_features lays out its
# output: "token" (batch, tokens, dim) models take timm's *_non_std config test, as vit_* do.
# vim2 is Vim's layout (a Vim subclass) with Mamba-2 mixers: the same tests apply, for the same
# reasons, to test_vim2 (every adopted test) and vim2_tiny/small/base (the config test).
IMAGE_FAMILIES = {"mambazoo.models.vim": "token", "mambazoo.models.vim2": "token"}
# mambazoo families that are not image models (no timm image test applies), with the reason.
OTHER_FAMILIES: Dict[str, str] = {}

MAMBAZOO_MODELS = sorted(
    name for name in timm.list_models()
    if timm.models.model_entrypoint(name).__module__.startswith("mambazoo.")
)
IMAGE_MODELS = [m for m in MAMBAZOO_MODELS if timm.models.model_entrypoint(m).__module__ in IMAGE_FAMILIES]
TINY = [m for m in IMAGE_MODELS if m.startswith("test_")]


def _official_layout_file(request) -> Dict[str, Any]:
    """Point ``pretrained=True`` at a local training checkpoint in the official layout (model,
    model_ema, args Namespace, epoch): timm's pretrained tests download from the hub otherwise."""
    path = request.getfixturevalue("tmp_path") / "official.pth"
    model_name = request.node.callspec.params["model_name"]
    torch.manual_seed(0)
    weights = timm.create_model(model_name).state_dict()
    torch.save({"model": weights, "model_ema": weights, "args": argparse.Namespace(model=model_name), "epoch": 1},
               path)
    return dict(pretrained_cfg_overlay=dict(file=str(path)))


class Adopted(NamedTuple):
    """How one timm test runs here: its parameters, and keyword arguments added to every
    ``create_model`` call it makes (for tests that hard-code an input size or a weight source)."""

    argnames: str
    argvalues: List[Any]
    create_kwargs: Union[None, Dict[str, Any], Callable[[Any], Dict[str, Any]]] = None
    xfail: Optional[str] = None


ADOPTED = {
    "test_model_forward": Adopted("model_name,batch_size", [(m, 1) for m in TINY]),
    "test_model_backward": Adopted("model_name,batch_size", [(m, 2) for m in TINY]),
    "test_model_default_cfgs_non_std": Adopted(
        "model_name,batch_size", [(m, 1) for m in IMAGE_MODELS if IMAGE_FAMILIES.get(
            timm.models.model_entrypoint(m).__module__) == "token"]),
    "test_model_forward_features": Adopted("model_name,batch_size", [(m, 1) for m in TINY]),
    "test_model_forward_intermediates_features": Adopted("model_name,batch_size", [(m, 1) for m in TINY]),
    "test_model_forward_intermediates": Adopted("model_name,batch_size", [(m, 1) for m in TINY]),
    "test_prune_intermediate_layers_params_used": Adopted("model_name", TINY),
    "test_prune_intermediate_layers_contract": Adopted("model_name", TINY),
    "test_forward_after_prune_intermediate_layers": Adopted("model_name", TINY, dict(img_size=128)),
    "test_head_hidden_size": Adopted("model_name,model_kwargs", [(m, dict(img_size=64)) for m in TINY]),
    "test_catavgmax_unsupported": Adopted("model_name", TINY),
    "test_features_only_feature_cls_class": Adopted("model_name", TINY),
    "test_model_forward_fx": Adopted("model_name,batch_size", [(m, 1) for m in TINY]),
    "test_model_backward_fx": Adopted("model_name,batch_size", [(m, 2) for m in TINY]),
    "test_model_init_weights_after_to_empty": Adopted("model_name,kwargs", [(m, dict(img_size=64)) for m in TINY]),
    "test_headless_checkpoint_reload": Adopted("model_name,kwargs", [(m, {}) for m in TINY]),
    "test_relpos_non_square_checkpoint_reload": Adopted("model_name,kwargs", [(m, {}) for m in TINY]),
    "test_relpos_non_square_set_input_size": Adopted("model_name,kwargs", [(m, {}) for m in TINY]),
    "test_relpos_family_set_input_size": Adopted(
        "model_name,kwargs,img_size,new_size", [(m, {}, 32, 48) for m in TINY]),
    # Defined by timm only outside GitHub Actions; weights from a local official-layout file.
    "test_model_load_pretrained": Adopted("model_name,batch_size", [(m, 1) for m in TINY], _official_layout_file),
    "test_model_features_pretrained": Adopted("model_name,batch_size", [(m, 1) for m in TINY], _official_layout_file),
}

_TORCHSCRIPT = ("TorchScript: torch.jit.script fails on the mixers (keyword-argument expansion into the "
                "kernel call, Python-level backend choice), and torch 2.14 deprecates it in favour of "
                "torch.compile / torch.export, which mambazoo targets")
_HARDCODED = "hard-codes timm model names in its body; nothing to re-parametrize"
NOT_APPLICABLE = {
    "test_model_inference": "compares against reference tensors downloaded from the timm/<model> hub repos, "
                            "which exist only for timm's own pretrained test_* models",
    "test_model_default_cfgs": "for spatial (NCHW) models; Vim's forward_features returns tokens, so it takes "
                               "test_model_default_cfgs_non_std as timm's vit_* do",
    "test_reset_classifier_keeps_pool": "creates the model with global_pool='max'; Vim pools by 'token', 'avg' or ''",
    "test_gcvit_batch_consistency": _HARDCODED + " (test_batch_consistency in tests/models/test_vim.py and "
                                                 "test_vim2.py covers Vim and Vim2)",
    "test_features_only_grad_checkpointing_backward": (
        "calls set_grad_checkpointing on the features_only model; FeatureGetterNet (features_only of every "
        "forward_intermediates model, timm's ViTs too) has none. tests/models/test_vim.py::"
        "test_features_only_grad_checkpointing_same_grads checks the same through .model"),
    "test_feature_hook_net_grad_checkpointing_order": _HARDCODED + " (FeatureHookNet; Vim uses the getter)",
    "test_pruned_efficientnet_in_chans": _HARDCODED,
    "test_convit_dtype_change_after_forward": _HARDCODED + " (the config test's dtype check covers Vim)",
    "test_model_forward_torchscript": _TORCHSCRIPT,
    "test_model_features_space2depth_reduction": "efficientnet_h/x space-to-depth stems only",
    "test_model_features_output_stride": "needs an output_stride (dilation) argument; Vim has one stride",
    "test_pruned_features_torchscript": _TORCHSCRIPT,
    "test_feature_getter_stage_ends_torchscript": _TORCHSCRIPT,
    "test_inception_v3_aux_logits_reset_prune": _HARDCODED,
    "test_prune_extra_blocks_stem_width": "needs prune_intermediate_layers(extra_blocks=...), EfficientNet's stem taps",
    "test_prune_class_token_avg_pool": (
        "expects pruning to drop a late-added class token (CaiT/XCiT); Vim's class token is part of the "
        "scanned sequence from the first block, and 'avg' pooling excludes it instead (tested in test_vim.py)"),
    "test_eva_reset_classifier_removes_attention_pool": _HARDCODED,
    "test_samvit_feature_getter_channels": _HARDCODED,
    "test_resnet_pruned_grad_checkpointing": _HARDCODED,
    "test_prune_intermediate_layers_last_feature": (
        "pools forward_features with mean((2, 3)), i.e. assumes NCHW output; Vim returns tokens"),
    "test_prune_to_stem_feature": "needs a stem feature tap (index 0 = stem); Vim's taps are its blocks, as ViT's",
    "test_forward_intermediates_stop_early_final_norm": (
        "encodes hierarchical models' norm semantics (norm only after the last stage); Vim follows ViT: "
        "norm=True applies norm_f to every tap, as timm's vision_transformer does"),
    "test_resnetv2_stem_feature_odd_size": _HARDCODED,
    "test_nfnet_stem_feature_consistency": _HARDCODED,
    "test_mobilenetv5_intermediate_final_features": _HARDCODED,
    "test_model_forward_fx_torchscript": _TORCHSCRIPT,
    "test_model_forward_torchscript_with_features_fx": _TORCHSCRIPT,
}
NOT_APPLICABLE.update({
    name: "NaFlexViT / RADIO / Gemma4 / Sapiens specific (" + _HARDCODED + ")"
    for name in (
        "test_naflexvit_direct_grid_sample_parity", "test_naflexvit_direct_grid_sample_fullgraph",
        "test_naflexvit_direct_grid_sample_export", "test_naflexvit_forward_intermediates_dict_input",
        "test_naflexvit_mixed_rope_dict_input", "test_naflexvit_patch_interpolation_capability",
        "test_naflexvit_key_only_attn_mask_is_opt_in_and_post_patch_dropout",
        "test_naflexvit_key_only_attn_mask_output_parity", "test_radio_checkpoint_filter",
        "test_naflexvit_sapiens2_conversion", "test_gemma4_forward_intermediates_dict_output",
    )
})
NOT_APPLICABLE.update({
    name: "ViT encoder-classifier wrappers (" + _HARDCODED + ")"
    for name in ("test_vit_classifier_encoder_hooks", "test_vit_classifier_checkpoint",
                 "test_vit_classifier_pruned_features")
})
NOT_APPLICABLE.update({
    "test_efficientvim_branch_features": _HARDCODED,
    "test_mobile_model_fusion_features": "BatchNorm / re-parameterisation fusion; Vim has neither",
    "test_hybrid_vit_set_input_size_dtype": _HARDCODED + " (test_relpos_family_set_input_size covers Vim's "
                                            "set_input_size dtype handling)",
})
NOT_APPLICABLE.update({
    name: "window attention (Swin family) specific (" + _HARDCODED + ")"
    for name in (
        "test_swin_family_reinit_after_to_empty", "test_swin_family_set_input_size",
        "test_swin_family_set_input_size_stage_windows", "test_swin_family_set_input_size_window_ratios",
        "test_swin_family_set_input_size_invalid_and_min_windows", "test_swin_family_resize_metadata",
        "test_swin_family_resize_odd_stage_sizes", "test_swin_family_set_input_size_after_pruning",
        "test_swin_family_script_after_resize", "test_swin_family_compile_resize_guards",
        "test_swin_family_window_padding", "test_swin_family_dynamic_mask_trace",
    )
})
NOT_APPLICABLE.update({
    name: "attention bias caches; Vim has no attention (" + _HARDCODED + ")"
    for name in (
        "test_eval_refreshes_attention_bias_cache", "test_eval_attention_bias_cache_after_dtype_change",
        "test_eval_attention_forward_after_dtype_change", "test_attention_bias_cache_apply_preserves_recurse_argument",
    )
})
# timm defines these two only when GITHUB_ACTIONS is not set.
_LOCAL_ONLY = {"test_model_load_pretrained", "test_model_features_pretrained"}


def _vendored_tests() -> Dict[str, types.FunctionType]:
    return {name: obj for name, obj in vars(timm_tests).items()
            if name.startswith("test_") and isinstance(obj, types.FunctionType)}


def _adopt(name: str, how: Adopted):
    """timm's test function without timm's marks, parametrized with our models."""
    original = _vendored_tests()[name]
    test = types.FunctionType(original.__code__, original.__globals__, name, original.__defaults__,
                              original.__closure__)
    test.__doc__ = original.__doc__
    test = pytest.mark.parametrize(how.argnames, how.argvalues)(test)
    if how.create_kwargs is not None:
        # with_args: a lone callable argument would otherwise be taken as the function to mark
        test = pytest.mark.timm_create_kwargs.with_args(how.create_kwargs)(test)
    if how.xfail is not None:
        test = pytest.mark.xfail(reason=how.xfail, strict=True)(test)
    return test


for _name, _how in ADOPTED.items():
    if _name in _vendored_tests():
        globals()[_name] = _adopt(_name, _how)


@pytest.fixture(autouse=True)
def _create_model_kwargs(request, monkeypatch):
    """Add a test's ``create_kwargs`` to every ``create_model`` call inside timm's test body."""
    marker = request.node.get_closest_marker("timm_create_kwargs")
    if marker is None:
        return
    extra = marker.args[0]
    if callable(extra):
        extra = extra(request)
    create_model = timm.create_model

    def create_model_with_kwargs(model_name, *args, **kwargs):
        return create_model(model_name, *args, **{**extra, **kwargs})

    monkeypatch.setattr(timm_tests, "create_model", create_model_with_kwargs)


@pytest.mark.parametrize("name", sorted(NOT_APPLICABLE))
def test_not_applicable(name):
    """One skipped item per timm test that does not apply, so the reason shows in the summary."""
    pytest.skip(f"timm's {name}: {NOT_APPLICABLE[name]}")


def test_every_timm_test_is_accounted_for():
    vendored = set(_vendored_tests())
    listed = set(ADOPTED) | set(NOT_APPLICABLE)
    assert not set(ADOPTED) & set(NOT_APPLICABLE)
    assert vendored - listed == set(), "new timm tests: adopt them or say why they do not apply"
    assert listed - vendored <= _LOCAL_ONLY, "tests listed here are gone from the vendored file"


def test_every_mambazoo_model_is_classified():
    """A new family must say whether timm's image tests apply to it (and how), or why not."""
    families = {timm.models.model_entrypoint(m).__module__ for m in MAMBAZOO_MODELS}
    unclassified = families - set(IMAGE_FAMILIES) - set(OTHER_FAMILIES)
    assert not unclassified, f"add {sorted(unclassified)} to IMAGE_FAMILIES or OTHER_FAMILIES in {__file__}"
    assert TINY, "every image family needs a tiny test_* model"


def test_vendored_copy_is_unmodified():
    body = VENDORED.read_bytes().split(b"# END-OF-HEADER\n", 1)[1]
    assert hashlib.sha256(body).hexdigest() == VENDORED_SHA256


def test_vendored_matches_installed_timm():
    assert timm.__version__ == VENDORED_TIMM_VERSION, (
        f"timm {timm.__version__} is installed but the suite is timm {VENDORED_TIMM_VERSION}'s: refresh "
        f"{VENDORED.name} from `pip download --no-deps --no-binary :all: timm=={timm.__version__}` (README.md)")
