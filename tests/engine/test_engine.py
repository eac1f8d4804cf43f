"""Unit tests of the mmengine glue: metric, classifier wrapper, optimizer constructor, hooks,
checkpoint trust."""
from types import SimpleNamespace

import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.registry import HOOKS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from mambazoo.engine import (
    Accuracy,
    TimmClassifier,
    TimmOptimWrapperConstructor,
    TrainingCurvesHook,
    trust_checkpoints_under,
)
from mambazoo.engine import checkpoint as checkpoint_module

TINY_VIM = dict(model_name="test_vim", img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2)


def _samples(scores, labels):
    return [{"pred_score": torch.tensor(s), "gt_label": y} for s, y in zip(scores, labels)]


def test_accuracy_top1_and_top2():
    metric = Accuracy(topk=(1, 2))
    scores = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]]
    labels = [0, 2, 0, 1]
    # top-1 hits: image 0 only; top-2 adds images 1 (0.3 second) and 3 (0.4 second), not 2
    metric.process(None, _samples(scores[:2], labels[:2]))
    metric.process(None, _samples(scores[2:], labels[2:]))
    assert metric.compute_metrics(metric.results) == {"top1": 0.25, "top2": 0.75}


def test_accuracy_through_the_evaluator_and_registry():
    evaluator = Evaluator(dict(type="Accuracy", topk=(1, 5)))
    evaluator.process(_samples([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], [1, 1, 1]))
    metrics = evaluator.evaluate(3)
    assert metrics == pytest.approx({"accuracy/top1": 2 / 3, "accuracy/top5": 1.0})
    assert METRICS.get("Accuracy") is Accuracy


def test_accuracy_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Accuracy(topk=0)
    with pytest.raises(ValueError, match="no predictions"):
        Accuracy().compute_metrics([])


def test_classifier_modes():
    torch.manual_seed(0)
    model = MODELS.build(dict(type="TimmClassifier", label_smoothing=0.1, **TINY_VIM))
    assert isinstance(model, TimmClassifier)
    inputs, labels = torch.randn(3, 1, 28, 28), torch.tensor([0, 4, 9])

    logits = model(inputs, mode="tensor")
    assert logits.shape == (3, 10)
    loss = model(inputs, labels, mode="loss")["loss"]
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)

    predictions = model(inputs, labels, mode="predict")
    assert [p["gt_label"] for p in predictions] == [0, 4, 9]
    assert [p["pred_label"] for p in predictions] == logits.argmax(-1).tolist()
    torch.testing.assert_close(torch.stack([p["pred_score"] for p in predictions]), logits.softmax(-1))
    assert "gt_label" not in model(inputs, mode="predict")[0]
    with pytest.raises(ValueError):
        model(inputs, mode="features")


def test_timm_optimizer_constructor_groups():
    model = TimmClassifier(**TINY_VIM)
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type="TimmOptimWrapperConstructor",
            optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="adamw", lr=1e-3, weight_decay=0.05)),
        )
    )
    assert isinstance(constructor, TimmOptimWrapperConstructor)
    optimizer = constructor(model).optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.model.named_parameters())
    assert len(decay_of) == len(names)  # every parameter is optimised
    # what the model names in no_weight_decay() (A_log, D, pos_embed, ...) gets none, the mixer
    # projections do
    skipped = [n for n in names if n.endswith(("A_log", "D", "pos_embed", "cls_token"))]
    assert skipped and all(decay_of[id(names[n])] == 0.0 for n in skipped)
    assert decay_of[id(names["layers.0.mixer.in_proj.weight"])] == 0.05


def test_timm_optimizer_constructor_layer_decay_scales_lr():
    model = TimmClassifier(**TINY_VIM)
    constructor = TimmOptimWrapperConstructor(
        dict(optimizer=dict(type="adamw", lr=1e-3, weight_decay=0.05)), paramwise_cfg=dict(layer_decay=0.5)
    )
    lrs = sorted({g["lr"] for g in constructor(model).optimizer.param_groups})
    # layer decay must reach mmengine's schedulers through each group's own lr
    assert lrs[-1] == pytest.approx(1e-3) and lrs[0] < 1e-3


def test_curves_hook_writes_png_and_survives_resume(tmp_path):
    hook = HOOKS.build(dict(type="TrainingCurvesHook", smooth=3))
    assert isinstance(hook, TrainingCurvesHook)
    optim_wrapper = SimpleNamespace(get_lr=lambda: {"lr": [1e-3]})
    runner = SimpleNamespace(iter=0, epoch=0, optim_wrapper=optim_wrapper, work_dir=str(tmp_path))
    hook.before_train(runner)
    for epoch in range(2):  # mmengine's order: iterations, after_train_epoch, epoch += 1, validation
        for i in range(3):
            runner.iter = 3 * epoch + i
            hook.after_train_iter(runner, i, outputs={"loss": torch.tensor(2.0 - runner.iter / 10, requires_grad=True)})
        hook.after_train_epoch(runner)
        runner.epoch, runner.iter = epoch + 1, 3 * epoch + 3
        hook.after_val_epoch(runner, {"accuracy/top1": 0.5 + epoch / 10})

    resumed = TrainingCurvesHook(smooth=3)
    runner.epoch, runner.iter = 1, 3  # resumed from epoch_1.pth: later points are dropped
    resumed.before_train(runner)
    assert [p["iter"] for p in resumed.history["train"]] == [1, 2, 3]
    assert [p["epoch"] for p in resumed.history["val"]] == [1]
    resumed.after_test_epoch(runner, {"accuracy/top1": 0.6})
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runner.iter = 0  # a fresh run in the same work dir starts empty
    resumed.before_train(runner)
    assert resumed.history == {"train": [], "val": [], "test": {}, "by_epoch": True}


def test_checkpoint_trust_is_scoped_to_the_work_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "_TRUSTED", [])
    run_state = {"meta": {"epoch": 1}, "message_hub": {"stats": SimpleNamespace(min=min)}}
    inside, outside = tmp_path / "work" / "epoch_1.pth", tmp_path / "elsewhere.pth"
    inside.parent.mkdir()
    torch.save(run_state, inside)
    torch.save(run_state, outside)

    from mmengine.runner.checkpoint import _load_checkpoint

    trust_checkpoints_under(tmp_path / "work")
    assert _load_checkpoint(str(inside))["meta"] == {"epoch": 1}
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        _load_checkpoint(str(outside))


def test_layer_decay_groups_are_what_the_model_declares():
    """Each parameter's lr is base * decay ** (depth - layer id) with the layer ids the model's
    group_matcher declares under timm's grouping rules (stem 0, layers.i -> i + 1, norm_f with the
    last block, the unmatched head above it at depth + 1 with the full lr), and the weight decay is 0 exactly on 1-D parameters and no_weight_decay() names."""
    model = TimmClassifier(**{**TINY_VIM, "depth": 3})
    decay, depth = 0.5, 3
    optimizer = TimmOptimWrapperConstructor(
        dict(optimizer=dict(type="adamw", lr=1e-3, weight_decay=0.05)), paramwise_cfg=dict(layer_decay=decay)
    )(model).optimizer
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    no_decay = model.model.no_weight_decay()
    for name, param in model.model.named_parameters():
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            layer = 0
        elif name.startswith("layers."):
            layer = int(name.split(".")[1]) + 1
        elif name.startswith("norm_f"):
            layer = depth
        else:
            assert name.startswith("head"), name
            layer = depth + 1
        group = group_of[id(param)]
        assert group["lr"] == pytest.approx(1e-3 * decay ** (depth + 1 - layer)), name
        expected_wd = 0.0 if (param.ndim <= 1 or name in no_decay) else 0.05
        assert group["weight_decay"] == expected_wd, name
