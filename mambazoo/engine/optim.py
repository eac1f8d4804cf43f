"""Optimizers from timm's factory, wrapped for mmengine."""
from __future__ import annotations

import copy

import timm.optim
import torch
import torch.nn as nn
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS

__all__ = ["AutocastOptimWrapper", "TimmOptimWrapperConstructor"]


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` that also runs on a machine without an accelerator.

    With CUDA (or another device mmengine's wrapper accepts) it *is* ``AmpOptimWrapper``,
    argument for argument: autocast to ``dtype`` around forward and loss, a ``GradScaler``
    (``loss_scale``), its state in the checkpoint, gradients unscaled before clipping.
    mmengine's class refuses to be built without a GPU; on CPU this one autocasts to
    bfloat16 (the only CPU autocast dtype; fp16 raises ``ValueError``) with no loss scaling
    (a disabled scaler: bf16 has fp32's exponent range), so the same recipe runs in CPU tests.
    The selective-scan state and accumulation stay fp32 under autocast (the kernels' contract).
    """

    def __init__(self, loss_scale="dynamic", dtype=None, use_fsdp: bool = False, **kwargs) -> None:
        if torch.cuda.is_available():
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp, **kwargs)
            return
        if dtype not in (None, "bfloat16", torch.bfloat16):
            raise ValueError(f"dtype must be 'bfloat16' for CPU autocast, got {dtype!r}")
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.cast_dtype = torch.bfloat16


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TimmOptimWrapperConstructor:
    """Build the optimizer with ``timm.optim.create_optimizer_v2``.

    timm's factory gives the parameter groups the zoo relies on: no weight
    decay on 1-D parameters and on what the model's ``no_weight_decay()``
    names (``A_log``, ``D``, ``pos_embed``, ``cls_token``), and layer-wise lr
    decay through the model's ``group_matcher``. It is applied to the timm
    model inside the mmengine model (its ``model`` attribute, as in
    ``TimmClassifier``), which must own every trainable parameter.

    Config::

        optim_wrapper = dict(
            type="OptimWrapper",                      # or AmpOptimWrapper, ...
            optimizer=dict(type="adamw", lr=1e-3, weight_decay=0.05),  # timm opt name + kwargs
            paramwise_cfg=dict(layer_decay=0.75),     # other create_optimizer_v2 kwargs
            constructor="TimmOptimWrapperConstructor",
            clip_grad=dict(max_norm=1.0),
        )

    mmengine's schedulers scale each group's own ``lr``, and ignore timm's
    ``lr_scale``, so the layer-decay scale is folded into each group's ``lr``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        if "optimizer" not in optim_wrapper_cfg:
            raise ValueError("optim_wrapper_cfg needs an 'optimizer' dict")
        self.optim_wrapper_cfg = copy.deepcopy(dict(optim_wrapper_cfg))
        self.optimizer_cfg = dict(self.optim_wrapper_cfg.pop("optimizer"))
        self.paramwise_cfg = dict(paramwise_cfg or {})

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if is_model_wrapper(model):
            model = model.module
        timm_model = getattr(model, "model", model)
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        covered = {id(p) for p in timm_model.parameters() if p.requires_grad}
        if trainable != covered:
            raise ValueError(
                f"{type(model).__name__} has trainable parameters outside its timm model "
                "`.model`; TimmOptimWrapperConstructor would not optimise them"
            )

        optimizer_cfg = dict(self.optimizer_cfg)
        opt = optimizer_cfg.pop("type")
        optimizer = timm.optim.create_optimizer_v2(timm_model, opt=opt, **optimizer_cfg, **self.paramwise_cfg)
        for group in optimizer.param_groups:
            group["lr"] *= group.pop("lr_scale", 1.0)

        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        wrapper_cfg["optimizer"] = optimizer
        return OPTIM_WRAPPERS.build(wrapper_cfg)
