import math

import numpy as np
import pytest

from labelgen.metrics import confusion_matrix, scores


def test_confusion_and_scores_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 2]], np.uint8)
    cm = confusion_matrix(gt, pred, 4)
    assert cm.sum() == 6  # ignore pixels left out
    s = scores(cm)
    assert s["iou"][0] == pytest.approx(1 / 3)  # tp 1, gt 2, pred 2
    assert s["iou"][1] == pytest.approx(2 / 3)
    assert s["iou"][2] == pytest.approx(1 / 2)
    assert math.isnan(s["iou"][3])  # absent everywhere: left out of the mean
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["precision"][1] == pytest.approx(2 / 3) and s["recall"][1] == pytest.approx(1.0)


def test_predicted_class_absent_from_gt_counts_zero():
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 3], [0, 0]], np.uint8)
    s = scores(confusion_matrix(gt, pred, 4))
    assert s["iou"][3] == 0.0
    assert s["miou"] == pytest.approx((3 / 4 + 0) / 2)


def test_labels_outside_the_space_are_refused():
    with pytest.raises(ValueError, match="labels must be"):
        confusion_matrix(np.zeros((1, 1), np.uint8), np.full((1, 1), 9, np.uint8), 4)
