"""Small real data sets made from ../shared in a test's tmp folder: a COCO root of a few coco128
photos with their original annotations, and a folder root. The cases of bad input real users bring
(rebuilt from public bug reports of segmentation tools) are mutations of these."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from tests.conftest import COCO128

COCO_JSON = COCO128 / "annotations" / "instances_train2017.json"
COCO_IMAGES = COCO128 / "images" / "train2017"
# a few photos with few annotations: 73 (565×640, motorcycle), 472 (640×226, airplane),
# 636 (480×640, toilet), 74 (640×426, person, bicycle, dog)
SMALL_COCO_IDS = (73, 472, 636, 74)


def coco_json(image_ids: tuple[int, ...] = SMALL_COCO_IDS) -> dict:
    """The original instances JSON restricted to `image_ids` (all 80 categories kept)."""
    data = json.loads(COCO_JSON.read_text())
    keep = set(image_ids)
    return {
        "images": [i for i in data["images"] if i["id"] in keep],
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        "categories": data["categories"],
    }


def write_coco_root(root: Path, data: dict, split: str = "train2017", link: bool = True) -> Path:
    """A COCO root: annotations/instances_<split>.json and images/<split>/ holding the JSON's files
    (symlinks to the shared photos where `link`, for files the caller does not write itself)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    if link:
        for img in data["images"]:
            target = image_dir / img["file_name"]
            if not target.exists():
                os.symlink(COCO_IMAGES / img["file_name"], target)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def coco_photo(image_id: int) -> Path:
    return COCO_IMAGES / f"{image_id:012d}.jpg"


def save_exif_rotated(source: Path, target: Path, orientation: int = 6) -> None:
    """Save `source`'s pixels as a phone does: stored turned (so that applying EXIF `orientation`
    gives the source back) with the orientation tag set."""
    inverse = {
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
        3: Image.Transpose.ROTATE_180,
        5: Image.Transpose.TRANSPOSE,
        7: Image.Transpose.TRANSVERSE,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    with Image.open(source) as img:
        img.convert("RGB").transpose(inverse).save(target, quality=95, exif=exif)
