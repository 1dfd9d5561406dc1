"""Issue 21 §5: masks that never contradict the tags. predict.restrict_to_tags keeps the train
split's masks within each image's tags; the raw masks are kept and evaluate scores both."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labelgen.config import PredictParams
from labelgen.pipeline.indexing import load_manifest
from labelgen.pipeline.runner import plan_run
from labelgen.stages.predict import restricted_splits, within_tags
from labelgen.store.sharded import ImageArrays
from tests.conftest import tiny_recipe


def test_within_tags_picks_the_best_allowed_label():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), size=(20, 30)).transpose(2, 0, 1).astype(np.float32)  # L=6, h, w
    tags = (2, 4)
    raw = probs.argmax(0)
    kept = within_tags(probs, tags).argmax(0)
    allowed = np.isin(raw, [0, *tags])
    assert np.isin(kept, [0, *tags]).all()
    assert np.array_equal(kept[allowed], raw[allowed])  # an allowed winner stays
    best = np.array([0, *tags])[probs[[0, *tags]].argmax(0)]
    assert np.array_equal(kept, best)  # elsewhere: the most probable of background and the tags
    assert within_tags(probs, ()).argmax(0).max() == 0  # a negative: background everywhere
    assert probs.sum(0) == pytest.approx(1.0, abs=1e-5)  # the input is not changed


def test_which_splits_are_restricted():
    splits = ["train", "val"]
    assert restricted_splits(PredictParams(), "train", splits) == ["train"]  # the default: the train split
    assert restricted_splits(PredictParams(restrict_to_tags="all"), "train", splits) == splits
    assert restricted_splits(PredictParams(restrict_to_tags="none"), "train", splits) == []


def test_train_masks_keep_within_tags_and_evaluate_scores_both(tiny_full_run):
    plan = {p.stage.name: p.artifact for p in plan_run(tiny_recipe(), tiny_full_run, "full")}
    records = load_manifest(plan["index"]).split("train")
    predict = plan["predict"].path
    kept = ImageArrays(predict / "masks_train.zarr").rows(0, len(records))
    raw = ImageArrays(predict / "unrestricted_train.zarr").rows(0, len(records))
    for r, mask, before in zip(records, kept, raw, strict=True):
        assert np.isin(mask, [0, *r.tags]).all(), r.id  # no class the tags exclude
        if np.isin(before, [0, *r.tags]).all():
            assert np.array_equal(mask, before), r.id  # nothing to keep within: the mask is the raw one
    assert not (predict / "unrestricted_val.zarr").exists()  # val: tags a user may not have
    metrics = json.loads((plan["evaluate"].path / "metrics.json").read_text())
    assert {"predict_train", "predict_train_unrestricted", "predict_val"} <= set(metrics)
    sources = metrics["gt_free"]["train"]["sources"]
    assert list(sources)[-1] == "predict_train"  # the exported masks are each image's final mask
    assert "negative_foreground" in sources["predict_train"]
