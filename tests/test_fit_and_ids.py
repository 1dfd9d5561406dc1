"""Issue 21: shapes that do not fit their image, id conventions, messages. Every input is a mutation
of coco128's real photos and instances JSON (or voc2012-mini), written into tmp_path."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labelgen.cli import main
from labelgen.config import DatasetParams
from labelgen.data.classes import voc_classes
from labelgen.data.coco_gt import rle_run_total
from labelgen.data.index import NoUsableImages
from labelgen.data.masks import gt_mask, read_mask, voc_palette
from labelgen.data.problems import describe
from labelgen.formats.write import export_masks
from labelgen.pipeline.indexing import index_dataset
from tests.conftest import SHARED
from tests.realdata import coco_json, coco_photo, write_coco_root
from tests.test_export import GT_IMAGES, gt_run

COCO_SET = DatasetParams(name="coco", train_split="train2017", val_split="")
DOG = 1774  # the one dog of photo 74 (640×426; also a bicycle and six people)
SHORT = 260  # characters: a problem line without its folders (the user's: any length) stays under this
FOLDER_SET = DatasetParams(name="folder", val_split="")
DOG_LABEL = 17  # COCO category 18 in the contiguous label space


def _short(entry: dict) -> bool:
    """Whether a problem's line (`data check` prints it) is short, its folders left out: they are the user's."""
    return len(re.sub(r"(/[^\s/:]+)+/", "", describe(entry))) < SHORT


def _problems(out: Path) -> list[dict]:
    return json.loads((out / "problems.json").read_text())


def _ann(data: dict, ann_id: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _fortran_runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed counts of a binary mask: runs in column-major order, starting with zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def _index(tmp_path: Path, data: dict, params: DatasetParams = COCO_SET):
    root = write_coco_root(tmp_path / "coco", data)
    manifest = index_dataset(params, root, tmp_path / "out")
    return {r.source_id: r for r in manifest.records}, _problems(tmp_path / "out")


def _line(problems: list[dict], ann_id: int) -> dict:
    return next(p for p in problems if f"annotation {ann_id} " in p["reason"])


# ------------------------------------------------------------------------ 1. shapes that do not fit
@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("missing", [1, 5000, -3000])  # pixels the runs leave out (negative: too many)
def test_rle_whose_runs_do_not_cover_the_image_is_not_drawn(tmp_path, compressed, missing):
    """cvat#9460 family: the dog as an RLE whose runs add up to less (or more) than height × width;
    pycocotools decodes "less" leaving the tail uninitialised. The shape is named and not drawn,
    the dog tag stays (its bbox is in the image), the image's GT is not scored."""
    data = coco_json()
    dog = _ann(data, DOG)
    rle = coco_mask.merge(coco_mask.frPyObjects(dog["segmentation"], 426, 640))
    runs = _fortran_runs(coco_mask.decode(rle))
    runs[-1] -= missing  # the last run is background (the dog does not reach the bottom-right corner)
    assert runs[-1] > 0 and sum(runs) == 426 * 640 - missing
    dog["segmentation"] = {"size": [426, 640], "counts": runs}
    if compressed:
        dog["segmentation"]["counts"] = coco_mask.frPyObjects(dog["segmentation"], 426, 640)["counts"].decode()
        assert rle_run_total(dog["segmentation"]["counts"]) == 426 * 640 - missing
    dog["iscrowd"] = 1 if compressed else 0
    by_id, problems = _index(tmp_path, data)
    assert by_id[74].tags == (1, 2, DOG_LABEL) and by_id[74].mask is None
    line = _line(problems, DOG)
    assert f"RLE runs add up to {426 * 640 - missing} pixels, not 426×640" in line["reason"]
    assert line["file"].endswith("000000000074.jpg") and "re-export" in line["reason"]
    assert by_id[73].mask is not None  # the other images are scored as before


def _moved(polygons: list[list[float]], dx: float = 0, dy: float = 0, scale: tuple[float, float] = (1, 1)):
    return [[(v * scale[k % 2] + (dx if k % 2 == 0 else dy)) for k, v in enumerate(p)] for p in polygons]


@pytest.mark.parametrize(
    "case",
    ["polygon outside, bbox inside", "polygon inside, bbox elsewhere", "normalised polygon", "polygon moved by half"],
)
def test_shape_that_disagrees_with_its_bbox_is_not_drawn(tmp_path, case):
    """The dog's polygon and its own bbox describe different places: named with both boxes, not
    drawn; the tag stays (the bbox or the shape is in the image); the image's GT is not scored."""
    data = coco_json()
    dog = _ann(data, DOG)
    x, y, w, h = dog["bbox"]
    if case == "polygon outside, bbox inside":
        dog["segmentation"] = _moved(dog["segmentation"], dx=700)
    elif case == "polygon inside, bbox elsewhere":
        dog["bbox"] = [x + 700, y, w, h]
    elif case == "normalised polygon":  # 0..1 coordinates (a YOLO-style converter) against a pixel bbox
        dog["segmentation"] = _moved(dog["segmentation"], scale=(1 / 640, 1 / 426))
    else:
        dog["segmentation"] = _moved(dog["segmentation"], dx=w / 2, dy=h / 2)
    by_id, problems = _index(tmp_path, data)
    assert by_id[74].tags == (1, 2, DOG_LABEL) and by_id[74].mask is None
    line = _line(problems, DOG)
    assert "its shape spans x0,y0,x1,y1" in line["reason"] and "do not describe one object" in line["reason"]
    assert "tag kept" in line["reason"]
    not_scored = next(p for p in problems if p["file"] == line["file"] and p["action"] == "kept; GT not scored")
    assert f"(annotations {DOG})" in not_scored["reason"]


def test_shape_running_past_the_border_with_its_bbox_clipped_is_drawn(tmp_path):
    """A tool that clips the bbox to the image but not the polygon: the two agree inside the image."""
    data = coco_json()
    dog = _ann(data, DOG)
    x, y, w, h = dog["bbox"]
    dx = 640 - x - 0.3 * w  # 70 % of the dog beyond the right border
    dog["segmentation"] = _moved(dog["segmentation"], dx=dx)
    dog["bbox"] = [x + dx, y, 640 - (x + dx), h]
    by_id, problems = _index(tmp_path, data)
    assert by_id[74].mask is not None and (read_mask(by_id[74].mask) == DOG_LABEL).any()
    assert not [p for p in problems if f"annotation {DOG} " in p["reason"]]


def test_shape_and_bbox_both_outside_the_image_are_skipped_whole(tmp_path):
    data = coco_json()
    dog = _ann(data, DOG)
    dog["segmentation"] = _moved(dog["segmentation"], dx=700)
    dog["bbox"][0] += 700
    by_id, problems = _index(tmp_path, data)
    assert by_id[74].tags == (1, 2)  # nothing of the dog is in the image: no tag
    assert by_id[74].mask is not None and not (read_mask(by_id[74].mask) == DOG_LABEL).any()
    assert "skipped" in _line(problems, DOG)["reason"]


def test_real_annotations_agree_with_their_bboxes(tmp_path):
    """The rule refuses none of coco128's own 929 annotations (polygons and crowd RLEs)."""
    data = json.loads((SHARED / "data" / "coco128" / "annotations" / "instances_train2017.json").read_text())
    by_id, problems = _index(tmp_path, data)
    assert not [p for p in problems if "do not describe one object" in p["reason"] or "RLE runs" in p["reason"]]


def test_a_fault_repeated_in_one_annotation_is_one_short_line(tmp_path):
    """An annotation of 40 two-point polygons and 3 odd ones: one line, each fault once, short."""
    data = coco_json()
    dog = _ann(data, DOG)
    dog["segmentation"] = [[100 + k, 300, 110 + k, 310] for k in range(40)] + [[1, 2, 3]] * 3
    _, problems = _index(tmp_path, data)
    lines = [p for p in problems if f"annotation {DOG} " in p["reason"]]
    assert len(lines) == 1
    reason = lines[0]["reason"]
    assert "polygons 0, 1, 2 and 37 more: each has 2 point(s)" in reason
    assert "polygons 40, 41, 42: each has an odd coordinate count" in reason
    assert reason.count("point(s)") == 1
    assert all(_short(p) for p in problems), max(problems, key=lambda p: len(describe(p)))


# ----------------------------------------------------------------------------------- 2. id conventions
def _eval_against(source_json: Path, results: Path, image_ids) -> list[float]:
    gt = COCO(str(source_json))
    evaluation = COCOeval(gt, gt.loadRes(str(results)), iouType="segm")
    evaluation.params.imgIds = list(image_ids)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return list(evaluation.stats)


def _gt_images_root(root: Path, edit) -> Path:
    data = coco_json(GT_IMAGES)
    edit(data)
    return write_coco_root(root, data)


def _export_gt(tmp_path: Path, client, root: Path):
    run_dir = tmp_path / "run"
    overrides = ('dataset.name="coco"', f'dataset.root="{root}"', 'dataset.train_split="train2017"')
    manifest = gt_run(run_dir, client, (*overrides, 'dataset.val_split=""'))
    out = tmp_path / "export"
    export_masks(run_dir, "pseudo_labels", "coco", out, client)
    return manifest, out


def _ids_from_zero(data: dict) -> None:
    """supervision#1181 / Label Studio#737: categories numbered 0..K-1 in the order they are declared."""
    new = {c["id"]: k for k, c in enumerate(data["categories"])}
    data["categories"] = [c | {"id": new[c["id"]]} for c in data["categories"]]
    for a in data["annotations"]:
        a["category_id"] = new[a["category_id"]]


def _roboflow_root(data: dict) -> None:
    """A Roboflow export: a root category (id 0, "objects", used by no annotation), the supercategory
    of the classes, which keep ids 1..K."""
    used = sorted({a["category_id"] for a in data["annotations"]})
    new = {old: k for k, old in enumerate(used, 1)}
    classes = [
        {"id": new[c["id"]], "name": c["name"], "supercategory": "objects"}
        for c in data["categories"]
        if c["id"] in new
    ]
    data["categories"] = [{"id": 0, "name": "objects", "supercategory": "none"}, *classes]
    for a in data["annotations"]:
        a["category_id"] = new[a["category_id"]]


@pytest.mark.parametrize("convention", [_ids_from_zero, _roboflow_root], ids=["ids from 0", "roboflow root"])
def test_export_keeps_the_source_category_ids(tmp_path, client, convention):
    """The COCO export's categories are the source's (id 0 included); its results load with loadRes
    and score with COCOeval against the ORIGINAL (modified) file: GT-equal masks match every object."""
    root = _gt_images_root(tmp_path / "coco", convention)
    source_json = root / "annotations" / "instances_train2017.json"
    source = json.loads(source_json.read_text())
    manifest, out = _export_gt(tmp_path, client, root)
    dataset = json.loads((out / "pseudo_labels_train2017.json").read_text())
    classes = {(c["id"], c["name"]) for c in source["categories"] if c["name"] != "objects"}
    assert {(c["id"], c["name"]) for c in dataset["categories"]} == classes
    assert "objects" not in manifest.classes
    original = {(a["image_id"], a["category_id"]) for a in source["annotations"]}
    assert {(a["image_id"], a["category_id"]) for a in dataset["annotations"]} == original
    if convention is _ids_from_zero:
        assert any(c == 0 for _, c in original)  # the class with id 0 is exported, under id 0
    stats = _eval_against(source_json, out / "pseudo_labels_train2017_results.json", GT_IMAGES)
    assert stats[1] == pytest.approx(1.0)  # AP@.5: every region matches its object


def test_roboflow_root_category_is_named_not_a_class(tmp_path):
    data = coco_json()
    _roboflow_root(data)
    root = write_coco_root(tmp_path / "coco", data)
    manifest = index_dataset(COCO_SET, root, tmp_path / "out")
    assert manifest.classes == ("background", "person", "bicycle", "motorcycle", "airplane", "dog", "toilet")
    assert manifest.category_ids == (None, 1, 2, 3, 4, 5, 6)
    note = next(p for p in _problems(tmp_path / "out") if "'objects'" in p["reason"])
    assert note["action"] == "category not made a class" and "category 0 'objects'" in note["reason"]
    assert note["file"].endswith("instances_train2017.json")


def test_category_used_by_annotations_stays_a_class_though_a_supercategory(tmp_path):
    """Only an UNUSED supercategory is a root: a used one stays a class."""
    data = coco_json()
    _roboflow_root(data)
    data["annotations"][0]["category_id"] = 0
    manifest = index_dataset(COCO_SET, write_coco_root(tmp_path / "coco", data), tmp_path / "out")
    assert "objects" in manifest.classes and manifest.category_ids[1] == 0


# -------------------------------------------------------------------------------------- 4. messages
@pytest.mark.parametrize("untagged", ["leave_out", "keep"])
def test_coco_export_without_annotations_is_named_once(tmp_path, untagged):
    """Label Studio#4475: `"annotations": []`. One line names the cause; no image says "set
    dataset.untagged=keep"; kept as negatives, no image has GT to be scored (no 100 % mIoU)."""
    data = coco_json() | {"annotations": []}
    root = write_coco_root(tmp_path / "coco", data)
    params = DatasetParams(name="coco", train_split="train2017", val_split="", untagged=untagged)
    if untagged == "leave_out":
        with pytest.raises(NoUsableImages):
            index_dataset(params, root, tmp_path / "out")
    else:
        manifest = index_dataset(params, root, tmp_path / "out")
        assert len(manifest.records) == 4 and all(r.mask is None and not r.tags for r in manifest.records)
    problems = _problems(tmp_path / "out")
    assert len(problems) == 1, problems
    assert "the JSON has no annotations" in problems[0]["reason"]
    assert problems[0]["file"].endswith("instances_train2017.json") and _short(problems[0])
    check = CliRunner().invoke(
        main,
        ["data", "check", "--dataset", "coco", "--data-root", str(root), "--split", "train2017"],
    )
    assert check.output.count("the JSON has no annotations") == 1 and "untagged=keep to train" not in check.output


def test_unknown_category_line_is_short(tmp_path):
    data = coco_json()
    data["annotations"].append(_ann(data, DOG) | {"id": 9006, "category_id": 99})
    _, problems = _index(tmp_path, data)
    line = _line(problems, 9006) if any("annotation 9006 " in p["reason"] for p in problems) else None
    line = line or next(p for p in problems if "annotation 9006" in p["file"])
    assert "category_id 99 is not among the file's 80 categories" in line["reason"]
    assert _short(line)


def test_deeplab_two_column_list_is_read(tmp_path):
    """DeepLab's `train_aug.txt`: `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png` a line. Read as
    the images and masks it names, with no line about `.jpg.xml` paths."""
    voc = tmp_path / "VOC2012"
    shutil.copytree(SHARED / "data" / "voc2012-mini", voc, symlinks=True)
    base = next(p.parent for p in voc.rglob("JPEGImages"))
    ids = sorted(p.stem for p in (base / "SegmentationClass").glob("*.png"))
    (base / "SegmentationClassAug").mkdir(exist_ok=True)
    for i in ids:
        shutil.copy(base / "SegmentationClass" / f"{i}.png", base / "SegmentationClassAug" / f"{i}.png")
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids) + "a b c\n"
    )
    params = DatasetParams(name="voc", train_split="train_aug", val_split="")
    manifest = index_dataset(params, voc, tmp_path / "out")
    assert sorted(r.id for r in manifest.records) == ids
    assert all(r.mask.endswith(f"SegmentationClassAug/{r.id}.png") for r in manifest.records)
    problems = _problems(tmp_path / "out")
    assert not [p for p in problems if ".xml" in p["file"]]
    (bad,) = problems
    assert bad["where"].endswith(f"train_aug.txt:{len(ids) + 1}") and "a VOC list holds an id a line" in bad["reason"]


# ------------------------------------------------------------------------- 3. mask files as people save
def _voc_rgb(mask: np.ndarray) -> Image.Image:
    """A class-index mask as a colour PNG in VOC colours (how people re-save palette masks)."""
    img = Image.fromarray(mask)
    img.putpalette(voc_palette())
    return img.convert("RGB")


@pytest.fixture
def saved_masks(tmp_path):
    """A folder set (classes cat, dog; tags from tags.csv) on coco128 photos, one mask per way people
    save them, plus two files in masks/ that no image reads. Returns the root and the dog region."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    masks = root / "masks"
    masks.mkdir()
    dog = np.zeros((120, 160), np.uint8)
    dog[30:90, 40:120] = 2  # 'dog' is label 2
    dog[30, 40:120] = 255  # an ignore border, as VOC draws one
    rows = ["image,tags"]
    names = ("colour", "colour_unknown", "palette_order", "jpeg", "rgba", "plain")
    for n, name in enumerate(names):
        photo = Image.open(coco_photo((73, 472, 636, 74)[n % 4])).convert("RGB").resize((160, 120))
        photo.save(root / "images" / f"{name}.jpg")
        rows.append(f"images/{name}.jpg,dog")
    _voc_rgb(dog).save(masks / "colour.png")  # RGB, every colour a class's VOC colour
    _voc_rgb(dog).convert("RGBA").save(masks / "rgba.png")
    unknown = np.array(_voc_rgb(dog))
    unknown[60, 60] = (200, 10, 10)  # an anti-aliased / hand-picked colour of no class
    Image.fromarray(unknown).save(masks / "colour_unknown.png")
    # another tool's class order: dog is index 1, drawn in the VOC colour of label 2 (dog here)
    other = Image.fromarray(np.where(dog == 2, 1, dog).astype(np.uint8))
    swapped = list(voc_palette())
    swapped[3:6], swapped[6:9] = swapped[6:9], swapped[3:6]
    other.putpalette(swapped)
    other.save(masks / "palette_order.png")
    Image.fromarray(dog).save(masks / "jpeg.png", format="JPEG", quality=95)  # JPEG bytes, .png name
    Image.fromarray(dog).save(masks / "plain.png")
    Image.fromarray(dog).save(masks / "plain.jpg")  # another extension of a listed image's mask
    Image.fromarray(dog).save(masks / "orphan.png")  # no such image
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root, dog


def test_masks_as_people_save_them(tmp_path, saved_masks):
    root, dog = saved_masks
    manifest = index_dataset(FOLDER_SET, root, tmp_path / "out")
    by_id = {r.id: r for r in manifest.records}
    assert set(by_id) == {"colour", "colour_unknown", "palette_order", "jpeg", "rgba", "plain"}  # none lost
    assert all(r.tags == (2,) for r in by_id.values())
    for name in ("colour", "rgba", "plain"):  # decoded (VOC colours, ignore colour included) or read as is
        assert np.array_equal(gt_mask(by_id[name]), dog), name
    problems = _problems(tmp_path / "out")
    by_file = {Path(p["file"]).name: p for p in problems if p["action"] != "converted when read"}
    for name in ("colour_unknown", "palette_order", "jpeg"):
        assert by_id[name].mask is None, name
        entry = next(p for p in problems if Path(p["file"]).stem == name and p["action"] == "kept; GT not scored")
        assert f"masks/{name}.png" in entry["reason"] and _short(entry), entry
    reason = {n: next(p["reason"] for p in problems if Path(p["file"]).stem == n) for n in by_id}
    assert "(200,10,10)" in reason["colour_unknown"] and "no class's VOC palette colour" in reason["colour_unknown"]
    assert "draws index 1 in the VOC colour of label 2" in reason["palette_order"]
    assert "holds JPEG bytes" in reason["jpeg"] and "save it as a PNG" in reason["jpeg"]
    decoded = next(p for p in problems if p["action"] == "converted when read" and "colour.png" in p["reason"])
    assert "decoded with the VOC palette" in decoded["reason"]
    assert by_file["plain.jpg"]["action"] == "file not read"
    assert "masks/<image stem>.png" in by_file["plain.jpg"]["reason"]
    assert "no image 'orphan' in the tags file" in by_file["orphan.png"]["reason"]
    check = CliRunner().invoke(main, ["data", "check", "--dataset", "folder", "--data-root", str(root)])
    for name in ("colour_unknown.png", "palette_order.png", "jpeg.png", "plain.jpg", "orphan.png"):
        assert sum(name in line for line in check.output.splitlines()) == 1, (name, check.output)


def test_voc_colour_mask_keeps_its_image(tmp_path):
    """VOC, tags from the masks: a SegmentationClass mask re-saved as RGB is decoded, not a lost image."""
    voc = tmp_path / "voc"
    shutil.copytree(SHARED / "data" / "voc2012-mini", voc)
    seg = voc / "VOC2012" / "SegmentationClass"
    first = sorted(seg.glob("*.png"))[0]
    index = read_mask(first)
    _voc_rgb(index).save(first)
    params = DatasetParams(name="voc", train_split="train", val_split="val")
    manifest = index_dataset(params, voc, tmp_path / "out")
    record = next(r for r in manifest.records if r.id == first.stem)
    assert np.array_equal(gt_mask(record), index) and record.tags


def _cvat_colours(n: int) -> list[tuple[int, int, int]]:
    """n distinct colours none of which is a VOC palette colour (as CVAT picks its own)."""
    voc = {tuple(voc_palette()[3 * k : 3 * k + 3]) for k in range(256)}
    rng = np.random.default_rng(7)
    out: list[tuple[int, int, int]] = []
    while len(out) < n:
        c = tuple(int(v) for v in rng.integers(1, 255, 3))
        if c not in voc and c not in out:
            out.append(c)
    return out


def _paint(mask: np.ndarray, colour_of: dict[int, tuple[int, int, int]]) -> np.ndarray:
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    for value, colour in colour_of.items():
        rgb[mask == value] = colour
    return rgb


def _cvat_voc(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], dict[int, tuple[int, int, int]], list[str]]:
    """voc2012-mini as CVAT's "Segmentation mask 1.1" writes it: labelmap.txt at the root (its own
    colours, CVAT's label order), SegmentationClass/*.png in those colours."""
    voc = tmp_path / "voc"
    shutil.copytree(SHARED / "data" / "voc2012-mini", voc)
    base = voc / "VOC2012"
    names = list(voc_classes())
    colours = _cvat_colours(len(names) + 1)
    colour_of = {k: colours[k] for k in range(len(names))} | {255: colours[-1]}
    order = [0, *reversed(range(1, len(names)))]  # CVAT lists labels in its own order
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{names[k]}:{','.join(map(str, colour_of[k]))}::" for k in order]
    lines.append(f"ignore:{','.join(map(str, colour_of[255]))}::")
    (base / "labelmap.txt").write_text("\n".join(lines) + "\n")
    truth = {}
    for path in sorted((base / "SegmentationClass").glob("*.png")):
        truth[path.stem] = read_mask(path)
        Image.fromarray(_paint(truth[path.stem], colour_of)).save(path)
    return voc, truth, colour_of, names


def test_colour_masks_decode_against_the_data_sets_declared_labelmap(tmp_path):
    """Issue 21, colour masks of a data set's own colours (CVAT's labelmap.txt): every GT pixel is
    the class its colour declares, not refused as "no VOC palette colour" (today's code)."""
    voc, truth, colour_of, _ = _cvat_voc(tmp_path)
    params = DatasetParams(name="voc", train_split="train", val_split="val")
    manifest = index_dataset(params, voc, tmp_path / "out")
    assert {r.id for r in manifest.records} == set(truth)
    for record in manifest.records:
        assert np.array_equal(gt_mask(record), truth[record.id]), record.id
        assert record.tags == tuple(sorted({int(v) for v in np.unique(truth[record.id]) if 0 < v < 255}))
    notes = [p for p in _problems(tmp_path / "out") if p["action"] == "converted when read"]
    assert len(notes) == len(truth) and all("labelmap.txt" in p["reason"] for p in notes)


def test_a_colour_the_labelmap_lacks_is_named_and_only_that_gt_is_left_out(tmp_path):
    """A mask drawn with a colour its labelmap.txt does not list, and a labelmap name that is no class:
    one short line each, naming the colour, the name and the fix; the other masks are decoded."""
    voc, truth, colour_of, names = _cvat_voc(tmp_path)
    base = voc / "VOC2012"
    first, second = sorted(truth)[:2]
    rgb = np.asarray(Image.open(base / "SegmentationClass" / f"{first}.png")).copy()
    rgb[:5, :5] = (3, 2, 1)
    Image.fromarray(rgb).save(base / "SegmentationClass" / f"{first}.png")
    text = (base / "labelmap.txt").read_text()
    label = int(next(v for v in np.unique(truth[second]) if 0 < v < 255))
    (base / "labelmap.txt").write_text(text.replace(f"\n{names[label]}:", f"\n{names[label].upper()}X:"))
    check = CliRunner().invoke(
        main, ["data", "check", "--dataset", "voc", "--data-root", str(voc), "--set", "dataset.train_split=train"]
    )
    lines = check.output.splitlines()
    assert any(first in line and "(3,2,1)" in line and "labelmap.txt" in line for line in lines), check.output
    renamed = f"'{names[label].upper()}X'"
    assert any(second in line and renamed in line and "under a class name" in line for line in lines), check.output
    assert all(len(line) < 300 for line in lines), check.output
    manifest = index_dataset(DatasetParams(name="voc", train_split="train", val_split="val"), voc, tmp_path / "out")
    third = next(r for r in manifest.records if r.id not in (first, second))
    assert np.array_equal(gt_mask(third), truth[third.id])


def test_a_label_map_is_checked_once_for_the_whole_data_set(tmp_path):
    """A malformed labelmap.txt is one error (exit 2) naming its line, not a line per image; two that
    disagree (root and masks/ of a folder set) are refused naming both; a name that is no class and
    colours no mask is one note."""
    voc, truth, colour_of, names = _cvat_voc(tmp_path)
    base = voc / "VOC2012"
    labelmap = base / "labelmap.txt"
    good = labelmap.read_text()
    args = ["data", "check", "--dataset", "voc", "--data-root", str(voc), "--set", "dataset.train_split=train"]
    labelmap.write_text(good + "zebra:5,6,7::\n")
    noted = CliRunner().invoke(main, args)
    assert noted.exit_code == 0, noted.output
    zebra = [line for line in noted.output.splitlines() if "'zebra'" in line]
    assert len(zebra) == 1 and zebra[0].endswith("[label not a class]") and "(5,6,7)" in zebra[0]
    labelmap.write_text(good + "cat:12,34::\n")
    malformed = CliRunner().invoke(main, args)
    errors = [line for line in malformed.output.splitlines() if line.startswith("error:")]
    assert malformed.exit_code == 2 and len(errors) == 1, malformed.output
    assert f"{labelmap} line {len(good.splitlines()) + 1}: 'cat:12,34::'" in errors[0]
    # a folder set with a label map at its root and another in masks/
    root = tmp_path / "folder"
    (root / "masks").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(names[1:]) + "\n")
    rows = ["image,tags"]
    for stem in truth:
        shutil.copy(base / "JPEGImages" / f"{stem}.jpg", root / f"{stem}.jpg")
        shutil.copy(base / "SegmentationClass" / f"{stem}.png", root / "masks" / f"{stem}.png")
        rows.append(f"{stem}.jpg,{';'.join(names[v] for v in np.unique(truth[stem]) if 0 < v < 255)}")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    (root / "labelmap.txt").write_text(good)
    (root / "masks" / "labelmap.txt").write_text(good.replace(names[1], names[2] + "x"))
    both = CliRunner().invoke(main, ["data", "check", "--dataset", "folder", "--data-root", str(root)])
    assert both.exit_code == 2 and "declare different mask colours" in both.output, both.output
    (root / "masks" / "labelmap.txt").unlink()
    manifest = index_dataset(FOLDER_SET, root, tmp_path / "out")
    for record in manifest.records:
        assert np.array_equal(gt_mask(record), truth[record.id]), record.id


def test_a_deeplab_list_line_naming_a_missing_file_is_named_with_its_line(tmp_path):
    """A two-column train_aug.txt whose line names an image or mask that is not there: one short
    line naming the list's line and the missing path, not a missing XML annotation; a line naming an
    image already listed says so, with the fix."""
    voc = tmp_path / "voc"
    shutil.copytree(SHARED / "data" / "voc2012-mini", voc)
    base = voc / "VOC2012"
    (base / "SegmentationClassAug").mkdir()
    stems = sorted(p.stem for p in (base / "SegmentationClass").glob("*.png"))
    for stem in stems:
        shutil.copy(base / "SegmentationClass" / f"{stem}.png", base / "SegmentationClassAug" / f"{stem}.png")
    lines = [f"/JPEGImages/{s}.jpg /SegmentationClassAug/{s}.png" for s in stems]
    lines.append("/JPEGImages/2011_999999.jpg /SegmentationClassAug/2011_999999.png")
    lines.append(f"/JPEGImages/{stems[0]}.jpg")
    (base / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(lines) + "\n")
    check = CliRunner().invoke(
        main, ["data", "check", "--dataset", "voc", "--data-root", str(voc), "--set", "dataset.train_split=train_aug"]
    )
    out = check.output.splitlines()
    missing = [line for line in out if "2011_999999" in line]
    assert len(missing) == 1 and f"train_aug.txt:{len(stems) + 1}:" in missing[0], check.output
    assert "JPEGImages/2011_999999.jpg and SegmentationClassAug/2011_999999.png" in missing[0]
    assert "fix the path or remove the line" in missing[0] and "xml" not in missing[0].lower()
    twice = [line for line in out if "listed twice" in line]
    assert len(twice) == 1 and "remove it" in twice[0], check.output
    assert all(len(line) < 300 for line in out), check.output


def test_an_empty_split_list_is_named(tmp_path):
    """voc2012-mini's val.txt lists no image: one note naming the list and the split, not silence."""
    out = tmp_path / "out"
    index_dataset(
        DatasetParams(name="voc", train_split="train", val_split="val"), SHARED / "data" / "voc2012-mini", out
    )
    (entry,) = [p for p in _problems(out) if p["file"].endswith("val.txt")]
    assert "split 'val' is empty" in entry["reason"] and entry["action"] == "not indexed (split not used)"
