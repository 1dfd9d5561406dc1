"""Issue 14: a user's own set with untagged negatives trains, exports and evaluates."""

import json

import numpy as np
from PIL import Image

from labelgen.data.demo import generate_demo
from labelgen.pipeline.runner import run_pipeline
from labelgen.stages.index import load_manifest
from labelgen.store.sharded import ImageArrays
from tests.conftest import tiny_recipe
from tests.realdata import coco_photo

NEGATIVES = 8


def test_untagged_negatives_train_export_and_evaluate(tmp_path, client):
    """The tiny demo's shapes as positives, plus real photos without any shape as untagged rows."""
    recipe = tiny_recipe()
    root = tmp_path / "data"
    generate_demo(root, recipe["dataset"])
    rows = (root / "tags.csv").read_text().splitlines()
    rows = [r for r in rows if not r.endswith(",val")]  # one split
    for n, image_id in enumerate((9, 25, 30, 34, 36, 42, 49, 61)[:NEGATIVES]):
        Image.open(coco_photo(image_id)).convert("RGB").resize((96, 96)).save(root / "images" / f"neg{n}.png")
        rows.append(f"images/neg{n}.png,,train")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    overrides = ['dataset.name="folder"', f'dataset.root="{root}"', 'dataset.val_split=""', 'dataset.untagged="keep"']
    arts = run_pipeline(tiny_recipe(*overrides), tmp_path / "run", "pseudo_labels", client)
    manifest = load_manifest(arts["index"])
    negatives = {r.id for r in manifest.records if not r.tags}
    assert negatives == {f"neg{n}" for n in range(NEGATIVES)}
    # they reached the classifier's loss: every epoch's batches held untagged images
    log = [json.loads(line) for line in (arts["train_cam"].path / "log.jsonl").read_text().splitlines()]
    assert all(0 < e["negatives"] <= NEGATIVES for e in log) and sum(e["negatives"] for e in log) >= NEGATIVES
    # no CAM was made for them, and their pseudo-labels are all background
    cams = ImageArrays(arts["export_cams"].path / "cams.zarr")
    masks = ImageArrays(arts["pseudo_labels"].path / "masks.zarr")
    for i, image_id in enumerate(masks.ids):
        maps, labels = cams.cam(i)
        if image_id in negatives:
            assert maps.shape[0] == 0 and labels.size == 0
            assert (masks.mask(i) == 0).all()
        else:
            assert maps.shape[0] > 0
    metrics = json.loads((arts["evaluate"].path / "metrics.json").read_text())
    assert metrics["pseudo_labels"]["images"] == sum(r.mask is not None for r in manifest.records) == 24
    assert np.isfinite(metrics["pseudo_labels"]["miou"])
