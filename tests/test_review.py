"""Review: corrections read from files people export from Label Studio and CVAT, kept in the run,
merged by the `corrections` stage, and keyed so that only what depends on them reruns; the review
queue. Fixtures are written in each tool's documented export format from real coco128 photos."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from label_studio_converter.brush import mask2rle
from PIL import Image
from pycocotools import mask as coco_mask

from labelgen.config import load_recipe, recipe_path
from labelgen.data.manifest import Manifest
from labelgen.data.masks import gt_mask, read_mask
from labelgen.errors import DataError
from labelgen.pipeline.runner import plan_run, run_pipeline
from labelgen.review.commands import import_files
from labelgen.review.pulled import pulled_sets
from labelgen.review.queue import review_queue
from tests.realdata import coco_json, write_coco_root

IMAGES = {73: "000000000073.jpg", 472: "000000000472.jpg", 74: "000000000074.jpg"}


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory, client) -> tuple[Path, Manifest]:
    """A coco128 run (four photos, COCO's 80 classes) indexed; each test copies what it changes."""
    root = write_coco_root(tmp_path_factory.mktemp("coco"), coco_json())
    recipe = load_recipe(
        recipe_path("coco"), [f'dataset.root="{root}"', 'dataset.train_split="train2017"', 'dataset.val_split=""']
    )
    run_dir = tmp_path_factory.mktemp("run")
    arts = run_pipeline(recipe, run_dir, "index", client)
    return run_dir, Manifest.load(arts["index"].path / "manifest.json")


def _fresh_run(coco_run, tmp_path: Path) -> Path:
    """A copy of the indexed run (its index only: tests add pulled sets to it)."""
    import shutil

    run_dir, _ = coco_run
    shutil.copytree(run_dir, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def _record(manifest: Manifest, image_id: int):
    return next(r for r in manifest.records if r.id == Path(IMAGES[image_id]).stem)


def _edited(manifest: Manifest, image_id: int, label: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """The photo's GT mask with a box (x0, y0, x1, y1) painted as class `label`: what a person's
    correction looks like."""
    mask = gt_mask(_record(manifest, image_id)).copy()
    mask[mask == 255] = 0  # a brush cannot paint ignore
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = manifest.classes.index(label)
    return mask


def _brush(mask: np.ndarray, classes: tuple[str, ...]) -> list[dict]:
    """Label Studio brush results as its export holds them (one per label), encoded with
    label-studio-converter's mask2rle."""
    h, w = mask.shape
    return [
        {
            "id": f"r{label}",
            "type": "brushlabels",
            "from_name": "tag",
            "to_name": "image",
            "origin": "manual",
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "value": {
                "format": "rle",
                "rle": mask2rle(np.where(mask == label, 255, 0).astype(np.uint8)),
                "brushlabels": [classes[label]],
            },
        }
        for label in np.unique(mask)
        if 0 < label < 255
    ]


def _corrections_after_run(run_dir: Path, client) -> tuple[Path, dict]:
    """Run the corrections stage of the run's recipe; (its masks folder, provenance)."""
    from labelgen.pipeline.status import last_recipe

    recipe, _ = last_recipe(run_dir)
    arts = run_pipeline(recipe, run_dir, "corrections", client)
    art = arts["corrections"].path
    return art / "corrected_masks", json.loads((art / "provenance.json").read_text())


def test_labelstudio_json_export_becomes_corrections(coco_run, tmp_path, client):
    run_dir, manifest = _fresh_run(coco_run, tmp_path), coco_run[1]
    first = _edited(manifest, 73, "dog", (10, 20, 110, 90))
    later = _edited(manifest, 73, "cat", (200, 300, 260, 400))
    other = _edited(manifest, 472, "bird", (0, 0, 50, 40))
    tasks = [
        {
            "id": 1,
            "data": {"image": f"/data/upload/1/9f86d081-{IMAGES[73]}"},  # as Label Studio names uploads
            "annotations": [
                {
                    "id": 11,
                    "completed_by": 1,
                    "result": _brush(first, manifest.classes),
                    "was_cancelled": False,
                    "created_at": "2026-01-01T10:00:00.000000Z",
                    "updated_at": "2026-01-01T10:00:00.000000Z",
                },
                {
                    "id": 12,
                    "completed_by": {"id": 2, "email": "ann@example.org"},
                    "result": _brush(later, manifest.classes),
                    "was_cancelled": False,
                    "created_at": "2026-01-02T10:00:00.000000Z",
                    "updated_at": "2026-01-02T11:00:00.000000Z",
                },
                {
                    "id": 13,
                    "completed_by": 1,
                    "result": [],
                    "was_cancelled": True,  # skipped: not a correction
                    "created_at": "2026-01-03T10:00:00.000000Z",
                    "updated_at": "2026-01-03T10:00:00.000000Z",
                },
            ],
            "predictions": [],
        },
        {
            "id": 2,
            "data": {"image": f"/data/upload/1/0a1b2c3d-{IMAGES[472]}"},
            "annotations": [
                {
                    "id": 21,
                    "completed_by": 1,
                    "result": _brush(other, manifest.classes),
                    "was_cancelled": False,
                    "updated_at": "2026-01-01T09:00:00Z",
                }
            ],
        },
        {"id": 3, "data": {"image": f"/data/upload/1/ffffffff-{IMAGES[74]}"}, "annotations": []},  # not done
    ]
    export = tmp_path / "project-1-at-2026-01-03.json"
    export.write_text(json.dumps(tasks))

    out = import_files(run_dir, export, "labelstudio-json")

    assert out["corrections"] == 2
    masks, provenance = _corrections_after_run(run_dir, client)
    assert sorted(p.name for p in masks.iterdir()) == ["000000000073.png", "000000000472.png"]
    np.testing.assert_array_equal(read_mask(masks / "000000000073.png"), later)  # the latest annotation
    np.testing.assert_array_equal(read_mask(masks / "000000000472.png"), other)
    assert provenance["000000000073"]["who"] == "ann@example.org"
    assert provenance["000000000073"]["when"] == "2026-01-02T11:00:00.000000Z"
    assert "task 1 annotation 12" in provenance["000000000073"]["source"]


def _cvat_zip(path: Path, masks: dict[str, np.ndarray], colours: dict[str, tuple[int, int, int]]) -> None:
    """CVAT 'Segmentation mask 1.1': labelmap.txt, SegmentationClass/<name>.png (RGB), ImageSets."""
    lookup = {label: colour for label, colour in colours.items()}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "labelmap.txt",
            "# label:color_rgb:parts:actions\n" + "".join(f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in lookup.items()),
        )
        z.writestr("ImageSets/Segmentation/default.txt", "".join(f"{Path(n).stem}\n" for n in masks))
        for name, rgb in masks.items():
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            z.writestr(f"SegmentationClass/{Path(name).stem}.png", buf.getvalue())


def test_cvat_segmentation_mask_export_becomes_corrections(coco_run, tmp_path, client):
    run_dir, manifest = _fresh_run(coco_run, tmp_path), coco_run[1]
    labels = _edited(manifest, 74, "horse", (300, 50, 400, 150))
    colours = {
        "background": (0, 0, 0),
        "person": (192, 128, 128),
        "bicycle": (0, 128, 0),
        "dog": (64, 0, 128),
        "horse": (192, 0, 128),
    }
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    for name, colour in colours.items():
        rgb[labels == manifest.classes.index(name) if name != "background" else labels == 0] = colour
    export = tmp_path / "task_1-segmentation mask 1.1.zip"
    _cvat_zip(export, {IMAGES[74]: rgb}, colours)

    import_files(run_dir, export, "cvat-mask")

    masks, _ = _corrections_after_run(run_dir, client)
    np.testing.assert_array_equal(read_mask(masks / "000000000074.png"), labels)


def test_cvat_label_outside_the_run_is_one_line_naming_it(coco_run, tmp_path):
    run_dir = _fresh_run(coco_run, tmp_path)
    export = tmp_path / "bad.zip"
    _cvat_zip(export, {IMAGES[74]: np.zeros((426, 640, 3), np.uint8)}, {"background": (0, 0, 0), "Dog": (1, 2, 3)})
    with pytest.raises(DataError, match=r"labels 'Dog' are not classes of this run") as e:
        import_files(run_dir, export, "cvat-mask")
    assert "\n" not in str(e.value) and str(export) in str(e.value)
    assert not pulled_sets(run_dir)  # nothing kept


def test_coco_export_becomes_corrections(coco_run, tmp_path, client):
    run_dir, manifest = _fresh_run(coco_run, tmp_path), coco_run[1]
    r = _record(manifest, 472)
    h, w = r.height, r.width
    plane = np.zeros((h, w), np.uint8, order="F")
    plane[100:200, 100:300] = 1
    rle = coco_mask.encode(np.asfortranarray(plane))
    cats = [{"id": 1, "name": "airplane", "supercategory": ""}, {"id": 2, "name": "person", "supercategory": ""}]
    data = {
        "licenses": [],
        "info": {},
        "categories": cats,
        "images": [{"id": 1, "file_name": IMAGES[472], "width": w, "height": h}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 20000.0,
                "bbox": [100, 100, 200, 100],
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 2,
                "iscrowd": 0,
                "area": 400.0,
                "bbox": [10, 10, 20, 20],
                "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
            },
        ],
    }
    export = tmp_path / "coco 1.0.zip"
    with zipfile.ZipFile(export, "w") as z:  # CVAT's COCO 1.0 layout
        z.writestr("annotations/instances_default.json", json.dumps(data))

    import_files(run_dir, export, "coco")

    masks, _ = _corrections_after_run(run_dir, client)
    got = read_mask(masks / "000000000472.png")
    expected = np.zeros((h, w), np.uint8)
    expected[100:200, 100:300] = manifest.classes.index("airplane")
    expected[10:31, 10:31] = manifest.classes.index("person")  # pycocotools draws the polygon's edge pixels in
    assert (got == expected).mean() > 0.999
    assert (got[100:200, 100:300] == manifest.classes.index("airplane")).all()


def test_a_pull_reruns_only_what_depends_on_it(coco_run, tmp_path):
    run_dir, manifest = _fresh_run(coco_run, tmp_path), coco_run[1]
    recipe = json.loads((run_dir / "recipe.json").read_text())
    from labelgen.pipeline.status import last_recipe

    recipe, _ = last_recipe(run_dir)
    before = {p.stage.name: p.artifact.key for p in plan_run(recipe, run_dir, "full")}
    assert "corrections" not in before  # a run without corrections keeps its keys

    mask = _edited(manifest, 73, "dog", (0, 0, 10, 10))
    cvat = tmp_path / "one.zip"
    rgb = np.where(mask[..., None] == manifest.classes.index("dog"), np.array([9, 9, 9], np.uint8), 0).astype(np.uint8)
    other = [k for k in np.unique(mask) if k not in (0, manifest.classes.index("dog"))]
    colours = {"background": (0, 0, 0), "dog": (9, 9, 9)}
    for n, k in enumerate(other):
        colours[manifest.classes[k]] = (10 + n, 0, 0)
        rgb[mask == k] = (10 + n, 0, 0)
    _cvat_zip(cvat, {IMAGES[73]: rgb}, colours)
    import_files(run_dir, cvat, "cvat-mask")
    after = {p.stage.name: p.artifact.key for p in plan_run(recipe, run_dir, "full")}
    assert "corrections" in after
    for same in ("index", "train_cam", "export_cams", "pseudo_labels"):
        assert after[same] == before[same]
    for rerun in ("train_decoder", "predict", "evaluate"):
        assert after[rerun] != before[rerun]

    assert import_files(run_dir, cvat, "cvat-mask")["set"] is None  # the same masks again: nothing new
    assert {p.stage.name: p.artifact.key for p in plan_run(recipe, run_dir, "full")} == after

    off = load_recipe(recipe_path("coco"), [*_overrides(recipe), "corrections.use=false"])
    assert {p.stage.name: p.artifact.key for p in plan_run(off, run_dir, "full")} == before


def _overrides(recipe) -> list[str]:
    d = recipe["dataset"]
    return [f'dataset.root="{d.root}"', 'dataset.train_split="train2017"', 'dataset.val_split=""']


def test_review_queue_takes_the_worst_of_each_class_and_painted_negatives():
    rows = [
        {"id": "a", "split": "train", "tags": "cat", "gt_free_score": "0.10", "gt": ""},
        {"id": "b", "split": "train", "tags": "cat", "gt_free_score": "0.20", "gt": ""},
        {"id": "c", "split": "train", "tags": "cat", "gt_free_score": "0.30", "gt": ""},
        {"id": "d", "split": "train", "tags": "dog", "gt_free_score": "0.90", "gt": ""},
        {"id": "e", "split": "train", "tags": "", "gt_free_score": "0.40", "gt": ""},  # painted negative
        {"id": "f", "split": "train", "tags": "", "gt_free_score": "1.0000", "gt": ""},  # clean negative
        {"id": "g", "split": "train", "tags": "cat", "gt_free_score": "0.01", "gt": "corrected"},  # done
        {
            "id": "i",
            "split": "train",
            "tags": "dog",
            "gt_free_score": "0.95",
            "gt": "mask",
        },  # trains on its pseudo-label
        {"id": "h", "split": "val", "tags": "cat", "gt_free_score": "0.00", "gt": ""},  # not trained on
    ]
    assert [r["id"] for r in review_queue(rows, "train", 3)] == ["a", "e", "d"]
    assert [r["id"] for r in review_queue(rows, "train", 5)] == ["a", "e", "d", "b", "i"]
    assert [r["id"] for r in review_queue(rows, "train", 9)] == ["a", "e", "d", "b", "i", "c"]


# ------------------------------------------------------------------ a real Label Studio, end to end
@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A real label-studio server (its own venv; see tests/labelstudio_server.py), stopped by pid
    when the module's tests end, passed or failed."""
    from tests.labelstudio_server import start_server

    server = start_server(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server
    finally:
        server.stop()


# Its set-up may build the Label Studio venv (pip, a few minutes on a fresh machine) and migrate a fresh
# SQLite database: more than the suite's per-test 900 s on a loaded 2-core machine.
@pytest.mark.timeout(2400)
def test_push_edit_in_label_studio_pull_retrain(tiny_full_run, label_studio, tmp_path, client):
    """push -> a person's edit saved through Label Studio's API -> pull -> rerun: the corrected
    pixels are what train_decoder trains that image on, and the report scores it against them."""
    import csv
    import shutil

    import requests

    from labelgen.numerics.metrics import confusion_matrix, image_miou
    from labelgen.pipeline.dag import STAGES
    from labelgen.pipeline.stage import StageContext
    from labelgen.pipeline.status import last_recipe
    from labelgen.review.brush import results_to_mask
    from labelgen.review.commands import pull, push
    from labelgen.review.labelstudio import LabelStudio
    from labelgen.stages.train_decoder import PseudoMaskImages
    from labelgen.store.sharded import ImageArrays

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_full_run, run_dir)
    recipe, _ = last_recipe(run_dir)
    before = {p.stage.name: p.artifact for p in plan_run(recipe, run_dir, "full")}
    manifest = Manifest.load(before["index"].path / "manifest.json")
    server = LabelStudio(label_studio.url, label_studio.token)
    api = {"Authorization": f"Token {label_studio.token}"}

    sent = push(run_dir, 3, server, "review e2e")

    # the three worst train images by GT-free score, one of each class first
    with (before["evaluate"].path / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sent["sent"] == [r["id"] for r in review_queue(rows, "train", 3)]
    tasks = server.export(sent["project"])
    assert len(tasks) == 3
    mapping = json.loads((run_dir / "review" / "pushed" / f"{sent['project']}.json").read_text())["tasks"]
    predicted = ImageArrays(before["predict"].path / "masks_train.zarr")
    records = {r.id: r for r in manifest.records}
    for task in tasks:  # each task's pre-annotation is the image's current mask (the train prediction)
        image_id = mapping[str(task["id"])]
        r = records[image_id]
        (prediction,) = requests.get(
            f"{label_studio.url}/api/predictions", params={"task": task["id"]}, headers=api, timeout=60
        ).json()
        sent_mask = results_to_mask(prediction["result"], manifest.classes, (r.height, r.width), "test")
        np.testing.assert_array_equal(sent_mask, predicted.mask(predicted.ids.index(image_id)))

    # a person repaints a block of the first image as another class and submits
    task = tasks[0]
    image_id = mapping[str(task["id"])]
    r = records[image_id]
    corrected = predicted.mask(predicted.ids.index(image_id)).copy()
    corrected[corrected == 255] = 0
    corrected[: r.height // 2, : r.width // 2] = 2
    response = requests.post(
        f"{label_studio.url}/api/tasks/{task['id']}/annotations/",
        headers=api,
        json={"result": _brush(corrected, manifest.classes), "lead_time": 12.5},
        timeout=60,
    )
    assert response.status_code == 201, response.text

    pulled = pull(run_dir, server, "review e2e")
    assert pulled["corrections"] == 1
    assert pull(run_dir, server, "review e2e")["set"] is None  # nothing new: nothing reruns

    after = run_pipeline(recipe, run_dir, "full", client)
    for same in ("index", "train_cam", "export_cams", "pseudo_labels"):
        assert after[same].key == before[same].key
    for rerun in ("train_decoder", "predict", "evaluate"):
        assert after[rerun].key != before[rerun].key
    provenance = json.loads((after["corrections"].path / "provenance.json").read_text())
    assert provenance[image_id]["who"] == label_studio.user
    assert f"task={task['id']}" in provenance[image_id]["source"]

    # what train_decoder trained on: its plan's unit, read as its loader reads it
    plan = {p.stage.name: p for p in plan_run(recipe, run_dir, "full")}
    p = plan["train_decoder"]
    unit = STAGES["train_decoder"].plan(StageContext(p.params, recipe, p.artifact, p.inputs))[0]
    params, dataset, _, masks, _, corrected_files = unit.args
    assert set(corrected_files) == {image_id}
    train = manifest.split(dataset.train_split)
    data = PseudoMaskImages(train, masks, params, dataset.max_image_pixels, corrected_files)
    i = [t.id for t in train].index(image_id)
    np.testing.assert_array_equal(data._mask(i), corrected)
    pseudo = ImageArrays(before["pseudo_labels"].path / "masks.zarr")
    j = next(n for n, t in enumerate(train) if t.id != image_id)
    np.testing.assert_array_equal(data._mask(j), pseudo.mask(j))  # the others keep their pseudo-labels
    assert after["train_decoder"].success()["corrected_images"] == 1

    # the report: marked corrected and scored against the correction, not the image's GT mask
    with (after["evaluate"].path / "per_image.csv").open() as f:
        row = next(x for x in csv.DictReader(f) if x["id"] == image_id and x["split"] == "train")
    assert row["gt"] == "corrected"
    final = ImageArrays(after["predict"].path / "masks_train.zarr")
    prediction = final.mask(final.ids.index(image_id))
    num = len(manifest.classes)
    against_correction = image_miou(confusion_matrix(corrected, prediction, num))
    against_gt = image_miou(confusion_matrix(gt_mask(r), prediction, num))
    assert float(row["gt_iou"]) == pytest.approx(against_correction, abs=1e-4)
    assert abs(against_correction - against_gt) > 1e-3
    html = (after["evaluate"].path / "report.html").read_text()
    assert f'data-id="{image_id}" data-split="train"' in html and 'data-corrected="1"' in html
    assert html.count('data-corrected="1"') == 1
    metrics = json.loads((after["evaluate"].path / "metrics.json").read_text())
    assert metrics["gt"]["corrected"] == {"train": 1, "val": 0}


def test_cli_import_of_a_wrong_file_is_one_line_and_exit_2(coco_run, tmp_path):
    from click.testing import CliRunner

    from labelgen.cli import main

    run_dir = _fresh_run(coco_run, tmp_path)
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"not": "a list"}))
    result = CliRunner().invoke(
        main, ["review", "import", "--run-dir", str(run_dir), str(export), "--format", "labelstudio-json"]
    )
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {export}: a Label Studio JSON export is a list of tasks, this holds a dict"
