"""An mmengine model around any timm classifier, built by name."""
from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.registry import MODELS

import mambazoo.models  # noqa: F401  (registers the zoo's models with timm)

__all__ = ["TimmClassifier"]


@MODELS.register_module()
class TimmClassifier(BaseModel):
    """``timm.create_model(model_name, **model_kwargs)`` with mmengine's forward modes.

    Batches are what ``default_collate`` makes of ``(image, label)`` items:
    ``inputs`` a float tensor ``(batch, channels, height, width)``, ``data_samples``
    an int64 tensor ``(batch,)`` of class indices (``None`` when unlabelled).

    Modes:
        ``"loss"``: ``{"loss": cross-entropy}`` (with ``label_smoothing``).
        ``"predict"``: one dict per image, ``pred_score`` (softmax, ``(num_classes,)``),
        ``pred_label`` and, when labelled, ``gt_label`` (ints), the format
        ``mambazoo.engine.Accuracy`` reads.
        ``"tensor"``: the logits ``(batch, num_classes)``.

    Args:
        model_name: a timm model name (``import mambazoo`` names included).
        pretrained: passed to ``timm.create_model``.
        label_smoothing: for the training loss.
        **model_kwargs: passed to ``timm.create_model`` (``num_classes``,
            ``in_chans``, ``img_size``, ``drop_path_rate``, ...).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        label_smoothing: float = 0.0,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.model = timm.create_model(model_name, pretrained=pretrained, **model_kwargs)
        self.label_smoothing = label_smoothing

    def forward(
        self,
        inputs: torch.Tensor,
        data_samples: torch.Tensor | None = None,
        mode: str = "tensor",
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]] | torch.Tensor:
        logits = self.model(inputs)
        if mode == "tensor":
            return logits
        if mode == "loss":
            if data_samples is None:
                raise ValueError("mode='loss' needs data_samples (the labels)")
            loss = F.cross_entropy(logits, data_samples, label_smoothing=self.label_smoothing)
            return {"loss": loss}
        if mode == "predict":
            scores = logits.float().softmax(dim=-1).cpu()
            labels = scores.argmax(dim=-1).tolist()
            targets = [None] * len(labels) if data_samples is None else data_samples.tolist()
            predictions = []
            for score, label, target in zip(scores, labels, targets):
                prediction = {"pred_score": score, "pred_label": label}
                if target is not None:
                    prediction["gt_label"] = target
                predictions.append(prediction)
            return predictions
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
