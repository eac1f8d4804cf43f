"""An mmengine model around any timm classifier, built by name."""
from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
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
        ``"loss"``: ``{"loss": cross-entropy}`` (with ``label_smoothing``). With ``mixup``,
        in training mode, the batch is first mixed by timm's ``Mixup`` (MixUp / CutMix on
        the whole batch, labels become smoothed soft targets) and the loss is timm's
        ``SoftTargetCrossEntropy``, as in the DeiT/Vim recipes; the batch size must be even.
        ``"predict"``: one dict per image, ``pred_score`` (softmax, ``(num_classes,)``),
        ``pred_label`` and, when labelled, ``gt_label`` (ints), the format
        ``mambazoo.engine.Accuracy`` reads.
        ``"tensor"``: the logits ``(batch, num_classes)``.

    Args:
        model_name: a timm model name (``import mambazoo`` names included).
        pretrained: passed to ``timm.create_model``.
        label_smoothing: for the training loss (also the smoothing of Mixup's soft targets).
        mixup: ``timm.data.Mixup`` keywords, e.g. ``dict(mixup_alpha=0.8, cutmix_alpha=1.0)``
            (``num_classes`` and ``label_smoothing`` come from the model and this wrapper);
            ``None``: no mixing. Its random draws use NumPy's global RNG, which
            ``EpochSeedHook`` seeds per epoch, so resumed runs mix identically.
        **model_kwargs: passed to ``timm.create_model`` (``num_classes``,
            ``in_chans``, ``img_size``, ``drop_path_rate``, ...).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        label_smoothing: float = 0.0,
        mixup: dict | None = None,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.model = timm.create_model(model_name, pretrained=pretrained, **model_kwargs)
        self.label_smoothing = label_smoothing
        self.mixup = None
        if mixup is not None:
            if {"num_classes", "label_smoothing"} & set(mixup):
                raise ValueError("mixup must not set num_classes or label_smoothing: they come from the model and label_smoothing")
            self.mixup = Mixup(**mixup, label_smoothing=label_smoothing, num_classes=self.model.num_classes)
            self.soft_target_loss = SoftTargetCrossEntropy()

    def forward(
        self,
        inputs: torch.Tensor,
        data_samples: torch.Tensor | None = None,
        mode: str = "tensor",
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]] | torch.Tensor:
        if mode == "loss":
            if data_samples is None:
                raise ValueError("mode='loss' needs data_samples (the labels)")
            if self.mixup is not None and self.training:
                if inputs.shape[0] % 2:
                    raise ValueError(f"Mixup needs an even batch size, got {inputs.shape[0]} (set drop_last=True)")
                inputs, soft_targets = self.mixup(inputs, data_samples)
                return {"loss": self.soft_target_loss(self.model(inputs), soft_targets)}
            loss = F.cross_entropy(self.model(inputs), data_samples, label_smoothing=self.label_smoothing)
            return {"loss": loss}
        logits = self.model(inputs)
        if mode == "tensor":
            return logits
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
