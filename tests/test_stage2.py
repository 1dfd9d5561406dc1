"""Stage 2 on the tiny demo: Segmenter pieces, the full DAG, and export round trips."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labelgen.formats.write import export_masks
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
    outs = model(torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8), all_depths=True)
    assert len(outs) == 2 and outs[-1].shape == (2, 4, 50, 70)
    encoder, decoder = model.param_groups()
    assert len(encoder) + len(decoder) == len(list(model.parameters()))


@pytest.fixture(scope="module")
def full_run(tiny_full_run):
    return tiny_full_run  # shared with tests/test_report.py


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
    names = {Path(img["file_name"]).stem: img["id"] for img in coco.dataset["images"]}
    assert set(names) == set(stored)
    root = full_run / "data" / "demo"  # the generated set's data root: file_name is the path under it
    assert all((root / img["file_name"]).is_file() for img in coco.dataset["images"])
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


def test_force_moves_the_old_output_aside(full_run, client):
    from labelgen.pipeline.runner import plan_run

    art = plan_run(tiny_recipe(), full_run, "evaluate")[-1].artifact
    before = (art.path / "metrics.json").read_text()
    run_pipeline(tiny_recipe(), full_run, "evaluate", client, force=("evaluate",))
    kept = list(art.path.parent.glob(f"{art.key}.replaced-*"))
    assert len(kept) == 1 and (kept[0] / "metrics.json").read_text() == before
    assert art.is_complete() and (kept[0] / "_SUCCESS.json").is_file()


def test_retraining_on_a_mask_folder_and_what_export_says(full_run, client, tmp_path):
    """train_decoder.masks=<folder>: no CAM stages run; exporting pseudo-labels is a one-line error."""
    from click.testing import CliRunner

    from labelgen.cli import main
    from labelgen.pipeline.status import run_status

    export_masks(full_run, "pseudo_labels", "voc", tmp_path / "voc", client)
    folder = tmp_path / "voc" / "SegmentationClass"
    run_dir = tmp_path / "own"
    arts = run_pipeline(tiny_recipe(f'train_decoder.masks="{folder}"'), run_dir, "train_decoder", client)
    assert set(arts) == {"index", "train_decoder"} and arts["train_decoder"].is_complete()
    assert not (run_dir / "train_cam").exists() and not (run_dir / "pseudo_labels").exists()
    assert [(r.stage, r.state) for r in run_status(run_dir)] == [("index", "done"), ("train_decoder", "done")]
    result = CliRunner().invoke(
        main,
        [
            "export",
            "--run-dir",
            str(run_dir),
            "--what",
            "pseudo_labels",
            "--format",
            "voc",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert result.exit_code == 2 and "makes no pseudo_labels" in result.output and str(folder) in result.output


def test_status_calls_outputs_of_other_settings_stale(full_run, tmp_path):
    import shutil

    from labelgen.pipeline.runner import prepare_run
    from labelgen.pipeline.status import run_status

    run_dir = tmp_path / "copy"
    shutil.copytree(full_run, run_dir)
    prepare_run(tiny_recipe("pseudo_labels.bg_threshold=0.3"), run_dir, "pseudo_labels").release()
    states = {r.stage: (r.state, r.detail) for r in run_status(run_dir)}
    assert states["export_cams"][0] == "done"
    assert states["pseudo_labels"][0] == "stale" and "outputs for other settings exist" in states["pseudo_labels"][1]
