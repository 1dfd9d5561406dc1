import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from labelgen.config import DatasetParams
from labelgen.data.masks import read_mask
from labelgen.pipeline.indexing import index_dataset
from tests.badfiles import write_corpus
from tests.conftest import COCO128, VOC_MINI


def test_coco128_tags_and_masks_from_the_real_json(tmp_path):
    params = DatasetParams(name="coco", train_split="train2017", val_split="")
    manifest = index_dataset(params, COCO128, tmp_path)
    assert len(manifest.classes) == 81 and manifest.classes[1] == "person"
    assert len(manifest.records) == 126  # 128 images, 2 without annotations
    problems = json.loads((tmp_path / "problems.json").read_text())
    assert sum(p["action"] == "left out" for p in problems) == 2
    assert any("grayscale" in p["reason"] for p in problems)
    data = json.loads((COCO128 / "annotations" / "instances_train2017.json").read_text())
    cats = {c["id"]: i + 1 for i, c in enumerate(data["categories"])}
    crowd_images = {a["image_id"] for a in data["annotations"] if a["iscrowd"]}
    by_file = {Path(i["file_name"]).stem: i["id"] for i in data["images"]}
    for r in manifest.records:
        expected = sorted({cats[a["category_id"]] for a in data["annotations"] if a["image_id"] == by_file[r.id]})
        assert list(r.tags) == expected
        mask = read_mask(r.mask)
        assert mask.shape == (r.height, r.width)
        present = set(np.unique(mask).tolist()) - {0, 255}
        assert present <= set(r.tags)
        if by_file[r.id] in crowd_images:
            assert (mask == 255).any()


def test_coco_original_ids(tmp_path):
    params = DatasetParams(name="coco", train_split="train2017", val_split="", coco_label_space="original")
    manifest = index_dataset(params, COCO128, tmp_path)
    assert len(manifest.classes) == 91 and manifest.classes[12] == "unused_12"
    assert manifest.classes[90] == "toothbrush"


def test_voc_mini_palette_masks(tmp_path):
    params = DatasetParams(name="voc", root=str(VOC_MINI), train_split="train", val_split="val")
    manifest = index_dataset(params, VOC_MINI, tmp_path)
    assert len(manifest.split("train")) == 3
    r = manifest.split("train")[0]
    assert r.tags and all(1 <= t <= 20 for t in r.tags)
    assert set(np.unique(read_mask(r.mask)).tolist()) - {0, 255} == set(r.tags)


def test_folder_reports_each_bad_row(tmp_path):
    root = tmp_path / "data"
    files = write_corpus(root / "images")
    (root / "classes.txt").write_text("cat\ndog\n")
    rows = (
        ["image,tags"]
        + [f"images/{name},cat" for name in files]
        + [
            "images/good.jpg,unicorn",  # unknown class
            "../../etc/passwd,cat",  # outside the root
            "images/gray.jpg,",  # no tags
        ]
    )
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    params = DatasetParams(name="folder", val_split="")
    manifest = index_dataset(replace(params, index_slice=3), root, tmp_path / "out")
    problems = json.loads((tmp_path / "out" / "problems.json").read_text())
    reasons = {Path(p["file"]).name.split(":")[0] + ":" + p["action"]: p["reason"] for p in problems}
    text = json.dumps(problems)
    assert "truncated" in reasons["truncated.jpg:left out"]
    assert "zero-byte" in reasons["empty.jpg:left out"]
    assert "unicorn" in text and "outside the data root" in text and "no image-level tags" in text
    assert "CMYK" in reasons["cmyk.jpg:converted when read"]
    assert {r.id for r in manifest.records} == {"good", "gray", "cmyk", "sixteen", "alpha", "palette"}
