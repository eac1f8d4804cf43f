"""End to end: tools/train.py with configs/vim_upernet_scenes.py on the real composite scenes."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _seg_helpers import NUM_CLASSES, SCENES
from PIL import Image

from mambazoo.data import DEBIAN_FASHION_MNIST_DIR
from mambazoo.engine.seg_metric import intersect_and_union, segmentation_scores

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/vim_upernet_scenes.py"

pytestmark = pytest.mark.skipif(
    not Path(DEBIAN_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


def best_constant_miou(root: Path) -> float:
    """mIoU (percent) of the best single-class predictor on the validation labels."""
    labels = []
    for path in sorted((root / "annotations" / "validation").glob("*.png")):
        png = torch.from_numpy(np.array(Image.open(path))).long()
        labels.append(torch.where(png == 0, 255, png - 1))  # reduce_zero_label
    best = 0.0
    for cls in range(NUM_CLASSES):
        areas = [intersect_and_union(torch.full_like(label, cls), label, NUM_CLASSES) for label in labels]
        totals = [torch.stack(a).sum(0) for a in zip(*areas)]
        best = max(best, segmentation_scores(*totals)["mIoU"].item() * 100)
    return best


def test_train_then_test_on_composite_scenes(tmp_path, fashion_mnist_root):
    data_root = tmp_path / "scenes"  # built by the dataset on first use, inside the run
    build = dict(SCENES, fashion_mnist_root=str(fashion_mnist_root))
    options = [
        "train_cfg.max_iters=40", "train_cfg.val_interval=40", "default_hooks.checkpoint.interval=40",
        "default_hooks.logger.interval=5", "param_scheduler.0.end=5", "param_scheduler.1.begin=5",
        "param_scheduler.1.end=40", "optim_wrapper.optimizer.lr=6e-3", "train_dataloader.batch_size=8",
        # the 4-block test_vim at embed 32; 64 px scenes resized by 0.5-2 (scale (256, 64), the
        # nominal size: the config's (512, 128) over 2) and cropped to 64 px
        "model.backbone.embed_dim=32", "model.backbone.d_state=4", "model.backbone.img_size=64",
        "model.backbone.out_channels=32", "model.decode_head.in_channels=[32,32,32,32]",
        "model.decode_head.channels=32", "model.auxiliary_head.in_channels=32", "model.auxiliary_head.channels=16",
        "model.data_preprocessor.size=(64,64)", "train_dataloader.dataset.pipeline.2.scale=(256,64)",
        "train_dataloader.dataset.pipeline.3.crop_size=(64,64)",
    ]
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        options += [f"{loader}.num_workers=0", f"{loader}.persistent_workers=False",
                    f"{loader}.dataset.data_root={data_root}"]
        options += [f"{loader}.dataset.build.{k}={v}" for k, v in build.items()]
    for loader in ("val_dataloader", "test_dataloader"):
        options.append(f"{loader}.dataset.pipeline.1.scale=(256,64)")  # evaluated at 64 px
    work_dir = tmp_path / "work"
    command = [sys.executable, "tools/train.py", CONFIG, "--work-dir", str(work_dir), "--cfg-options", *options]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert json.loads((data_root / "scenes.json").read_text())["num_train"] == SCENES["num_train"]
    losses = [p["loss"] for p in json.loads((work_dir / "curves.json").read_text())["train"]]
    assert len(losses) == 40
    # The first-step loss is ~1.4 x ln(13) = 3.6 (decode + 0.4 x aux at uniform logits). This run
    # measured 2.69 over its last 5 steps (seed 0); a model that does not learn stays near 3.6.
    assert np.mean(losses[-5:]) < 0.85 * losses[0]

    metrics = json.loads((work_dir / "test_metrics.json").read_text())["metrics"]
    trivial = best_constant_miou(data_root)
    # Measured (seed 0): best constant class 3.0 %, the model 6.4 % after 40 steps (aAcc 40 %).
    assert metrics["mIoU"] > 1.5 * trivial, (metrics, trivial)
    assert (work_dir / "iter_40.pth").is_file()
    assert (work_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
