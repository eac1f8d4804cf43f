"""Shared sizes and the tiny segmentor config of the segmentation tests."""

SCENES = dict(num_train=24, num_val=24, size=64, seed=0)
NUM_CLASSES = 13


def tiny_segmentor_cfg(test_cfg=None, num_classes=NUM_CLASSES):
    """A 4-block test_vim (embed 32, patch 8), one tap per pyramid level, like the real recipe."""
    return dict(
        type="SegEncoderDecoder",
        backbone=dict(
            type="VimPyramidBackbone", model_name="test_vim", depth=4, embed_dim=32, d_state=4, img_size=64,
            out_indices=(0, 1, 2, 3), out_channels=32, top_block_pool=False,
        ),
        decode_head=dict(type="UperNetHead", in_channels=[32] * 4, num_classes=num_classes, channels=32),
        auxiliary_head=dict(type="FCNHead", in_channels=32, num_classes=num_classes, channels=16),
        test_cfg=test_cfg or dict(mode="whole"),
    )

