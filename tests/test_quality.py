"""GT-free numbers of single images and their per-class sums, by hand."""

import numpy as np
import pytest

from labelgen.data.manifest import ImageRecord
from labelgen.numerics.quality import SplitTally, image_quality, rank_key


def _record(tags: tuple[int, ...]) -> ImageRecord:
    return ImageRecord("a", "/x.png", 4, 2, tags, None, "train", "")


def test_an_image_record_counts_found_tags_shares_and_untagged_labels():
    pseudo = np.array([[0, 1, 1, 0], [0, 1, 1, 255]], np.uint8)  # tag 2 lost; ignore pixel left out
    pred = np.array([[0, 1, 3, 0], [0, 1, 1, 0]], np.uint8)  # label 3 is not a tag
    rec = image_quality(_record((1, 2)), "train", {"pseudo_labels": pseudo, "predict_train": pred}, 4, [0.9, 0.2], {})
    assert rec["found"] == {"pseudo_labels": [True, False], "predict_train": [True, False]}
    assert rec["share"]["pseudo_labels"] == pytest.approx([4 / 7, 0.0])
    assert rec["foreground"]["predict_train"] == pytest.approx(4 / 8)
    assert rec["spurious"] == {"pseudo_labels": [], "predict_train": [3]}
    assert rec["final"] == "predict_train" and not rec["gt"]
    assert rank_key(rec) == (0.5, 0.5)  # no agreement given: the share of tags the final mask holds
    rec["agreement"] = 0.25
    assert rank_key(rec) == (0.25, 0.25)
    rec.update(gt=True, iou={"predict_train": 0.75})
    assert rank_key(rec) == (0.25, 0.75)  # ranked by GT where there is GT


def test_an_untagged_image_scores_by_how_much_of_it_stays_background():
    pred = np.array([[0, 0, 0, 2]], np.uint8)
    rec = image_quality(_record(()), "val", {"predict_val": pred}, 3, [], {})
    assert rank_key(rec) == (0.75, 0.75)
    rec["agreement"] = 0.375  # all-background pseudo-label vs one stray pixel: (0.75 + 0) / 2; not the score
    assert rank_key(rec) == (0.75, 0.75)
    tally = SplitTally(3)
    tally.add(rec)
    out = tally.result(None)
    assert out["sources"]["predict_val"]["spurious"] == [0, 0, 1]
    # no tag to find: not one of the "tagged images with every tag found" (0 of 0 found is no success)
    assert out["images"] == 1 and out["tagged_images"] == 0 and out["sources"]["predict_val"]["all_tags_found"] == 0


def test_split_tally_sums_per_class():
    tally = SplitTally(4)
    masks = [np.array([[1, 1, 0, 0]], np.uint8), np.array([[2, 0, 0, 0]], np.uint8)]
    for tags, mask, conf in (((1,), masks[0], [0.8]), ((1, 2), masks[1], [0.4, 0.6])):
        tally.add(image_quality(_record(tags), "train", {"pseudo_labels": mask}, 4, conf, {}))
    out = tally.result(None)
    assert out["tagged"] == [0, 2, 1, 0]
    assert out["confidence"][3] is None  # no image tagged 3
    assert out["confidence"][1] == pytest.approx(0.6) and out["confidence"][2] == pytest.approx(0.6)
    assert out["mean_confidence"] == pytest.approx((0.8 + 0.4 + 0.6) / 3) and out["low_confidence_images"] == 1
    src = out["sources"]["pseudo_labels"]
    assert src["found"] == [0, 1, 1, 0] and src["found_share"][1:] == [0.5, 1.0, None]
    assert src["area_share"][1] == pytest.approx((0.5 + 0.0) / 2) and src["all_tags_found"] == 1
