"""Stage 2 on the tiny demo: Segmenter pieces, the full DAG, and export round trips."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labelgen.export import export_masks
from labelgen.models.segmenter import Segmenter, SegmenterConfig
from labelgen.pipeline.runner import run_pipeline
from labelgen.stages.predict import window_starts
from labelgen.store.sharded import ImageArrays
from tests.conftest import tiny_recipe


def test_window_starts_cover_and_align_to_the_border():
    assert window_starts(100, 480, 320) == [0]
    assert window_starts(1000, 480, 320) == [0, 320, 520]
    assert window_starts(480, 480, 320) == [0]


def test_segmenter_pads_to_patches_and_crops_back():
    model = Segmenter(SegmenterConfig("deit_tiny_patch16_224", num_labels=4), "hub:deit_tiny_patch16_224.fb_in1k")
    outs = model(torch.randn(2, 3, 50, 70), all_depths=True)
    assert len(outs) == 2 and outs[-1].shape == (2, 4, 50, 70)
    encoder, decoder = model.param_groups()
    assert len(encoder) + len(decoder) == len(list(model.parameters()))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, client):
    run_dir = tmp_path_factory.mktemp("full")
    run_pipeline(tiny_recipe(), run_dir, "full", client)
    return run_dir


def test_full_dag_reports_every_stage(full_run):
    metrics = json.loads(next(full_run.glob("evaluate/*/metrics.json")).read_text())
    assert {"cams", "pseudo_labels", "predict_train", "predict_val"} <= set(metrics)
    assert metrics["predict_val"]["images"] == 8
    report = next(full_run.glob("evaluate/*/report.md")).read_text()
    assert "predict_val" in report


def _stored(run_dir, pattern):
    arrays = ImageArrays(next(run_dir.glob(pattern)))
    return {i: arrays.mask(n) for n, i in enumerate(arrays.ids)}


def test_export_voc_round_trip(full_run, client, tmp_path):
    export_masks(full_run, "pseudo_labels", "voc", tmp_path, client)
    stored = _stored(full_run, "pseudo_labels/*/masks.zarr")
    assert (tmp_path / "ImageSets/Segmentation/train.txt").read_text().split() == list(stored)
    for image_id, mask in stored.items():
        png = Image.open(tmp_path / "SegmentationClass" / f"{image_id}.png")
        assert png.mode == "P" and np.array_equal(np.asarray(png), mask)


def test_export_mmseg_round_trip(full_run, client, tmp_path):
    export_masks(full_run, "predictions", "mmseg", tmp_path, client)
    for split in ("train", "val"):
        stored = _stored(full_run, f"predict/*/masks_{split}.zarr")
        assert (tmp_path / "splits" / f"{split}.txt").read_text().split() == list(stored)
        for image_id, mask in stored.items():
            assert np.array_equal(np.asarray(Image.open(tmp_path / "ann_dir" / split / f"{image_id}.png")), mask)
            assert (tmp_path / "img_dir" / split / f"{image_id}.png").is_file()


def test_export_coco_loads_in_pycocotools(full_run, client, tmp_path):
    export_masks(full_run, "pseudo_labels", "coco", tmp_path, client)
    coco = COCO(str(tmp_path / "pseudo_labels_train.json"))
    stored = _stored(full_run, "pseudo_labels/*/masks.zarr")
    names = {img["file_name"].removesuffix(".png"): img["id"] for img in coco.dataset["images"]}
    assert set(names) == set(stored)
    for image_id, mask in stored.items():
        rebuilt = np.zeros_like(mask)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[names[image_id]])):
            rebuilt[coco_mask.decode(ann["segmentation"]).astype(bool)] = ann["category_id"]
        assert np.array_equal(rebuilt, np.where(mask == 255, 0, mask))
    # the results list holds the same regions with the same ids: scored against the dataset file, AP is 1
    evaluation = COCOeval(coco, coco.loadRes(str(tmp_path / "pseudo_labels_train_results.json")), iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
