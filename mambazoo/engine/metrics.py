"""Classification metrics for mmengine's evaluator (mmengine itself ships none)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS

__all__ = ["Accuracy"]


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy, reported as ``accuracy/top1``, ``accuracy/top5``, ...

    Reads the per-image dicts of ``TimmClassifier``'s ``"predict"`` mode:
    ``pred_score`` (``(num_classes,)`` tensor) and ``gt_label`` (int). Only the
    per-k hit flags are kept between batches, not the scores, so memory stays
    small for large test sets.

    Args:
        topk: the k values; a k above the number of classes counts every image as a hit.
    """

    default_prefix = "accuracy"

    def __init__(
        self,
        topk: int | Sequence[int] = (1,),
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = (topk,) if isinstance(topk, int) else tuple(topk)
        if not self.topk or min(self.topk) < 1:
            raise ValueError(f"topk must be positive integers, got {topk!r}")

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            score = torch.as_tensor(sample["pred_score"])
            target = int(sample["gt_label"])
            k_max = min(max(self.topk), score.numel())
            top = score.topk(k_max).indices.tolist()
            self.results.append({k: target in top[:k] for k in self.topk})

    def compute_metrics(self, results: list[dict[int, bool]]) -> dict[str, float]:
        if not results:
            raise ValueError("Accuracy got no predictions: is the evaluation dataset empty?")
        return {f"top{k}": sum(hits[k] for hits in results) / len(results) for k in self.topk}
