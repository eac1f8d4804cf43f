"""Semantic segmentation metric (mIoU, mAcc, aAcc) for mmengine's evaluator, as mmseg's ``IoUMetric``."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger
from mmengine.registry import METRICS

__all__ = ["IoUMetric", "intersect_and_union", "segmentation_scores"]


def intersect_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """Per-class pixel areas of one image: ``(intersect, union, pred, label)``, each int64 ``(num_classes,)``.

    ``pred`` and ``label`` are integer maps of one shape; pixels whose label is ``ignore_index``
    count nowhere. Labels outside ``[0, num_classes)`` (other than the ignore index) are an error.
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} must have the same shape")
    valid = label != ignore_index
    pred, label = pred[valid].long(), label[valid].long()
    for name, values in (("labels", label), ("predictions", pred)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must be in [0, {num_classes}) (labels: or {ignore_index}), got {values.unique().tolist()}"
            )
    confusion = torch.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    confusion = confusion.view(num_classes, num_classes)  # rows: label, columns: prediction
    intersect = confusion.diagonal()
    area_pred, area_label = confusion.sum(0), confusion.sum(1)
    return intersect, area_pred + area_label - intersect, area_pred, area_label


def segmentation_scores(intersect, union, area_pred, area_label) -> Dict[str, torch.Tensor]:
    """From summed areas: per-class ``IoU`` and ``Acc`` (NaN for classes absent from labels and
    predictions, resp. labels) and the scalars ``aAcc`` (all labelled pixels), ``mIoU`` and
    ``mAcc`` (means over the non-NaN classes), all as fractions in float64."""
    intersect, union, area_label = (t.double() for t in (intersect, union, area_label))
    iou = intersect / union  # 0 / 0 -> NaN: class never seen
    acc = intersect / area_label
    return dict(
        IoU=iou,
        Acc=acc,
        aAcc=intersect.sum() / area_label.sum(),
        mIoU=iou.nanmean(),
        mAcc=acc.nanmean(),
    )


@METRICS.register_module()
class IoUMetric(BaseMetric):
    """``aAcc``, ``mIoU``, ``mAcc`` in percent (2 decimals, mmseg's convention) over a dataset.

    Reads ``pred_sem_seg.data`` and ``gt_sem_seg.data`` ``(1, H, W)`` of each predicted data
    sample (``SegEncoderDecoder``'s ``"predict"`` mode). Only four ``(num_classes,)`` area
    vectors are kept per image. The per-class IoU / Acc table is written to the log.

    Args:
        num_classes: Number of classes (default: ``len(dataset_meta["classes"])``).
        ignore_index: Label value that is not scored.
    """

    def __init__(
        self,
        num_classes: Optional[int] = None,
        ignore_index: int = 255,
        collect_device: str = "cpu",
        prefix: Optional[str] = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _classes(self) -> Sequence[str]:
        """Class names: the dataset's, or the indices when ``num_classes`` differs from them."""
        classes = (self.dataset_meta or {}).get("classes")
        if self.num_classes is None and classes is None:
            raise ValueError("IoUMetric needs num_classes or a dataset whose metainfo has 'classes'")
        if classes is None or (self.num_classes is not None and len(classes) != self.num_classes):
            return [str(i) for i in range(self.num_classes)]
        return classes

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        num_classes = len(self._classes())
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze(0)
            label = sample["gt_sem_seg"]["data"].squeeze(0).to(pred.device)
            areas = intersect_and_union(pred, label, num_classes, self.ignore_index)
            self.results.append(tuple(area.cpu() for area in areas))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if not results:
            raise ValueError("IoUMetric got no predictions: is the evaluation dataset empty?")
        totals = [torch.stack(areas).sum(0) for areas in zip(*results)]
        scores = segmentation_scores(*totals)
        lines = [f"{'class':>20} {'IoU':>7} {'Acc':>7}"]
        for name, iou, acc in zip(self._classes(), scores["IoU"].tolist(), scores["Acc"].tolist()):
            lines.append(f"{name:>20} {iou * 100:7.2f} {acc * 100:7.2f}")
        MMLogger.get_current_instance().info("per-class results:\n" + "\n".join(lines))
        return {key: round(scores[key].item() * 100, 2) for key in ("aAcc", "mIoU", "mAcc")}
