"""Exports that the target tools read right: COCO source ids, one mmseg image suffix, EXIF frames.

How the runs are made: the `index` stage runs for real (run_pipeline on a LocalCluster) on a data
set built in tmp_path from coco128 photos; the `pseudo_labels` artifact is then filled with the GT
masks that index rasterised from the annotations, through the real store writer
(`create_mask_store` / `write_mask_shard`), and marked complete. Training WeakTr here would take
minutes and give masks no test can predict; GT masks make every exported id, pixel and AP
checkable. Export itself runs as users run it, `export_masks(run_dir, ...)`. The trained
pipeline's masks go through export in tests/test_stage2.py.
"""

from __future__ import annotations

import json
import logging
import runpy
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labelgen.data.classes import coco_label_space, official_coco_categories
from labelgen.data.coco_gt import check_coco, rasterise
from labelgen.data.index import MANIFEST, dataset_splits
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.masks import read_mask, write_mask
from labelgen.formats.coco import coco_image_ids
from labelgen.formats.write import export_masks
from labelgen.pipeline.dag import STAGES
from labelgen.pipeline.indexing import load_manifest
from labelgen.pipeline.runner import plan_run, run_pipeline
from labelgen.store.sharded import StoreLayout, create_mask_store, write_mask_shard
from tests.conftest import COCO128, tiny_recipe

COCO128_JSON = COCO128 / "annotations" / "instances_train2017.json"
# coco128 photos whose every category has one instance and no crowd region: there a semantic mask per
# category is that instance, so GT-equal masks must score a segm AP near 1 against the instances
GT_IMAGES = (30, 34, 36, 42, 64, 78)


@pytest.fixture(scope="module")
def coco128():
    return json.loads(COCO128_JSON.read_text())


def gt_run(run_dir: Path, client, overrides: tuple[str, ...], edit=None, stage: str = "pseudo_labels") -> Manifest:
    """Index a data set for real, then store the index's GT masks as the run's finished `stage`:
    pseudo_labels (the train split) or predict (every split, `export --what predictions`).
    `edit(manifest) -> manifest` rewrites the manifest first (an orientation the index does not choose)."""
    recipe = tiny_recipe(*overrides)
    run_pipeline(recipe, run_dir, "index", client)
    plan = {p.stage.name: p.artifact for p in plan_run(recipe, run_dir, "full")}
    manifest = load_manifest(plan["index"])
    if edit is not None:
        manifest = edit(manifest)
        manifest.save(plan["index"].path / MANIFEST)
    dataset = recipe["dataset"]
    splits = [dataset.train_split] if stage == "pseudo_labels" else dataset_splits(dataset)
    for split in splits:
        records = manifest.split(split)
        layout = StoreLayout(tuple(r.id for r in records), tuple((r.height, r.width) for r in records), 4)
        output = STAGES[stage].output("masks")
        store = plan[stage].path / output.filename(**({output.param: split} if output.param else {}))
        store.parent.mkdir(parents=True, exist_ok=True)
        create_mask_store(store, layout, {"classes": list(manifest.classes), "split": split})
        for shard in range(layout.num_shards):
            write_mask_shard(store, layout, shard, [read_mask(records[i].mask) for i in layout.shard_range(shard)])
    plan[stage].write_success({}, {}, {"note": "GT masks stored by tests/test_export.py"})
    return manifest


# ----------------------------------------------------------------------------------------------- coco
@pytest.fixture(scope="module")
def coco2014_root(tmp_path_factory, coco128):
    """A COCO-2014-style root: `COCO_train2014_<12-digit id>.jpg` links to coco128 photos and an
    instances JSON naming them with their original image ids."""
    root = tmp_path_factory.mktemp("coco2014")
    (root / "images" / "train2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = []
    for img in coco128["images"]:
        if img["id"] in GT_IMAGES:
            name = f"COCO_train2014_{img['id']:012d}.jpg"
            (root / "images" / "train2014" / name).symlink_to(COCO128 / "images" / "train2017" / img["file_name"])
            images.append(img | {"file_name": name})
    annotations = [a for a in coco128["annotations"] if a["image_id"] in GT_IMAGES]
    data = {"images": images, "annotations": annotations, "categories": coco128["categories"]}
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def coco_export(tmp_path_factory, client, coco2014_root):
    run_dir = tmp_path_factory.mktemp("coco_run")
    overrides = ('dataset.name="coco"', f'dataset.root="{coco2014_root}"', 'dataset.train_split="train2014"')
    gt_run(run_dir, client, (*overrides, 'dataset.val_split=""'))
    out = tmp_path_factory.mktemp("coco_out")
    export_masks(run_dir, "pseudo_labels", "coco", out, client)
    return out


def test_coco_export_keeps_the_source_image_and_category_ids(coco_export, coco2014_root, coco128):
    dataset = json.loads((coco_export / "pseudo_labels_train2014.json").read_text())
    source = json.loads((coco2014_root / "annotations" / "instances_train2014.json").read_text())
    assert {i["file_name"]: (i["id"], i["width"], i["height"]) for i in dataset["images"]} == {
        i["file_name"]: (i["id"], i["width"], i["height"]) for i in source["images"]
    }
    assert {(c["id"], c["name"]) for c in dataset["categories"]} == {
        (c["id"], c["name"]) for c in coco128["categories"]
    }
    # every (image, category) of the original instances comes back with the same ids, and nothing else
    original = {(a["image_id"], a["category_id"]) for a in source["annotations"]}
    assert {(a["image_id"], a["category_id"]) for a in dataset["annotations"]} == original
    results = json.loads((coco_export / "pseudo_labels_train2014_results.json").read_text())
    assert isinstance(results, list) and {(r["image_id"], r["category_id"]) for r in results} == original
    assert all(r["score"] == 1.0 and "bbox" not in r for r in results)


def test_coco_results_evaluate_against_the_original_json(coco_export):
    """`COCO(original).loadRes(results)` + `COCOeval(segm)` run unchanged; GT-equal masks of photos
    with one instance per category score AP near 1 on the exported images."""
    gt = COCO(str(COCO128_JSON))  # coco128's own instances_train2017.json: the ids are the originals
    dt = gt.loadRes(str(coco_export / "pseudo_labels_train2014_results.json"))
    evaluation = COCOeval(gt, dt, iouType="segm")
    evaluation.params.imgIds = list(GT_IMAGES)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] > 0.9  # AP@[.5:.95]
    assert evaluation.stats[1] == pytest.approx(1.0)  # AP@.5: every region matches its instance


def _record(image_id: str, source_id: int | None) -> ImageRecord:
    return ImageRecord(image_id, f"/data/{image_id}.jpg", 4, 3, (1,), None, "train", "0", 1, source_id)


def test_coco_image_ids_fall_back_to_numeric_stems_then_counting():
    assert coco_image_ids([_record("COCO_val2014_000000000042", 42), _record("b", 7)]) == (
        {"COCO_val2014_000000000042": 42, "b": 7},
        "source ids",
    )
    assert coco_image_ids([_record("000000000042", None), _record("7", None)])[0] == {"000000000042": 42, "7": 7}
    assert coco_image_ids([_record("2008_000123", None), _record("cat", None)])[0] == {"2008_000123": 1, "cat": 2}
    assert coco_image_ids([_record("042", None), _record("42", None)])[0] == {"042": 1, "42": 2}  # not distinct


# ------------------------------------------------------------------------------------- mmseg and EXIF
def _coco128_photo(coco128, image_id: int) -> tuple[Path, np.ndarray]:
    """A coco128 photo's path and its GT class-index mask (80 contiguous labels), upright."""
    img = next(i for i in coco128["images"] if i["id"] == image_id)
    names = official_coco_categories()
    _, label_of = coco_label_space(names, "contiguous", "coco128")
    anns = [
        a | {"label": label_of[a["category_id"]], "name": names[a["category_id"]]}
        for a in coco128["annotations"]
        if a["image_id"] == image_id
    ]
    gt = check_coco(tuple(anns), img["height"], img["width"])
    return COCO128 / "images" / "train2017" / img["file_name"], rasterise(gt.shapes, img["height"], img["width"])


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, coco128):
    """A folder data set of three coco128 photos: `plain.jpg` (bytes as they are), `lossless.png`
    (decoded and saved as PNG) and `turned.jpg`, stored turned by 90° with EXIF orientation 6 (the
    way a phone saves a portrait photo); masks/ holds GT masks in the stored pixels' frame.
    Returns the root and, per stem, the upright pixels and mask the photo was made from."""
    root = tmp_path_factory.mktemp("folder")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    names = coco_label_space(official_coco_categories(), "contiguous", "coco128")[0][1:]
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    upright = {}
    for stem, image_id in (("plain", 30), ("lossless", 34), ("turned", 42)):
        path, mask = _coco128_photo(coco128, image_id)
        if stem == "plain":
            shutil.copyfile(path, root / "images" / "plain.jpg")
        elif stem == "lossless":
            Image.open(path).save(root / "images" / "lossless.png")
        else:
            exif = Image.Exif()
            exif[0x0112] = 6  # "rotate 90° clockwise to view": undoes the ROTATE_90 (counter-clockwise) below
            Image.open(path).transpose(Image.Transpose.ROTATE_90).save(root / "images" / "turned.jpg", exif=exif)
        stored = Image.open(next((root / "images").glob(f"{stem}.*")))  # PIL ignores EXIF: the stored pixels
        pixels = np.asarray(stored.transpose(Image.Transpose.ROTATE_270) if stem == "turned" else stored.convert("RGB"))
        frame_mask = np.rot90(mask) if stem == "turned" else mask  # np.rot90 turns counter-clockwise too
        write_mask(root / "masks" / f"{stem}.png", frame_mask)
        upright[stem] = (pixels, mask)
    tags = {stem: sorted({names[v - 1] for v in np.unique(m) if 0 < v < 255}) for stem, (_, m) in upright.items()}
    rows = ["image,tags"] + [f"images/{p.name},{';'.join(tags[p.stem])}" for p in sorted((root / "images").iterdir())]
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root, upright


def _turn_upright(manifest: Manifest, upright_mask: Path) -> Manifest:
    """The manifest with `turned`'s row in the upright frame: orientation 6, size and mask turned."""
    records = tuple(
        replace(r, orientation=6, width=r.height, height=r.width, mask=str(upright_mask)) if r.id == "turned" else r
        for r in manifest.records
    )
    return replace(manifest, records=records)


def _decoders(path: Path) -> dict[str, np.ndarray]:
    """An image file as the target tools decode it, RGB: PIL as is (torchvision, plain PIL loaders),
    PIL with exif_transpose (mmcv's pillow backend), OpenCV (mmcv's default backend, detectron2-like)."""
    with Image.open(path) as img:
        plain = np.asarray(img.convert("RGB"))
        transposed = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    return {"pil": plain, "pil_exif_transpose": transposed, "cv2": cv2.imread(str(path))[:, :, ::-1]}


@pytest.fixture(scope="module", params=[1, 6], ids=["orientation1", "orientation6"])
def folder_run(request, tmp_path_factory, client, mixed_folder):
    """A run over the mixed folder; `turned` in the stored frame (orientation 1, annotations drawn on
    the stored pixels) or in the upright frame (orientation 6, the EXIF turn applied)."""
    root, upright = mixed_folder
    run_dir = tmp_path_factory.mktemp(f"folder_run_{request.param}")
    edit = None
    if request.param == 6:
        write_mask(run_dir / "turned_upright.png", upright["turned"][1])
        edit = lambda m: _turn_upright(m, run_dir / "turned_upright.png")  # noqa: E731
    gt_run(run_dir, client, ('dataset.name="folder"', f'dataset.root="{root}"', 'dataset.val_split=""'), edit)
    return run_dir, request.param


def _frame(upright: dict, stem: str, orientation: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixels and mask of a photo in the frame the run uses (the stored frame of `turned` when its
    orientation is 1), made from the upright photo without labelgen's code."""
    pixels, mask = upright[stem]
    if stem == "turned" and orientation == 1:
        return np.rot90(pixels), np.rot90(mask)
    return pixels, mask


def test_mmseg_export_has_one_suffix_and_the_settings_to_find_it(folder_run, mixed_folder, client, tmp_path):
    run_dir, _ = folder_run
    root, _ = mixed_folder
    export_masks(run_dir, "pseudo_labels", "mmseg", tmp_path, client)
    config = runpy.run_path(str(tmp_path / "mmseg_dataset.py"))
    dataset = config["train_dataloader"]["dataset"]
    assert dataset["img_suffix"] == ".jpg"  # two of the three photos are JPEGs
    assert (dataset["seg_map_suffix"], dataset["reduce_zero_label"], dataset["ignore_index"]) == (".png", False, 255)
    assert dataset["type"] == "BaseSegDataset" and Path(dataset["data_root"]) == tmp_path
    assert dataset["metainfo"]["classes"][:2] == ["background", "person"] and len(dataset["metainfo"]["classes"]) == 81
    assert len(dataset["metainfo"]["palette"]) == 81 and dataset["metainfo"]["palette"][1] == [128, 0, 0]
    image_dir = tmp_path / dataset["data_prefix"]["img_path"]
    seg_dir = tmp_path / dataset["data_prefix"]["seg_map_path"]
    ids = (tmp_path / dataset["ann_file"]).read_text().split()
    # both ways mmseg lists a data set: ids of the split file + suffix, or every file with the suffix
    assert sorted(ids) == ["lossless", "plain", "turned"]
    assert sorted(p.name for p in image_dir.iterdir()) == [f"{i}.jpg" for i in sorted(ids)]
    assert sorted(p.name for p in seg_dir.iterdir()) == [f"{i}.png" for i in sorted(ids)]
    assert (image_dir / "plain.jpg").read_bytes() == (root / "images" / "plain.jpg").read_bytes()  # copied as is


def test_mmseg_images_decode_in_every_reader_to_the_pixels_their_masks_lie_on(
    folder_run, mixed_folder, client, tmp_path
):
    """The turned photo and the PNG are re-encoded (labelgen's frame, no EXIF tag), so PIL with and
    without exif_transpose and OpenCV decode the same pixels, and those are the photo's pixels in the
    mask's frame: the mask's objects lie on the objects."""
    run_dir, orientation = folder_run
    _, upright = mixed_folder
    export_masks(run_dir, "pseudo_labels", "mmseg", tmp_path, client)
    for stem in ("plain", "lossless", "turned"):
        pixels, mask = _frame(upright, stem, orientation)
        exported = read_mask(tmp_path / "ann_dir" / "train" / f"{stem}.png")
        assert np.array_equal(exported, mask), stem
        for decoder, decoded in _decoders(tmp_path / "img_dir" / "train" / f"{stem}.jpg").items():
            assert decoded.shape == (*mask.shape, 3), (stem, decoder)
            # JPEG at quality 95: 1-2 grey levels on average; shifted by one pixel these photos differ by 9-27
            assert np.abs(decoded.astype(int) - pixels).mean() < 3.0, (stem, decoder)
            objects = mask > 0
            assert np.abs(decoded[objects].astype(int) - pixels[objects]).mean() < 3.0, (stem, decoder)


def test_coco_and_voc_masks_are_in_the_frame_of_the_manifest(folder_run, mixed_folder, client, tmp_path, caplog):
    """COCO width/height and RLE sizes are the frame's; VOC and COCO, which write no images, warn when
    EXIF-applying readers decode an image in another frame than its mask (orientation 1 of a file
    tagged 6)."""
    run_dir, orientation = folder_run
    root, upright = mixed_folder
    with caplog.at_level(logging.WARNING, logger="labelgen"):
        export_masks(run_dir, "pseudo_labels", "coco", tmp_path / "coco", client)
        export_masks(run_dir, "pseudo_labels", "voc", tmp_path / "voc", client)
    dataset = json.loads((tmp_path / "coco" / "pseudo_labels_train.json").read_text())
    # a folder set's images lie anywhere under its root: file_name is the path there, as detectron2's
    # load_coco_json(json, image_root=<data root>) joins it
    assert sorted(i["file_name"] for i in dataset["images"]) == [
        "images/lossless.png",
        "images/plain.jpg",
        "images/turned.jpg",
    ]
    assert all((root / i["file_name"]).is_file() for i in dataset["images"])
    for image in dataset["images"]:
        _, mask = _frame(upright, Path(image["file_name"]).stem, orientation)
        assert (image["height"], image["width"]) == mask.shape
        sizes = {tuple(a["segmentation"]["size"]) for a in dataset["annotations"] if a["image_id"] == image["id"]}
        assert sizes == {mask.shape}
    assert np.array_equal(
        read_mask(tmp_path / "voc" / "SegmentationClass" / "turned.png"), _frame(upright, "turned", orientation)[1]
    )
    warned = [r.message for r in caplog.records if "EXIF orientation other than" in r.message]
    assert len(warned) == (2 if orientation == 1 else 0) and all(m.startswith("export: 1 image(s)") for m in warned)
