"""Ultralytics exports (`--format yolo`, `--format yolo-seg`) read and trained by the real `ultralytics`.

Runs are made as in tests/test_export.py: the `index` stage runs for real on the tiny demo and on a
COCO root of coco128 photos (one of them stored turned, with EXIF orientation 6), and the index's GT
masks are stored as the run's finished predict (demo: train and val splits) or pseudo_labels (COCO:
one split) artifact; export runs as users run it. Ultralytics runs in a child process
(tests/ultralytics_reader.py), offline, and reports what its own loaders yield.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from labelgen.cli import main
from labelgen.formats.source import export_source
from labelgen.formats.write import export_masks
from labelgen.formats.yolo_seg import MIN_OBJECT_PIXELS, mask_objects, polygon_line
from labelgen.store.sharded import ImageArrays
from tests.realdata import coco_json, coco_photo, save_exif_rotated, write_coco_root
from tests.test_export import gt_run
from tests.test_imports import PACKAGE, imported_modules
from tests.ultralytics_reader import agreement, components, run_reader

# coco128 photos: few objects (73, 472, 636), several classes and a person in front of a bicycle (74,
# stored turned with EXIF orientation 6), a person with 30 holes in its mask (389), cups and chairs
# split into many pieces (196), a crowd region (149: ignore, 255, where no single object covers it)
COCO_IDS = (73, 472, 636, 74, 389, 196, 149)
TURNED = 74


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, client) -> Path:
    """The tiny demo (24 train, 8 val images of 96 px) with GT masks as finished predictions."""
    run_dir = tmp_path_factory.mktemp("yolo_demo_run")
    gt_run(run_dir, client, (), stage="predict")
    return run_dir


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory, client) -> Path:
    """A COCO root of six coco128 photos (one stored turned, EXIF 6), GT masks as finished pseudo_labels."""
    root = tmp_path_factory.mktemp("yolo_coco_root")
    (root / "images" / "train2017").mkdir(parents=True)
    save_exif_rotated(coco_photo(TURNED), root / "images" / "train2017" / coco_photo(TURNED).name)
    write_coco_root(root, coco_json(COCO_IDS))
    run_dir = tmp_path_factory.mktemp("yolo_coco_run")
    manifest = gt_run(
        run_dir,
        client,
        ('dataset.name="coco"', f'dataset.root="{root}"', 'dataset.train_split="train2017"', 'dataset.val_split=""'),
    )
    assert {r.id: r.orientation for r in manifest.records}[f"{TURNED:012d}"] == 6  # labelgen turns it upright
    return run_dir


RUNS = {"demo": ("demo_run", "predictions"), "coco": ("coco_run", "pseudo_labels")}


def _masks(run_dir: Path, what: str) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """labelgen's classes and masks of a run's artifact: split -> id -> H×W uint8."""
    source = export_source(run_dir, what)
    out = {}
    for split, store in source.stores.items():
        arrays = ImageArrays(store)
        out[split] = {image_id: arrays.mask(i) for i, image_id in enumerate(arrays.ids)}
    return list(source.manifest.classes), out


@pytest.fixture(scope="module", params=sorted(RUNS))
def exported(request, tmp_path_factory, client):
    """Both Ultralytics exports of a run, read back by Ultralytics: (run name, labelgen's classes and
    masks, {format: (export folder, YAML, reader result, reader folder)})."""
    fixture, what = RUNS[request.param]
    run_dir = request.getfixturevalue(fixture)
    folders = {}
    for fmt in ("yolo", "yolo-seg"):
        folders[fmt] = tmp_path_factory.mktemp(f"{request.param}_{fmt}")
        export_masks(run_dir, what, fmt, folders[fmt], client)
    read_dir = tmp_path_factory.mktemp("read")
    jobs = {
        "yolo": (folders["yolo"] / "data.yaml", "semantic"),
        "yolo-seg": (folders["yolo-seg"] / "data.yaml", "segment"),
    }
    result = run_reader(read_dir, "read", jobs)
    assert result["network"] == []  # offline: no connection, no name look-up
    out = {fmt: (f, yaml.safe_load((f / "data.yaml").read_text()), result[fmt], read_dir) for fmt, f in folders.items()}
    return request.param, *_masks(run_dir, what), out


def _roles(name: str) -> dict[str, str]:
    return {"train": "train", "val": "val"} if name == "demo" else {"train": "train2017", "val": "train2017"}


def test_yolo_semantic_masks_load_in_ultralytics_pixel_for_pixel(exported):
    """SemanticDataset (chosen by `masks_dir`) reads every image and mask with no warning, and the
    label maps its load_mask yields are labelgen's masks: 0 background, 1..C, 255 ignore."""
    name, classes, masks, out = exported
    folder, data, result, read_dir = out["yolo"]
    assert data["masks_dir"] == "masks" and data["names"] == dict(enumerate(classes))
    assert data["names"][0] == "background"
    assert result["names"] == {str(k): v for k, v in data["names"].items()}  # as Ultralytics read them (JSON keys)
    assert result["warnings"] == []
    for role, split in _roles(name).items():
        read = result["splits"][role]
        assert read["dataset"] == "SemanticDataset" and Path(read["folder"]) == folder / "images" / split
        assert sorted(read["images"]) == sorted(masks[split])  # every image, none dropped
        loaded = np.load(read_dir / f"yolo_{role}_masks.npz")
        for image_id, mask in masks[split].items():
            assert np.array_equal(loaded[image_id], mask), (role, image_id)
            assert tuple(read["shapes"][image_id]) == mask.shape  # Ultralytics' own image size: labelgen's frame
    if name == "coco":
        assert any((m == 255).any() for m in masks["train2017"].values())  # ignore reaches Ultralytics as 255


def test_yolo_seg_polygons_load_in_ultralytics_and_give_back_each_object(exported):
    """YOLODataset (task segment) reads every image and label with no warning; each polygon it yields,
    rasterised by Ultralytics' polygon2mask, covers its connected component of labelgen's mask with
    IoU >= 0.98; class = label - 1; every component of >= MIN_OBJECT_PIXELS pixels is there once."""
    name, classes, masks, out = exported
    folder, data, result, _ = out["yolo-seg"]
    assert "masks_dir" not in data and result["warnings"] == []
    for role, split in _roles(name).items():
        read = result["splits"][role]
        assert read["dataset"] == "YOLODataset" and sorted(read["images"]) == sorted(masks[split])
        for image_id, mask in masks[split].items():
            got = read["objects"][image_id]
            assert tuple(got["shape"]) == mask.shape
            rows, missing = agreement(mask, got["objects"], MIN_OBJECT_PIXELS)
            assert missing == 0 and all(r["pixels"] >= MIN_OBJECT_PIXELS for r in rows), image_id  # each once
            assert all(r["points"] >= 3 and r["iou"] >= 0.98 for r in rows), (image_id, rows)
    assert data["names"] == dict(enumerate(classes[1:]))  # background is no class; class k is label k + 1


def test_mask_objects_holes_specks_lines_and_ignore():
    """A ring (one hole) around a second object of its class, a ring with two holes, a one-pixel-wide
    line, a speck, and ignore: each kept component is one polygon that cv2.fillPoly (Ultralytics'
    rasteriser) fills back to exactly its pixels; the speck is dropped and counted; ignore is no object."""
    mask = np.zeros((60, 80), np.uint8)
    mask[5:25, 5:25] = 1
    mask[10:20, 10:20] = 0  # the hole
    mask[13:17, 13:17] = 1  # an island of the same class in the hole: a second object
    mask[30:50, 30:70] = 2
    mask[35:40, 35:40] = 0
    mask[35:45, 55:60] = 255  # ignore inside the second ring: a hole too
    mask[55, 10:40] = 3  # a line one pixel wide
    mask[2:4, 70:72] = 3  # a speck of 4 pixels
    mask[0:3, 40:50] = 255
    found = mask_objects(mask)
    assert (found.specks, found.speck_pixels, found.holes) == (1, 4, 3)
    assert sorted(label for label, _ in found.polygons) == [1, 1, 2, 3]
    expected = sorted(((label, c) for label, c in components(mask) if c.sum() >= MIN_OBJECT_PIXELS), key=_key)
    for (label, polygon), (want_label, component) in zip(sorted(found.polygons, key=_poly_key), expected, strict=True):
        assert label == want_label and len(polygon) >= 3
        filled = cv2.fillPoly(np.zeros(mask.shape, np.uint8), [polygon], 1).astype(bool)
        assert np.array_equal(filled, component), label
    assert mask_objects(mask, min_pixels=3).specks == 0


def _key(item) -> tuple:
    label, component = item
    ys, xs = np.nonzero(component)
    return label, int(ys.min()), int(xs.min())


def _poly_key(item) -> tuple:
    label, polygon = item
    return label, int(polygon[:, 1].min()), int(polygon[:, 0].min())


def test_polygon_lines_are_pixel_centres_normalised():
    """Pixel (x, y) is written as ((x + 0.5) / W, (y + 0.5) / H), class label - 1: scaled back and
    truncated, as Ultralytics does, it gives the pixel itself."""
    polygon = np.array([[0, 0], [99, 0], [99, 49]], np.int32)
    line = polygon_line(3, polygon, 50, 100)
    assert line == "2 0.005000 0.010000 0.995000 0.010000 0.995000 0.990000"
    points = np.array(line.split()[1:], np.float32).reshape(-1, 2) * np.array([100, 50], np.float32)
    assert np.array_equal(points.astype(np.int32), polygon)


def test_cli_exports_yolo_seg_and_counts_the_dropped_specks(demo_run, client, tmp_path, caplog):
    """`labelgen export --format yolo-seg` (on the test's scheduler) writes the layout and logs, per
    split, the regions under MIN_OBJECT_PIXELS it dropped and their pixels, counted here without
    labelgen's code."""
    args = ["export", "--run-dir", str(demo_run), "--what", "predictions", "--format", "yolo-seg"]
    with caplog.at_level(logging.INFO, logger="labelgen"):
        result = CliRunner().invoke(main, [*args, "--out", str(tmp_path), "--scheduler", client.scheduler.address])
    assert result.exit_code == 0, result.output
    _, masks = _masks(demo_run, "predictions")
    dropped = 0
    for split, by_id in masks.items():
        assert sorted(p.stem for p in (tmp_path / "labels" / split).iterdir()) == sorted(by_id)
        assert sorted(p.stem for p in (tmp_path / "images" / split).iterdir()) == sorted(by_id)
        specks = [c.sum() for m in by_id.values() for _, c in components(m) if c.sum() < MIN_OBJECT_PIXELS]
        dropped += len(specks)
        line = f"{len(specks)} specks under {MIN_OBJECT_PIXELS} pixels dropped ({sum(specks)} pixels)"
        assert any(f"split {split}:" in r.getMessage() and line in r.getMessage() for r in caplog.records), line
    assert sum(len(s) for s in masks.values()) == 32 and dropped > 0  # the demo's GT has a few specks


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "task", "model"), [("yolo", "semantic", "yolo26n-sem.yaml"), ("yolo-seg", "segment", "yolo11n-seg.yaml")]
)
def test_one_cpu_epoch_trains_on_the_export(demo_run, client, tmp_path, fmt, task, model):
    """A model built from its YAML (no weights) trains one epoch on CPU on the export, offline."""
    export_masks(demo_run, "predictions", fmt, tmp_path / "export", client)
    result = run_reader(tmp_path / "train", "train", {fmt: (tmp_path / "export" / "data.yaml", task)}, model)
    assert result["network"] == []  # offline: no connection, no name look-up
    result = result[fmt]
    names = yaml.safe_load((tmp_path / "export" / "data.yaml").read_text())["names"]
    assert result["task"] == task and result["epochs_done"] == 1 and result["results_rows"] == 1
    assert result["last_weights"] and result["nc"] == len(names)


def test_labelgen_never_imports_ultralytics():
    """Ultralytics is AGPL-3.0: a dev dependency for these tests only, never imported by labelgen/."""
    found = [
        f"{path.relative_to(PACKAGE.parent)} imports {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module in sorted(imported_modules(path))
        if module == "ultralytics" or module.startswith("ultralytics.")
    ]
    assert found == []
