"""The dense backbones: Vim taps at any input size and the ViTDet simple feature pyramid."""
import pytest
import timm
import torch

from mambazoo.downstream import SimpleFeaturePyramid, VimBackbone, VimPyramidBackbone

# test_vim: patch 8 (stride 8), width 64, 3 blocks.
TEST_STRIDE = 8
TEST_DIM = 64


def _images(batch, height, width):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


def test_backbone_taps_are_the_timm_intermediates():
    """VimBackbone is forward_intermediates of the timm model, at a size the model was not built for."""
    torch.manual_seed(0)
    backbone = VimBackbone("test_vim", out_indices=(0, 2)).eval()
    reference = timm.create_model("test_vim", dynamic_img_size=True).eval()
    reference.load_state_dict(backbone.model.state_dict(), strict=False)  # the pruned model has no head
    images = _images(2, 64, 96)
    with torch.no_grad():
        taps = backbone(images)
        expected = reference.forward_intermediates(images, [0, 2], norm=True, intermediates_only=True)
    assert backbone.out_indices == [0, 2] and backbone.out_channels == [TEST_DIM] * 2
    assert backbone.stride == TEST_STRIDE
    assert [tuple(t.shape) for t in taps] == [(2, TEST_DIM, 8, 12)] * 2
    for tap, ref in zip(taps, expected):
        torch.testing.assert_close(tap, ref)
    # Pruned: no block after the last tap, no classifier.
    assert len(backbone.model.layers) == 3 and isinstance(backbone.model.head, torch.nn.Identity)


def test_backbone_rejects_unordered_taps():
    with pytest.raises(ValueError, match="increasing"):
        VimBackbone("test_vim", out_indices=(2, 0))


@pytest.mark.parametrize("height, width", [(128, 160), (96, 64), (100, 75)])
def test_pyramid_strides_at_any_size(height, width):
    torch.manual_seed(0)
    model = VimPyramidBackbone("test_vim", out_channels=32).eval()
    assert model.strides == [4, 8, 16, 32, 64]
    with torch.no_grad():
        levels = model(_images(1, height, width))
    assert all(level.shape[:2] == (1, 32) for level in levels)
    if height % 32 == 0 and width % 32 == 0:
        # Exact at strides 4-32; the stride-2 subsampling for 64 rounds up.
        expected = [(-(-height // s), -(-width // s)) for s in model.strides]
        assert [level.shape[-2:] for level in levels] == expected
    else:
        # The stride-8 grid covers the padded image: ceil(side / 8) patches per side.
        grid = (-(-height // TEST_STRIDE), -(-width // TEST_STRIDE))
        assert levels[0].shape[-2:] == (2 * grid[0], 2 * grid[1])
        assert levels[1].shape[-2:] == grid


def test_pyramid_levels_vitdet_layout():
    """Stride 16 in: two deconvs (with LN + GELU between) for 4, one for 8, identity, max pool."""
    pyramid = SimpleFeaturePyramid(in_channels=192, out_channels=256, in_stride=16)
    resample = [level.resample for level in pyramid.levels]
    assert [type(m).__name__ for m in resample[0]] == ["ConvTranspose2d", "LayerNorm2d", "GELU", "ConvTranspose2d"]
    assert resample[0][-1].out_channels == 48 and resample[1][0].out_channels == 96
    assert isinstance(resample[2], torch.nn.Identity) and isinstance(resample[3], torch.nn.MaxPool2d)
    for level in pyramid.levels:
        assert level.lateral.kernel_size == (1, 1) and level.output.kernel_size == (3, 3)
        assert level.lateral.bias is None and level.output.bias is None
    with torch.no_grad():
        levels = pyramid(torch.randn(1, 192, 8, 10))
    assert [tuple(level.shape) for level in levels] == [
        (1, 256, 32, 40), (1, 256, 16, 20), (1, 256, 8, 10), (1, 256, 4, 5), (1, 256, 2, 3)
    ]


def test_pyramid_one_tap_per_level():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="one per stride"):
        VimPyramidBackbone("test_vim", out_indices=(0, 2))
    model = VimPyramidBackbone("test_vim", depth=4, out_indices=4, out_channels=16, top_block_pool=False).eval()
    assert model.backbone.out_indices == [0, 1, 2, 3] and model.strides == [4, 8, 16, 32]
    images = _images(1, 64, 64)
    with torch.no_grad():
        levels = model(images)
        taps = model.backbone(images)
        # Level 3 (stride 32) comes from the last tap alone.
        torch.testing.assert_close(levels[3], model.pyramid.levels[3](taps[3]))
    assert [tuple(level.shape) for level in levels] == [(1, 16, 64 // s, 64 // s) for s in (4, 8, 16, 32)]


def test_pretrained_file_loads_through_the_filter(tmp_path):
    """``pretrained=PATH`` loads a training checkpoint ({'model': ...}) with pos_embed resampled."""
    torch.manual_seed(0)
    source = timm.create_model("test_vim")
    path = tmp_path / "vim.pth"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    backbone = VimBackbone("test_vim", pretrained=str(path), img_size=64)
    torch.testing.assert_close(backbone.model.layers[1].mixer.A_log, source.layers[1].mixer.A_log)
    assert backbone.model.pos_embed.shape == (1, 8 * 8 + 1, TEST_DIM)


def test_backward_reaches_backbone_and_pyramid():
    torch.manual_seed(0)
    model = VimPyramidBackbone("test_vim", out_channels=16).train()
    loss = sum(level.square().mean() for level in model(_images(1, 64, 64)))
    loss.backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
