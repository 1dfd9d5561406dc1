"""Issue 11, ingest: the inputs real users bring (rebuilt from public bug reports of segmentation
tools, on real coco128 photos) are read right, or named and left out, and never cost the index."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from labelgen.cli import main
from labelgen.config import DatasetParams
from labelgen.data.images import read_image
from labelgen.data.masks import read_mask, write_mask
from labelgen.pipeline.indexing import index_dataset
from tests.realdata import coco_json, coco_photo, save_exif_rotated, write_coco_root

COCO = DatasetParams(name="coco", train_split="train2017", val_split="")
FOLDER = DatasetParams(name="folder", val_split="")


def _problems(out: Path) -> list[dict]:
    return json.loads((out / "problems.json").read_text())


def _ann(data: dict, image_id: int, category_id: int, segmentation, ann_id: int, bbox=None) -> None:
    data["annotations"].append(
        {
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": segmentation,
            "iscrowd": 0,
            "area": 1.0,
            "bbox": bbox if bbox is not None else [100, 50, 30, 10],
        }
    )


# ------------------------------------------------------------------------------------- 1. polygons
@pytest.fixture
def broken_coco(tmp_path):
    """coco128 photos with one broken annotation of each kind (ids 9001..9007); each is added to an
    image that also has good annotations, except photo 472, whose airplane's shape is replaced."""
    data = coco_json()
    _ann(data, 74, 18, [[100, 50, 130, 60]], 9001)  # two points (4 numbers): the reported case
    _ann(data, 74, 18, [[100, 50, 130, 60, 120]], 9002)  # odd coordinate count
    _ann(data, 73, 4, [[10, 10, 60, 10, 60, 60, 10, 60], [1, 2, 3, 4]], 9003, bbox=[10, 10, 50, 50])  # 1 good, 1 broken
    _ann(data, 636, 70, {"size": [10, 10], "counts": [100]}, 9004)  # RLE of another image's size
    _ann(data, 636, 2, [[700, 700, 800, 700, 800, 800]], 9005, bbox=[700, 700, 100, 100])  # wholly outside
    _ann(data, 73, 99, [[10, 10, 60, 10, 60, 60]], 9006)  # unknown category
    airplane = next(a for a in data["annotations"] if a["image_id"] == 472)
    airplane["segmentation"] = []  # no shape at all (detection-only exports look like this)
    return data


def test_degenerate_coco_annotations_keep_the_index(tmp_path, broken_coco):
    root = write_coco_root(tmp_path / "coco", broken_coco)
    clean = index_dataset(COCO, write_coco_root(tmp_path / "clean", coco_json()), tmp_path / "clean_out")
    manifest = index_dataset(COCO, root, tmp_path / "out")
    by_id = {r.source_id: r for r in manifest.records}
    assert set(by_id) == {73, 472, 636, 74}  # nothing lost
    problems = _problems(tmp_path / "out")
    text = "\n".join(f"{p['file']} {p['reason']} [{p['action']}]" for p in problems)
    for ann_id, words in [
        (9001, "has 2 point(s), a polygon needs 3"),
        (9002, "odd count of coordinates"),
        (9003, "polygon 1 has 2 point(s)"),
        (9004, "RLE size [10, 10] is not the image's"),
        (9005, "no pixel inside the 480×640 image: skipped"),
        (9006, "category_id 99 is not among"),
    ]:
        line = next(ln for ln in text.splitlines() if f"annotation {ann_id}" in ln)
        assert words in line, line
    # the image a broken part belongs to is named (file), the skipped ones too
    assert any(p["file"].endswith("000000000074.jpg") and "9001" in p["reason"] for p in problems)
    clean_by_id = {r.source_id: r for r in clean.records}
    # 74: two more dogs whose shapes are lines: the tags stand, but the GT misses two objects: not scored
    assert by_id[74].tags == clean_by_id[74].tags and by_id[74].mask is None
    assert any(
        "annotation 9001 (dog): polygon 0 has 2 point(s), a polygon needs 3; no usable shape left: tag kept"
        in p["reason"]
        for p in problems
    )
    not_scored = next(p for p in problems if p["file"].endswith("074.jpg") and p["action"] == "kept; GT not scored")
    assert "(annotations 9001, 9002)" in not_scored["reason"]
    # 636 and 73 keep everything that was good: the GT pixels of the clean file's annotations are there
    assert _mask_iou(read_mask(by_id[73].mask), read_mask(clean_by_id[73].mask), 4) > 0.9
    # 73: the good polygon of 9003 is drawn (motorcycle, label 4), the broken one skipped
    m73 = read_mask(by_id[73].mask)
    assert (m73[10:60, 10:60] == 4).mean() > 0.95
    # 636: the wholly-outside bicycle adds no tag; the toilet's RLE is unusable: tag kept, GT not scored
    assert by_id[636].tags == clean_by_id[636].tags
    assert by_id[636].mask is None
    # 472: the airplane has no shape but its bbox is in the image: trains on its tag, GT not scored
    assert by_id[472].tags == (5,) and by_id[472].mask is None


def test_degenerate_coco_through_the_cli(tmp_path, broken_coco):
    root = write_coco_root(tmp_path / "coco", broken_coco)
    out = tmp_path / "m.json"
    args = ["--dataset", "coco", "--data-root", str(root), "--split", "train2017"]
    index = CliRunner().invoke(main, ["data", "index", *args, "--out", str(out)])
    assert index.exit_code == 0, index.output
    assert len(json.loads(out.read_text())["records"]) == 4
    check = CliRunner().invoke(main, ["data", "check", *args])
    assert check.exit_code == 1 and "Traceback" not in check.output
    assert "annotation 9001 (dog): polygon 0 has 2 point(s)" in check.output
    assert "4 usable images" in check.output


def test_degenerate_coco_through_run_index(tmp_path, broken_coco, client):
    from labelgen.config import load_recipe, recipe_path
    from labelgen.pipeline.indexing import load_manifest
    from labelgen.pipeline.runner import run_pipeline

    root = write_coco_root(tmp_path / "coco", broken_coco)
    recipe = load_recipe(
        recipe_path("coco"), [f'dataset.root="{root}"', 'dataset.train_split="train2017"', 'dataset.val_split=""']
    )
    arts = run_pipeline(recipe, tmp_path / "run", "index", client)
    assert len(load_manifest(arts["index"]).records) == 4


# ---------------------------------------------------------------------------------- 2. orientation
def _mask_iou(a: np.ndarray, b: np.ndarray, label: int) -> float:
    return float(((a == label) & (b == label)).sum() / ((a == label) | (b == label)).sum())


@pytest.mark.parametrize("orientation", [6, 8, 5])
def test_exif_rotated_photo_gets_its_gt_in_place(tmp_path, orientation):
    """A phone photo: pixels stored turned, EXIF tag says how to turn them back, JSON sizes are the
    upright photo's. The GT must land on the object in the upright pixels."""
    data = coco_json((472,))  # 640×226 airplane: any turn by 90° shows at once
    root = write_coco_root(tmp_path / "coco", data, link=False)
    save_exif_rotated(coco_photo(472), root / "images" / "train2017" / "000000000472.jpg", orientation)
    clean = index_dataset(COCO, write_coco_root(tmp_path / "clean", coco_json((472,))), tmp_path / "c")
    manifest = index_dataset(COCO, root, tmp_path / "out")
    r, c = manifest.records[0], clean.records[0]
    assert r.orientation == orientation and (r.width, r.height) == (640, 226)
    assert _mask_iou(read_mask(r.mask), read_mask(c.mask), 5) == 1.0
    upright = read_image(r.image, orientation=r.orientation).astype(int)
    assert np.abs(upright - read_image(c.image).astype(int)).mean() < 4  # same photo, JPEG re-saved
    note = next(p for p in _problems(tmp_path / "out") if p["action"] == "EXIF orientation applied")
    assert f"EXIF orientation {orientation}" in note["reason"] and "226×640" in note["reason"]


def test_exif_tag_that_the_annotations_ignore(tmp_path):
    """Annotations drawn on the stored pixels of a tagged file: the stored pixels are used, and said."""
    data = coco_json((472,))
    root = write_coco_root(tmp_path / "coco", data, link=False)
    path = root / "images" / "train2017" / "000000000472.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(coco_photo(472)).save(path, quality=95, exif=exif)  # pixels upright, tag wrong
    r = index_dataset(COCO, root, tmp_path / "out").records[0]
    assert r.orientation == 1 and (r.width, r.height) == (640, 226)
    note = next(p for p in _problems(tmp_path / "out") if p["action"] == "EXIF orientation not applied")
    assert "matches the stored pixels" in note["reason"] and "strip" in note["reason"]


def test_image_matching_neither_frame_is_left_out_with_both_sizes(tmp_path):
    data = coco_json((472, 73))
    data["images"][[i["id"] for i in data["images"]].index(472)]["width"] = 500
    root = write_coco_root(tmp_path / "coco", data)
    manifest = index_dataset(COCO, root, tmp_path / "out")
    assert [r.source_id for r in manifest.records] == [73]
    bad = next(p for p in _problems(tmp_path / "out") if p["action"] == "left out")
    assert bad["file"].endswith("000000000472.jpg")
    assert "image is 640×226" in bad["reason"] and "500×226" in bad["reason"] and "re-export" in bad["reason"]


def test_folder_mask_decides_the_frame_of_a_rotated_photo(tmp_path):
    """A folder set: the mask was drawn on the upright photo; the file is stored turned with a tag."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    save_exif_rotated(coco_photo(472), root / "images" / "plane.jpg", 6)
    mask = np.zeros((226, 640), np.uint8)
    mask[50:150, 100:500] = 1
    write_mask(root / "masks" / "plane.png", mask)
    (root / "classes.txt").write_text("airplane\n")
    (root / "tags.csv").write_text("image,tags\nimages/plane.jpg,airplane\n")
    r = index_dataset(FOLDER, root, tmp_path / "out").records[0]
    assert r.orientation == 6 and (r.width, r.height) == (640, 226) and r.mask is not None


# ------------------------------------------------------------------------------ 3. masks vs tags
def _folder_with_masks(root: Path, masks: dict[str, np.ndarray], tags: dict[str, str], classes: str) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image,tags"]
    for n, (name, mask) in enumerate(masks.items()):
        photo = Image.open(coco_photo((73, 472, 636, 74)[n % 4])).convert("RGB")
        photo.resize((mask.shape[1], mask.shape[0])).save(root / "images" / f"{name}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")  # plain grayscale PNG, as tools export
        rows.append(f"images/{name}.jpg,{tags[name]}")
    (root / "classes.txt").write_text(classes)
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root


def test_masks_that_contradict_the_tags_are_named_and_not_scored(tmp_path):
    obj = np.zeros((120, 160), np.uint8)
    obj[30:90, 40:120] = 1
    masks = {
        "binary": np.where(obj == 1, 255, 0).astype(np.uint8),  # 0/255 export of a 'dog'
        "good": obj * 2,  # 'dog' is class 2
        "missing": obj * 0,  # tagged dog, nothing drawn
        "extra": obj * 1,  # draws 'cat', tagged dog: class indices off by one
    }
    tags = {"binary": "dog", "good": "dog", "missing": "dog", "extra": "dog"}
    root = _folder_with_masks(tmp_path / "data", masks, tags, "cat\ndog\n")
    manifest = index_dataset(FOLDER, root, tmp_path / "out")
    by_id = {r.id: r for r in manifest.records}
    assert set(by_id) == set(masks)  # every image still trains on its tags
    assert by_id["good"].mask is not None
    for name in ("binary", "missing", "extra"):
        assert by_id[name].mask is None, name
    reasons = {Path(p["file"]).stem: p for p in _problems(tmp_path / "out") if p["action"] == "kept; GT not scored"}
    assert set(reasons) == {"binary", "missing", "extra"}
    assert "is 255 your object? remap it to class 2 (dog)" in reasons["binary"]["reason"]
    assert "binary.png" in reasons["binary"]["reason"]
    assert "no pixel of tagged 'dog' (2)" in reasons["missing"]["reason"]
    assert "'cat' (1) which the tags do not name" in reasons["extra"]["reason"]
    result = CliRunner().invoke(main, ["data", "check", "--dataset", "folder", "--data-root", str(root)])
    assert result.exit_code == 1
    assert sum("[kept; GT not scored]" in ln for ln in result.output.splitlines()) == 3


# ----------------------------------------------------------------------------- 4. own categories
def test_coco_format_with_its_own_categories(tmp_path, caplog):
    """A CVAT/Label Studio/Roboflow export: category ids 1 and 2 are 'dog' and 'giraffe', not COCO's."""
    data = coco_json((74, 73))
    for a in data["annotations"]:
        a["category_id"] = 1 if a["category_id"] == 18 else 2  # dog stays dog; the rest become giraffes
    data["categories"] = [{"id": 1, "name": "dog", "supercategory": "animal"}, {"id": 2, "name": "giraffe"}]
    root = write_coco_root(tmp_path / "coco", data)
    with caplog.at_level(logging.INFO, logger="labelgen"):
        manifest = index_dataset(COCO, root, tmp_path / "out")
    assert manifest.classes == ("background", "dog", "giraffe")
    assert manifest.category_ids == (None, 1, 2)
    by_id = {r.source_id: r for r in manifest.records}
    assert by_id[74].tags == (1, 2) and by_id[73].tags == (2,)
    assert "the JSON's own 2 categories" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="labelgen"):
        index_dataset(COCO, write_coco_root(tmp_path / "official", coco_json()), tmp_path / "o")
    assert "COCO's official 80 categories" in caplog.text


def test_own_categories_with_sparse_ids_keep_them_for_export(tmp_path):
    data = coco_json((74,))
    for a in data["annotations"]:
        a["category_id"] = {1: 7, 2: 30, 18: 12}[a["category_id"]]
    data["categories"] = [{"id": 7, "name": "rider"}, {"id": 12, "name": "hound"}, {"id": 30, "name": "bike"}]
    root = write_coco_root(tmp_path / "coco", data)
    manifest = index_dataset(COCO, root, tmp_path / "out")
    assert manifest.classes == ("background", "rider", "hound", "bike")
    assert [manifest.category_id(label) for label in (1, 2, 3)] == [7, 12, 30]
    original = index_dataset(
        DatasetParams(name="coco", train_split="train2017", val_split="", coco_label_space="original"),
        root,
        tmp_path / "orig",
    )
    assert len(original.classes) == 31 and original.classes[12] == "hound" and original.classes[8] == "unused_8"


# ------------------------------------------------------------------------------ 7. tags file rows
def test_every_row_of_a_tags_file_is_accounted_for(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for n, name in enumerate(("a", "b", "c", "d", "e", "f")):
        Image.open(coco_photo((73, 472, 636, 74)[n % 4])).convert("RGB").resize((64, 48)).save(
            root / "images" / f"{name}.jpg"
        )
    (root / "classes.txt").write_text("person\nskateboard\nzebra\n")
    rows = [
        "image,tags,split",
        "images/a.jpg,person;skateboard,train",  # 2: good
        "images/b.jpg,person,skateboard",  # 3: two tags meant, read as tag + split
        "images/c.jpg,person,test",  # 4: a split the recipe does not index
        "",  # a blank line is not a row
        "images/d.jpg,Zebra,train",  # 6: case
        "images/e.jpg,person,train,extra",  # 7: too many fields
        "images/missing.jpg,person,train",  # 8: no such file
        "images/f.jpg,zebra,",  # 9: good, split defaults to train
    ]
    (root / "tags.csv").write_text("\ufeff" + "\n".join(rows) + "\n")  # Excel's "CSV UTF-8" BOM
    manifest = index_dataset(DatasetParams(name="folder", val_split=""), root, tmp_path / "out")
    problems = _problems(tmp_path / "out")
    lines = {int(p["where"].rsplit(":", 1)[1]): p for p in problems}
    assert {r.id for r in manifest.records} == {"a", "f"}
    assert set(lines) == {3, 4, 6, 7, 8}  # every other row is in the manifest
    assert "'skateboard' is a class name" in lines[3]["reason"] and "semicolons" in lines[3]["reason"]
    assert lines[4]["action"] == "not indexed (split not used)" and "dataset.val_split=test" in lines[4]["reason"]
    assert "did you mean 'zebra'" in lines[6]["reason"] and "case-sensitive" in lines[6]["reason"]
    assert "4 fields but the header names 3" in lines[7]["reason"]
    assert "not found" in lines[8]["reason"] and lines[8]["file"].endswith("missing.jpg")


def test_jsonl_rows_that_cannot_be_read_are_problems_not_a_lost_index(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.open(coco_photo(73)).convert("RGB").resize((64, 48)).save(root / "images" / "a.jpg")
    (root / "classes.txt").write_text("motorcycle\n")
    (root / "tags.jsonl").write_text(
        '{"image": "images/a.jpg", "tags": ["motorcycle"]}\n{"image": "images/a.jpg", "tags": "motorcycle"}\nnot json\n'
    )
    params = DatasetParams(name="folder", val_split="", tags_file="tags.jsonl")
    manifest = index_dataset(params, root, tmp_path / "out")
    assert [r.id for r in manifest.records] == ["a"]
    lines = {int(p["where"].rsplit(":", 1)[1]): p["reason"] for p in _problems(tmp_path / "out")}
    assert "list of class names" in lines[2] and "not a JSON object" in lines[3]


# ------------------------------------------------------------------------ 8. missing input files
@pytest.mark.parametrize("missing", ["tags.csv", "classes.txt"])
@pytest.mark.parametrize("command", [["data", "check"], ["data", "index", "--out", "{tmp}/m.json"]])
def test_missing_inputs_are_one_line_exit_2(tmp_path, missing, command):
    root = tmp_path / "data"
    root.mkdir()
    (root / "classes.txt").write_text("cat\n")
    (root / "tags.csv").write_text("image,tags\n")
    (root / missing).unlink()
    args = [c.replace("{tmp}", str(tmp_path)) for c in command]
    result = CliRunner().invoke(main, [*args, "--dataset", "folder", "--data-root", str(root)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(root / missing) in lines[0]
    assert "Traceback" not in result.output


def test_unreadable_tags_file_is_one_line(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "classes.txt").write_text("cat\n")
    (root / "tags.csv").write_bytes(b"image,tags\n\xff\xfe\x00bad")
    result = CliRunner().invoke(main, ["data", "check", "--dataset", "folder", "--data-root", str(root)])
    assert result.exit_code == 2 and "not UTF-8" in result.output and "Traceback" not in result.output


def test_index_logs_one_line_per_kind_of_problem(tmp_path, caplog):
    data = coco_json()
    for a in data["annotations"]:
        a["segmentation"] = [[1, 2, 3, 4]]  # every shape broken: 4 images × their annotations
    root = write_coco_root(tmp_path / "coco", data)
    args = ["data", "index", "--dataset", "coco", "--data-root", str(root), "--split", "train2017"]
    with caplog.at_level(logging.INFO, logger="labelgen"):
        assert CliRunner().invoke(main, [*args, "--out", str(tmp_path / "m.json")]).exit_code == 0
    problems = _problems(tmp_path / "m_files")
    lines = [r.message for r in caplog.records if r.name == "labelgen.data.index" and " × " in r.message]
    assert len(problems) == 16 and len(lines) == 2  # grouped, not one line per image or annotation
    where = [r.message for r in caplog.records if r.name == "labelgen.data.index" and "every problem" in r.message]
    assert len(where) == 1 and str(tmp_path / "m_files" / "problems.json") in where[0]  # said once
    broken = next(ln for ln in lines if "a polygon needs" in ln)
    assert broken.startswith(f"index: {len(data['annotations'])} × annotation: polygon N has N point(s)")
    assert lines[1].startswith("index: 4 × GT mask misses objects that have no usable shape [kept; GT not scored]")


def test_a_problem_of_its_own_kind_is_logged_in_its_own_words(tmp_path, caplog):
    """One of a kind: its reason as it is, not the kind's blanks ("N fields", "<file>")."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("person\n")
    (root / "images" / "74.jpg").symlink_to(coco_photo(74))
    (root / "tags.csv").write_text("image,tags\nimages/74.jpg,person\nimages/74.jpg,person,dog\n")
    args = ["data", "index", "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "m.json")]
    with caplog.at_level(logging.INFO, logger="labelgen"):
        assert CliRunner().invoke(main, args).exit_code == 0
    lines = [r.message for r in caplog.records if r.name == "labelgen.data.index" and " × " in r.message]
    assert len(lines) == 1 and lines[0].startswith(f"index: 1 × {root / 'tags.csv'}:3 images/74.jpg: 3 fields"), lines
    assert "but the header names 2" in lines[0]
