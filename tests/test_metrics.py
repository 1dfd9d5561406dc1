import math

import numpy as np
import pytest

from labelgen.numerics.metrics import SELECTION_THRESHOLDS, cam_threshold_sweep, confusion_matrix, scores


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


def test_tag_agreement_counts_a_tagged_class_both_maps_lost_as_zero():
    from labelgen.numerics.metrics import tag_agreement

    a = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)
    b = np.array([[0, 0, 0, 1], [0, 0, 1, 1]], np.uint8)
    cm = confusion_matrix(a, b, 4)
    # background IoU 4/5, class 1 IoU 3/4; tag 2 is in neither map: 0, not left out
    assert tag_agreement(cm, (1,)) == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert tag_agreement(cm, (1, 2)) == pytest.approx((4 / 5 + 3 / 4 + 0) / 3)
    assert tag_agreement(confusion_matrix(a, a, 4), (1,)) == 1.0
    # a label only one map holds (here 3, untagged) counts 0 too
    c = np.where(b == 1, 3, b).astype(np.uint8)
    assert tag_agreement(confusion_matrix(a, c, 4), (1,)) == pytest.approx((4 / 5 + 0 + 0) / 3)


def test_label_shares_leave_ignore_out():
    from labelgen.numerics.metrics import label_shares

    mask = np.array([[0, 1, 1, 255], [2, 2, 2, 255]], np.uint8)
    shares = label_shares(mask, 4)
    assert shares.tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6, 0.0])
    assert label_shares(np.full((2, 2), 255, np.uint8), 4).tolist() == [0, 0, 0, 0]


def test_cam_threshold_sweep_counts_each_thresholds_label_map():
    """One 1×4 image, one map of label 2: a pixel is 2 where its CAM value beats the threshold
    (ties go to background), so each threshold moves a known number of pixels."""
    maps = np.array([[[0.2, 0.4, 0.6, 0.8]]], np.float32)
    gt = np.array([[0, 0, 2, 2]], np.uint8)
    sweep = cam_threshold_sweep(gt, maps, np.array([2]), (0.1, 0.4, 0.7, 0.9), 3)
    assert sweep.shape == (4, 3, 3) and sweep.dtype == np.int64
    # rows GT, columns prediction: [GT 0 -> pred 0, GT 0 -> pred 2, GT 2 -> pred 0, GT 2 -> pred 2]
    got = [(cm[0, 0], cm[0, 2], cm[2, 0], cm[2, 2]) for cm in sweep]
    assert got == [(0, 2, 0, 2), (2, 0, 0, 2), (2, 0, 1, 1), (2, 0, 2, 0)]
    assert sweep[:, 1].sum() == 0 and sweep[:, :, 1].sum() == 0


def test_selection_grid_is_the_hundredths_from_030_to_060():
    assert SELECTION_THRESHOLDS[0] == 0.30 and SELECTION_THRESHOLDS[-1] == 0.60 and len(SELECTION_THRESHOLDS) == 31
    assert np.allclose(np.diff(SELECTION_THRESHOLDS), 0.01) and 0.43 in SELECTION_THRESHOLDS
