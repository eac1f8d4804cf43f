"""ADE20k-format reading, reduce_zero_label, the composite scenes and mmseg's augmentations."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from mambazoo.data.ade20k import (
    ADE20K_CLASSES,
    ADE20KSegDataset,
    SegPhotoMetricDistortion,
    SegRandomCrop,
    SegRandomFlip,
    SegRandomResize,
)
from mambazoo.data.scenes import SCENE_CLASSES, CompositeScenesDataset, build_composite_scenes
from mambazoo.engine.segmentation import SegDataPreProcessor

from _seg_helpers import NUM_CLASSES, SCENES

LOAD = [dict(type="LoadSegImage"), dict(type="LoadSegAnnotations"), dict(type="PackSegInputs")]


def test_ade20k_classes():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky") and ADE20K_CLASSES[-1] == "flag"
    assert len(ADE20KSegDataset.METAINFO["palette"]) == 150


def test_scenes_layout_and_labels(scenes_root):
    images = sorted((scenes_root / "images" / "training").glob("*.jpg"))
    labels = sorted((scenes_root / "annotations" / "validation").glob("*.png"))
    assert len(images) == SCENES["num_train"] and len(labels) == SCENES["num_val"]
    with Image.open(images[0]) as img:
        assert img.mode == "RGB" and img.size == (64, 64)
    values = set()
    for path in (scenes_root / "annotations" / "training").glob("*.png"):
        with Image.open(path) as label:
            assert label.mode == "L"
            values |= set(np.unique(np.asarray(label)).tolist())
    # 0 = other (photo backgrounds), 1-3 textures, 4-13 clothing items: all kinds occur
    assert 0 in values and values <= set(range(14)) and len(values & set(range(4, 14))) >= 5


def test_scenes_are_deterministic(tmp_path, fashion_mnist_root):
    small = dict(num_train=3, num_val=2, size=48, fashion_mnist_root=fashion_mnist_root)
    a = build_composite_scenes(tmp_path / "a", seed=1, **small)
    b = build_composite_scenes(tmp_path / "b", seed=1, **small)
    c = build_composite_scenes(tmp_path / "c", seed=2, **small)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 11
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".png")
    assert build_composite_scenes(tmp_path / "a", seed=1, **small) == a  # already built: reused
    with pytest.raises(ValueError, match="built with"):
        build_composite_scenes(tmp_path / "a", seed=3, **small)


def test_dataset_reduces_zero_label(scenes_root):
    reduced = ADE20KSegDataset(str(scenes_root), classes=SCENE_CLASSES, pipeline=LOAD)
    raw = ADE20KSegDataset(str(scenes_root), classes=SCENE_CLASSES, reduce_zero_label=False, pipeline=LOAD)
    assert len(reduced) == SCENES["num_train"] and reduced.metainfo["classes"] == SCENE_CLASSES
    for index in (0, 5):
        item = reduced[index]
        label = item["data_samples"].gt_sem_seg.data[0]
        png = torch.from_numpy(np.array(Image.open(reduced.get_data_info(index)["seg_map_path"]))).long()
        assert torch.equal(raw[index]["data_samples"].gt_sem_seg.data[0], png)
        assert torch.equal(label[png == 0], torch.full_like(label[png == 0], 255))
        assert torch.equal(label[png > 0], png[png > 0] - 1)
        assert item["inputs"].dtype == torch.uint8 and item["inputs"].shape == (3, 64, 64)
        assert item["data_samples"].ori_shape == (64, 64)


def test_dataset_errors(tmp_path, scenes_root):
    (tmp_path / "images" / "training").mkdir(parents=True)
    (tmp_path / "annotations" / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no \\*.jpg images"):
        ADE20KSegDataset(str(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "training" / "a.jpg")
    with pytest.raises(FileNotFoundError, match="has no label map"):
        ADE20KSegDataset(str(tmp_path))
    with pytest.raises(ValueError, match="split must be"):
        CompositeScenesDataset(str(scenes_root), split="train")


def _coordinate_sample(height=60, width=80):
    """Image channels 0/1 encode x/y (0-255) and the label is a function of the position, so a
    joint crop / flip keeps ``label == _label_of(image)`` pixel for pixel."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([xs * 3, ys * 4, torch.zeros_like(xs)]).to(torch.uint8)
    return dict(img=tv_tensors.Image(image), gt_seg_map=tv_tensors.Mask(_label_of(image)))


def _label_of(image):
    x, y = image[0].long() // 3, image[1].long() // 4
    return ((x // 20) + 5 * (y // 20)).to(torch.uint8)  # blocks of 20 px


def test_crop_and_flip_move_image_and_label_together():
    np.random.seed(0)
    for _ in range(20):
        results = SegRandomFlip(prob=0.5)(SegRandomCrop((32, 48), cat_max_ratio=0.75)(_coordinate_sample()))
        assert results["img"].shape == (3, 32, 48) and results["gt_seg_map"].shape == (32, 48)
        assert torch.equal(results["gt_seg_map"], _label_of(results["img"]))
    flipped = SegRandomFlip(prob=1.0)(_coordinate_sample())
    original = _coordinate_sample()
    assert flipped["flip"] and torch.equal(flipped["img"], original["img"].flip(-1))
    assert torch.equal(flipped["gt_seg_map"], original["gt_seg_map"].flip(-1))


def test_crop_respects_cat_max_ratio():
    # class 1 fills columns 24-71 of a 96x96 class-0 map: about half of the 32x32 crops have one
    # class above 75 %, so 11 draws find a balanced one except with probability ~0.1 %
    label = torch.zeros(96, 96, dtype=torch.uint8)
    label[:, 24:72] = 1
    label[80:] = 255  # ignored rows do not count towards the ratio

    def crop_ratio(transform):
        out = transform(dict(img=tv_tensors.Image(torch.zeros(3, 96, 96, dtype=torch.uint8)),
                             gt_seg_map=tv_tensors.Mask(label.clone())))["gt_seg_map"]
        counts = torch.bincount(out[out != 255].long(), minlength=2)
        return counts.max().item() / counts.sum().item()

    np.random.seed(0)
    constrained = [crop_ratio(SegRandomCrop((32, 32), cat_max_ratio=0.75)) for _ in range(30)]
    free = [crop_ratio(SegRandomCrop((32, 32))) for _ in range(30)]
    assert max(constrained) < 0.75
    assert sum(r >= 0.75 for r in free) > 5  # the constraint is what made the difference


def test_random_resize_keeps_ratio_and_labels():
    np.random.seed(0)
    sizes = set()
    original = set(_coordinate_sample(64, 64)["gt_seg_map"].unique().tolist())
    for _ in range(10):
        results = SegRandomResize(scale=(512, 128), ratio_range=(0.5, 2.0))(_coordinate_sample(64, 64))
        height, width = results["img"].shape[-2:]
        assert height == width and 64 <= height <= 256 and results["gt_seg_map"].shape == (height, width)
        # nearest-neighbour labels: no new values
        assert set(results["gt_seg_map"].unique().tolist()) <= original
        sizes.add(height)
    assert len(sizes) > 5
    # mmseg's keep-ratio rule: 100x300 into (512 * r, 128 * r) is bounded by the short side at r = 1
    np.random.seed(1)
    out = SegRandomResize(scale=(512, 128), ratio_range=(1.0, 1.0))(_coordinate_sample(100, 300))
    assert out["img"].shape[-2:] == (128, 384)


def test_photometric_distortion_changes_only_the_image():
    np.random.seed(0)
    sample = _coordinate_sample()
    sample["img"][2] = 128
    changed = 0
    for _ in range(8):
        out = SegPhotoMetricDistortion()(dict(img=sample["img"].clone(), gt_seg_map=sample["gt_seg_map"].clone()))
        assert out["img"].dtype == torch.uint8 and out["img"].shape == sample["img"].shape
        assert torch.equal(out["gt_seg_map"], sample["gt_seg_map"])
        changed += not torch.equal(out["img"], sample["img"])
    assert changed >= 4


def test_train_pipeline_and_preprocessor(scenes_root):
    pipeline = [
        dict(type="LoadSegImage"),
        dict(type="LoadSegAnnotations"),
        dict(type="SegRandomResize", scale=(256, 64), ratio_range=(0.5, 2.0)),
        dict(type="SegRandomCrop", crop_size=(48, 48), cat_max_ratio=0.75),
        dict(type="SegRandomFlip", prob=0.5),
        dict(type="SegPhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    dataset = ADE20KSegDataset(str(scenes_root), classes=SCENE_CLASSES, pipeline=pipeline)
    np.random.seed(0)
    items = [dataset[i] for i in range(8)]
    allowed = set(range(NUM_CLASSES)) | {255}
    for item in items:
        height, width = item["inputs"].shape[-2:]
        assert height <= 48 and width <= 48  # 32 px (ratio 0.5) images stay smaller than the crop
        assert set(item["data_samples"].gt_sem_seg.data.unique().tolist()) <= allowed
    assert any(item["inputs"].shape[-1] < 48 for item in items)

    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    pre = SegDataPreProcessor(mean=mean, std=std, size=(48, 48))
    batch = pre(dict(inputs=[i["inputs"] for i in items], data_samples=[i["data_samples"] for i in items]), True)
    assert batch["inputs"].shape == (8, 3, 48, 48)
    for image, item, sample in zip(batch["inputs"], items, batch["data_samples"]):
        height, width = item["inputs"].shape[-2:]
        expected = (item["inputs"].float() - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        assert torch.allclose(image[:, :height, :width], expected)
        assert (image[:, height:] == 0).all() and (image[:, :, width:] == 0).all()
        label = sample.gt_sem_seg.data[0]
        assert label.shape == (48, 48) and (label[height:] == 255).all() and (label[:, width:] == 255).all()
        assert sample.padding_size == (0, 48 - width, 0, 48 - height)
