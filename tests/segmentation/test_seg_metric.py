"""IoUMetric against a confusion matrix worked out by hand."""
import math

import pytest
import torch

from mambazoo.engine.seg_metric import IoUMetric, intersect_and_union

# Two 3 x 4 images, 4 classes (class 3 never occurs), 255 = ignored.
LABEL_A = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]]
PRED_A = [[0, 1, 1, 1], [0, 0, 1, 2], [2, 0, 3, 0]]
LABEL_B = [[1, 1, 1, 1], [0, 0, 0, 0], [255, 255, 255, 255]]
PRED_B = [[1, 1, 0, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
# Confusion over the labelled pixels (rows: label, columns: prediction), both images:
#   label 0: A 3 x pred 0, 1 x pred 1;  B 3 x pred 0, 1 x pred 1      -> [6, 2, 0, 0]
#   label 1: A 3 x pred 1, 1 x pred 2;  B 3 x pred 1, 1 x pred 0      -> [1, 6, 1, 0]
#   label 2: A 1 x pred 2, 1 x pred 0                                 -> [1, 0, 1, 0]
# intersect [6, 6, 1, 0]; label areas [8, 8, 2, 0]; pred areas [8, 8, 2, 0]
# union = pred + label - intersect = [10, 10, 3, 0]
IOU = [6 / 10, 6 / 10, 1 / 3]  # class 3: 0 / 0, left out of the mean
ACC = [6 / 8, 6 / 8, 1 / 2]


def _sample(pred, label):
    return dict(pred_sem_seg=dict(data=torch.tensor([pred])), gt_sem_seg=dict(data=torch.tensor([label])))


def test_areas_of_one_image():
    intersect, union, area_pred, area_label = intersect_and_union(torch.tensor(PRED_A), torch.tensor(LABEL_A), 4)
    assert intersect.tolist() == [3, 3, 1, 0]
    assert area_label.tolist() == [4, 4, 2, 0]
    assert area_pred.tolist() == [4, 4, 2, 0]  # the ignored pixels' predictions (3, 0) do not count
    assert union.tolist() == [5, 5, 3, 0]


def test_metric_matches_the_hand_computation():
    metric = IoUMetric(num_classes=4)
    metric.dataset_meta = dict(classes=("a", "b", "c", "d"))
    metric.process({}, [_sample(PRED_A, LABEL_A)])
    metric.process({}, [_sample(PRED_B, LABEL_B)])
    results = metric.compute_metrics(metric.results)
    assert results["aAcc"] == pytest.approx(round(100 * 13 / 18, 2))
    assert results["mIoU"] == pytest.approx(round(100 * sum(IOU) / 3, 2))
    assert results["mAcc"] == pytest.approx(round(100 * sum(ACC) / 3, 2))
    assert not math.isnan(results["mIoU"])


def test_perfect_and_trivial_predictions():
    label = torch.tensor([[0, 0, 1, 2]])
    metric = IoUMetric(num_classes=3)
    metric.process({}, [_sample(label[0].tolist(), label[0].tolist())])
    assert metric.compute_metrics(metric.results) == dict(aAcc=100.0, mIoU=100.0, mAcc=100.0)
    metric = IoUMetric(num_classes=3)
    metric.process({}, [_sample([0, 0, 0, 0], label[0].tolist())])
    # class 0: IoU 2/4, classes 1, 2: 0
    assert metric.compute_metrics(metric.results) == dict(aAcc=50.0, mIoU=round(100 / 6, 2), mAcc=round(100 / 3, 2))


def test_errors():
    with pytest.raises(ValueError, match="labels must be in"):
        intersect_and_union(torch.tensor([0, 1]), torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="predictions must be in"):
        intersect_and_union(torch.tensor([0, 7]), torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match="same shape"):
        intersect_and_union(torch.zeros(2, 2), torch.zeros(4), 4)
    with pytest.raises(ValueError, match="num_classes or a dataset"):
        IoUMetric().process({}, [_sample([0], [0])])
