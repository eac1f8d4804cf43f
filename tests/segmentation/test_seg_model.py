"""UperNet / FCN heads, the segmentor's whole and slide inference, and its optimizer groups."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _seg_helpers import NUM_CLASSES, tiny_segmentor_cfg
from mmengine.config import Config
from mmengine.registry import MODELS
from mmengine.structures import BaseDataElement, PixelData

from mambazoo.engine.optim import TimmOptimWrapperConstructor


def test_head_shapes_and_losses(segmentor):
    segmentor.train()
    images = torch.randn(2, 3, 64, 64)
    features = segmentor.backbone(images)
    assert [tuple(f.shape) for f in features] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    assert segmentor.decode_head(features).shape == (2, NUM_CLASSES, 16, 16)  # stride 4
    assert segmentor.auxiliary_head(features).shape == (2, NUM_CLASSES, 4, 4)  # stride 16
    labels = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    labels[:, :8] = 255
    samples = [BaseDataElement(gt_sem_seg=PixelData(data=label[None])) for label in labels]
    losses = segmentor(images, samples, mode="loss")
    assert set(losses) == {"decode.loss_ce", "decode.acc_seg", "aux.loss_ce", "aux.acc_seg"}
    # near-uniform initial logits (conv_seg ~ N(0, 0.01)): CE ~ log(num_classes), the aux one x 0.4
    log_c = torch.log(torch.tensor(float(NUM_CLASSES)))
    assert abs(losses["decode.loss_ce"].item() - log_c) < 0.3
    assert abs(losses["aux.loss_ce"].item() - 0.4 * log_c) < 0.15
    (losses["decode.loss_ce"] + losses["aux.loss_ce"]).backward()
    assert all(p.grad is not None for p in segmentor.parameters() if p.requires_grad)


def test_odd_sizes_and_ignore_only_labels(segmentor):
    logits = segmentor(torch.randn(1, 3, 70, 50), mode="tensor")
    assert logits.shape == (1, NUM_CLASSES, 70, 50) and torch.isfinite(logits).all()
    head = segmentor.decode_head
    logits = torch.randn(2, NUM_CLASSES, 4, 4, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (2, 16, 16))
    labels[0] = 255
    # the mean over labelled pixels only: image 0 (all ignored) does not dilute image 1's loss
    expected = F.cross_entropy(F.interpolate(logits[1:], size=(16, 16), mode="bilinear"), labels[1:])
    torch.testing.assert_close(head.loss(logits, labels)["loss_ce"], expected)
    nothing = head.loss(logits, torch.full((2, 16, 16), 255))  # a batch without labels: 0, not NaN
    assert nothing["loss_ce"].item() == 0 and nothing["acc_seg"] == 0
    nothing["loss_ce"].backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def _build(test_cfg):
    torch.manual_seed(0)
    return MODELS.build(tiny_segmentor_cfg(test_cfg)).eval()


@pytest.mark.parametrize("size", [(64, 64), (48, 56)])
def test_slide_equals_whole_when_one_window_covers_the_image(size):
    whole = _build(dict(mode="whole"))
    slide = _build(dict(mode="slide", crop_size=(64, 64), stride=(43, 43)))
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert torch.equal(whole(images, mode="tensor"), slide(images, mode="tensor"))


def test_slide_averages_overlapping_windows():
    """Independent re-derivation of mmseg's windows for a 70 x 100 image, crop 64, stride 43:
    rows start at 0 and (shifted back inside) 6; columns at 0 and 36."""
    model = _build(dict(mode="slide", crop_size=(64, 64), stride=(43, 43)))
    images = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        expected = torch.zeros(1, NUM_CLASSES, 70, 100)
        count = torch.zeros(70, 100)
        for top in (0, 6):
            for left in (0, 36):
                window = model.encode_decode(images[:, :, top : top + 64, left : left + 64])
                expected += F.pad(window, (left, 100 - left - 64, top, 70 - top - 64))
                count[top : top + 64, left : left + 64] += 1
        assert count.min() == 1 and count.max() == 4
        torch.testing.assert_close(model(images, mode="tensor"), expected / count, rtol=1e-5, atol=1e-6)


def test_predict_removes_padding_and_restores_the_original_size(segmentor):
    sample = BaseDataElement(metainfo=dict(ori_shape=(40, 30), padding_size=(0, 16, 0, 8)))
    inputs = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (out,) = segmentor(inputs, [sample], mode="predict")
        logits = segmentor(inputs, mode="tensor")
    expected = F.interpolate(logits[:, :, :56, :48], size=(40, 30), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.seg_logits.data, expected[0])
    assert out.pred_sem_seg.data.shape == (1, 40, 30)
    assert torch.equal(out.pred_sem_seg.data[0], expected[0].argmax(0))


def test_bad_test_cfg_and_norm():
    with pytest.raises(ValueError, match="test_cfg.mode"):
        MODELS.build(tiny_segmentor_cfg(dict(mode="sliding")))
    with pytest.raises(ValueError, match="crop_size and stride"):
        MODELS.build(tiny_segmentor_cfg(dict(mode="slide")))
    cfg = tiny_segmentor_cfg()
    cfg["decode_head"]["norm"] = "GN"
    with pytest.raises(ValueError, match="norm must be"):
        MODELS.build(cfg)


def _lr_scales(model, layer_decay):
    constructor = TimmOptimWrapperConstructor(
        dict(optimizer=dict(type="adamw", lr=1.0, weight_decay=0.05)), dict(layer_decay=layer_decay)
    )
    groups = constructor(model).optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_layer_decay_reaches_the_backbone(segmentor):
    """BEiT/mmseg layer decay: stem decay^(L+1), block i decay^(L-i), norm_f with the last block,
    pyramid and heads 1; no weight decay on the model's no_weight_decay names and 1-D params."""
    scales = _lr_scales(segmentor, 0.5)
    assert len(scales) == sum(1 for p in segmentor.parameters() if p.requires_grad)
    depth, vim = 4, "backbone.backbone.model."
    for name, (lr, wd) in scales.items():
        if name.startswith(vim + "layers."):
            block = int(name[len(vim + "layers."):].split(".")[0])
            assert lr == pytest.approx(0.5 ** (depth - block)), name
        elif name.startswith(tuple(vim + stem for stem in ("patch_embed", "pos_embed", "cls_token"))):
            assert lr == pytest.approx(0.5 ** (depth + 1)), name
        elif name.startswith(vim + "norm_f"):
            assert lr == pytest.approx(0.5), name
        else:
            assert not name.startswith(vim) and lr == 1.0, name
    for name in ("layers.0.mixer.A_log", "layers.2.mixer.D", "pos_embed", "cls_token"):
        assert scales[vim + name][1] == 0.0
    assert scales["decode_head.fpn_bottleneck.0.weight"][1] == 0.05
    assert scales["decode_head.fpn_bottleneck.1.weight"][1] == 0.0  # BN weight (1-D)


def test_official_recipe_config_builds():
    cfg = Config.fromfile(Path(__file__).resolve().parents[2] / "configs" / "vim_tiny_upernet_ade20k.py")
    assert cfg.train_cfg.max_iters == 60000 and cfg.model.test_cfg.stride == (341, 341)
    cfg.model.backbone.pretrained = False  # the official ImageNet checkpoint is not shipped
    model = MODELS.build(cfg.model)
    scales = {round(lr, 12) for lr, _ in _lr_scales(model, cfg.optim_wrapper.paramwise_cfg.layer_decay).values()}
    assert len(scales) == 26  # stem, 24 blocks, pyramid + heads
    assert max(scales) == 1.0 and min(scales) == pytest.approx(0.92**25)
