"""Issue 13, index at scale: COCO GT kept as annotation shapes and rasterised when read, the JSON read
once element by element into per-slice task inputs, tasks that receive paths, and `data index` on
worker processes; all with the rows, GT pixels and problems lines of the eager index."""

import json
import pickle
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from labelgen.config import DatasetParams, load_recipe, recipe_path
from labelgen.data.masks import gt_mask, read_mask
from labelgen.pipeline.indexing import index_dataset
from labelgen.pipeline.stage import StageContext
from labelgen.stages.index import STAGE
from labelgen.store.artifact import Artifact
from tests.conftest import COCO128
from tests.realdata import coco_json, write_coco_root

COCO_PARAMS = DatasetParams(name="coco", train_split="train2017", val_split="")
COCO128_JSON = COCO128 / "annotations" / "instances_train2017.json"


def _reference_gt(coco: COCO, image_id: int, label_of: dict[int, int]) -> np.ndarray:
    """The GT mask of an image drawn with pycocotools' own COCO API: larger objects first, crowd
    regions ignore (255) where no object covers them."""
    info = coco.loadImgs(image_id)[0]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    crowd = np.zeros_like(mask, dtype=bool)
    for ann in sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: -a["area"]):
        region = coco.annToMask(ann).astype(bool)
        if ann["iscrowd"]:
            crowd |= region
        else:
            mask[region] = label_of[ann["category_id"]]
    mask[crowd & (mask == 0)] = 255
    return mask


def test_coco_gt_is_rasterised_when_read_and_equals_pycocotools(tmp_path):
    manifest = index_dataset(COCO_PARAMS, COCO128, tmp_path)
    assert not list(tmp_path.rglob("*.png"))  # no mask is drawn at index time
    coco = COCO(str(COCO128_JSON))
    label_of = {c: label for label, c in enumerate(sorted(coco.getCatIds()), 1)}
    scored = [r for r in manifest.records if r.mask is not None]
    assert len(scored) == 126
    crowd = 0
    for r in scored:
        assert r.mask.startswith(str(tmp_path / "gt")) and ".cocogt.json#" in r.mask
        gt = gt_mask(r)
        assert gt.dtype == np.uint8 and gt.shape == (r.height, r.width)
        assert np.array_equal(gt, _reference_gt(coco, r.source_id, label_of)), r.id
        assert np.array_equal(read_mask(r.mask), gt)
        crowd += bool((gt == 255).any())
    assert crowd == 9  # coco128's 10 crowd annotations lie on 9 images


def _shuffled_keys_root(root: Path, data: dict) -> Path:
    """The same COCO content with the keys in another order (annotations before images, categories
    last) and pretty-printed: the streaming reader must not depend on either."""
    write_coco_root(root, data)
    reordered = {"annotations": data["annotations"], "info": {"x": 1}, "images": data["images"]}
    reordered["categories"] = data["categories"]
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(reordered, indent=2))
    return root


def test_key_order_slices_and_stray_annotations_change_nothing(tmp_path):
    data = coco_json()
    extra = {"image_id": 99999, "segmentation": [[1, 1, 5, 1, 5, 5]], "area": 8.0, "bbox": [1, 1, 4, 4], "iscrowd": 0}
    data["annotations"] += [
        {**extra, "id": 9101, "category_id": 83},  # no such image, unknown category: named
        {**extra, "id": 9102, "category_id": 1},  # no such image: dropped silently, as before
        {**extra, "id": 9103, "category_id": 99, "image_id": 74},  # unknown category: named
        [1, 2, 3],  # not an annotation at all: named by its index
    ]
    plain = write_coco_root(tmp_path / "plain", data)
    shuffled = _shuffled_keys_root(tmp_path / "shuffled", data)
    one = index_dataset(COCO_PARAMS, plain, tmp_path / "one")
    many = index_dataset(DatasetParams(**{**COCO_PARAMS.__dict__, "index_slice": 3}), shuffled, tmp_path / "many")
    assert len(one.records) == 4 and len(many.records) == 4
    for a, b in zip(one.records, many.records, strict=True):
        assert (a.id, a.tags, a.width, a.height, a.orientation, a.sha256) == (
            b.id,
            b.tags,
            b.width,
            b.height,
            b.orientation,
            b.sha256,
        )
        assert np.array_equal(gt_mask(a), gt_mask(b))

    def lines(out: Path, root: Path) -> set[str]:
        problems = json.loads((out / "problems.json").read_text())
        return {f"{p['file']}|{p['reason']}|{p['action']}".replace(str(root), "<root>") for p in problems}

    found = lines(tmp_path / "one", plain)
    assert found == lines(tmp_path / "many", shuffled)
    file = "<root>/annotations/instances_train2017.json"
    declared = "the file's 80 categories (ids 1..90)"
    fix = "fix its category_id or declare the category"
    assert found == {
        f"{file} annotation 9101|category_id 83 is not among {declared} (image 99999); {fix}|annotation skipped",
        f"{file} annotation 9103|category_id 99 is not among {declared} (image 74); {fix}|annotation skipped",
        f"{file} annotation #{len(data['annotations']) - 1}|not an object with an image_id|annotation skipped",
    }


def test_index_tasks_receive_paths_not_annotations(tmp_path):
    recipe = load_recipe(
        recipe_path("coco"),
        [
            f'dataset.root="{COCO128}"',
            'dataset.train_split="train2017"',
            'dataset.val_split=""',
            "dataset.index_slice=32",
        ],
    )
    art = Artifact(tmp_path, "index", "key")
    art.path.mkdir(parents=True)
    units = STAGE.plan(StageContext(recipe["dataset"], recipe, art, {}))
    assert len(units) == 4
    for unit in units:
        assert unit.args[0] == art.path  # the index folder: the task reads its slice from there
        assert all(isinstance(a, (Path, str, int, float, bool)) for a in unit.args), unit.args  # paths, settings
        assert len(pickle.dumps(unit.args)) < 500  # the annotations of 32 images are ~140 kB


def test_data_index_on_worker_processes_equals_one_process(tmp_path):
    params = DatasetParams(**{**COCO_PARAMS.__dict__, "index_slice": 40})
    pooled = index_dataset(params, COCO128, tmp_path / "pool", workers=2)
    inline = index_dataset(params, COCO128, tmp_path / "inline", workers=1)
    assert [r.id for r in pooled.records] == [r.id for r in inline.records]
    assert all(np.array_equal(gt_mask(a), gt_mask(b)) for a, b in zip(pooled.records, inline.records, strict=True))
    assert (tmp_path / "pool" / "problems.json").read_text() == (tmp_path / "inline" / "problems.json").read_text()
    assert not (tmp_path / "pool" / "_inputs").exists()  # task inputs are gone once the manifest is written


def test_string_and_float_image_ids_find_their_annotations(tmp_path):
    """Ids written as strings (some tools do) or as floats: the fast decode of annotations reads
    floats as text, so ids must still be compared as the JSON's values."""
    plain = coco_json((74, 73))
    strings, floats = coco_json((74, 73)), coco_json((74, 73))
    for data, convert in ((strings, str), (floats, float)):
        for entry in data["images"]:
            entry["id"] = convert(entry["id"])
        for ann in data["annotations"]:
            ann["image_id"] = convert(ann["image_id"])
    results = [
        index_dataset(COCO_PARAMS, write_coco_root(tmp_path / n, d), tmp_path / f"{n}-out")
        for n, d in (("plain", plain), ("strings", strings), ("floats", floats))
    ]
    expected = [(r.id, r.tags) for r in results[0].records]
    assert expected == [("000000000073", (4,)), ("000000000074", (1, 2, 17))]
    for manifest in results[1:]:
        assert [(r.id, r.tags) for r in manifest.records] == expected
        assert all(
            np.array_equal(gt_mask(a), gt_mask(b)) for a, b in zip(results[0].records, manifest.records, strict=True)
        )
