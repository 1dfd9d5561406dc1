"""What a data set holds before validation: one `SourceItem` per image, from each layout."""

from __future__ import annotations

import csv
import difflib
import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelgen.config import DatasetParams
from labelgen.data.classes import (
    coco_label_space,
    demo_classes,
    official_coco_categories,
    read_class_file,
    voc_classes,
)
from labelgen.data.problems import ANNOTATION_SKIPPED, NOT_INDEXED, problem
from labelgen.data.text import read_user_text
from labelgen.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceItem:
    id: str
    image: Path
    split: str
    tags: tuple[int, ...] | None = None  # None: read them from the mask
    mask: Path | None = None  # GT class-index PNG
    coco_annotations: tuple[dict[str, Any], ...] | None = None  # rasterised into a GT mask
    source_id: int | None = None  # the image's id in its source (COCO images[].id)
    annotated_size: tuple[int, int] | None = None  # (width, height) the annotations were drawn on (COCO JSON)
    where: str | None = None  # the line of the tags file that listed it ("<file>:<line>"), for problems


@dataclass
class Listing:
    classes: tuple[str, ...]
    items: list[SourceItem]
    category_ids: tuple[int, ...] | None = None  # source id of each label (COCO), see Manifest
    problems: list[dict[str, str]] = field(default_factory=list)  # {file, reason, action}


def list_dataset(params: DatasetParams, root: Path, splits: list[str]) -> Listing:
    """Every image of the requested splits, with where its tags and GT come from."""
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder; pass --data-root PATH")
    listers = {"voc": _list_voc, "coco": _list_coco, "folder": _list_folder, "demo": _list_folder}
    if params.name not in listers:
        raise DataError(f"dataset {params.name!r} is unknown; allowed: {', '.join(sorted(listers))}")
    return listers[params.name](params, root, splits)


# ---------------------------------------------------------------------------------------------- voc
def voc_root(root: Path) -> Path:
    """The folder holding JPEGImages: root itself, root/VOC2012 or root/VOCdevkit/VOC2012."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(f"{root}: no JPEGImages folder in it, in VOC2012/ or in VOCdevkit/VOC2012/")


def _list_voc(params: DatasetParams, root: Path, splits: list[str]) -> Listing:
    base = voc_root(root)
    listing = Listing(classes=voc_classes(), items=[])
    names = {n: i for i, n in enumerate(listing.classes)}
    for split in splits:
        aug = split == "train_aug"
        list_file = base / "ImageSets" / "Segmentation" / ("trainaug.txt" if aug else f"{split}.txt")
        if aug and not list_file.is_file():
            list_file = list_file.with_name("train_aug.txt")
        if not list_file.is_file():
            raise DataError(f"{list_file}: split list not found; VOC splits are train, val, trainval, train_aug")
        mask_dir = base / ("SegmentationClassAug" if aug else "SegmentationClass")
        for image_id in read_user_text(list_file, "VOC split list", "check dataset.train_split").split():
            mask = mask_dir / f"{image_id}.png"
            item_mask = mask if mask.is_file() else None
            tags = None
            if params.voc_tags_from == "xml" or item_mask is None:
                tags = _voc_xml_tags(base / "Annotations" / f"{image_id}.xml", names, listing)
                if tags is None:
                    continue
            listing.items.append(SourceItem(image_id, base / "JPEGImages" / f"{image_id}.jpg", split, tags, item_mask))
    return listing


def _voc_xml_tags(xml: Path, names: dict[str, int], listing: Listing) -> tuple[int, ...] | None:
    try:
        objects = [o.findtext("name", "").strip() for o in ET.parse(xml).getroot().iter("object")]
    except (FileNotFoundError, ET.ParseError) as e:
        listing.problems.append(problem(xml, f"no GT mask and no readable XML annotation ({e})"))
        return None
    unknown = sorted({o for o in objects if o not in names})
    if unknown:
        listing.problems.append(problem(xml, f"unknown VOC class names {unknown}"))
        return None
    return tuple(sorted({names[o] for o in objects}))


# --------------------------------------------------------------------------------------------- coco
def _list_coco(params: DatasetParams, root: Path, splits: list[str]) -> Listing:
    files = {split: _coco_files(root, split) for split in splits}
    data = {split: _read_coco_json(ann_file) for split, (ann_file, _) in files.items()}
    first = splits[0]
    categories = _categories(data[first], files[first][0])
    for split in splits[1:]:
        if _categories(data[split], files[split][0]) != categories:
            raise DataError(
                f"{files[split][0]} declares other categories than {files[first][0]}; the splits of one "
                "data set must share one category list"
            )
    official = categories == official_coco_categories()
    classes, label_of = coco_label_space(categories, params.coco_label_space, str(files[first][0]))
    log.info(
        "index: COCO classes from %s: %s, %s label space (%d labels incl. background)",
        files[first][0],
        "COCO's official 80 categories" if official else f"the JSON's own {len(categories)} categories",
        params.coco_label_space,
        len(classes),
    )
    category_ids = [0] * len(classes)
    for category_id, label in label_of.items():
        category_ids[label] = category_id
    listing = Listing(classes=classes, items=[], category_ids=tuple(category_ids))
    for split in splits:
        ann_file, image_dir = files[split]
        by_image = _annotations_by_image(data[split], ann_file, label_of, categories, listing)
        for img in data[split]["images"]:
            item = _coco_item(img, split, image_dir, ann_file, by_image, listing)
            if item is not None:
                listing.items.append(item)
    return listing


def _coco_files(root: Path, split: str) -> tuple[Path, Path]:
    ann_file = root / "annotations" / f"instances_{split}.json"
    image_dir = next((d for d in (root / "images" / split, root / split) if d.is_dir()), None)
    if not ann_file.is_file() or image_dir is None:
        raise DataError(
            f"COCO split {split!r}: expected {ann_file} and images in {root / 'images' / split} "
            f"or {root / split}; set dataset.train_split / dataset.val_split to the splits you have "
            "(dataset.val_split='' for none)"
        )
    return ann_file, image_dir


def _read_coco_json(ann_file: Path) -> dict[str, Any]:
    text = read_user_text(ann_file, "COCO annotation file", "check dataset.train_split / val_split")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{ann_file}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a COCO object with images, annotations and categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{ann_file}: no {key!r} list; a COCO instances file has images, annotations, categories")
    if not isinstance(data.setdefault("annotations", []), list):
        raise DataError(f"{ann_file}: 'annotations' is not a list")
    return data


def _categories(data: dict[str, Any], ann_file: Path) -> dict[int, str]:
    """{category id: name} of a COCO JSON; raises DataError for malformed, repeated or no categories."""
    categories: dict[int, str] = {}
    for c in data["categories"]:
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
            raise DataError(f"{ann_file}: category {c!r} needs an integer 'id' and a string 'name'")
        if c["id"] in categories:
            raise DataError(f"{ann_file}: category id {c['id']} is declared twice")
        categories[c["id"]] = c["name"].strip()
    names = list(categories.values())
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{ann_file}: category names {repeated} are declared more than once; names must be unique")
    if not categories:
        raise DataError(f"{ann_file}: declares no categories")
    return categories


def _annotations_by_image(
    data: dict[str, Any], ann_file: Path, label_of: dict[int, int], categories: dict[int, str], listing: Listing
) -> dict[Any, list[dict[str, Any]]]:
    """The annotations of each image id, with `label` and `name` added; an annotation with an unknown
    category or without an image is a problem, not a lost index."""
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for n, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id", f"#{n}") if isinstance(ann, dict) else f"#{n}"
        where = f"{ann_file} annotation {ann_id}"
        if not isinstance(ann, dict) or "image_id" not in ann:
            listing.problems.append(problem(where, "not an object with an image_id", ANNOTATION_SKIPPED))
            continue
        if ann.get("category_id") not in label_of:
            listing.problems.append(
                problem(
                    where,
                    f"category_id {ann.get('category_id')!r} is not among the file's categories "
                    f"{sorted(categories)} (image {ann['image_id']})",
                    ANNOTATION_SKIPPED,
                )
            )
            continue
        keep = {k: ann.get(k) for k in ("id", "segmentation", "iscrowd", "area", "bbox", "category_id")}
        keep.update(label=label_of[ann["category_id"]], name=categories[ann["category_id"]])
        by_image.setdefault(ann["image_id"], []).append(keep)
    return by_image


def _coco_item(
    img: Any, split: str, image_dir: Path, ann_file: Path, by_image: dict, listing: Listing
) -> SourceItem | None:
    if not (isinstance(img, dict) and isinstance(img.get("file_name"), str) and "id" in img):
        listing.problems.append(problem(ann_file, f"image entry {img!r} needs 'id' and 'file_name'"))
        return None
    size = (img.get("width"), img.get("height"))
    if not all(isinstance(v, int) and v > 0 for v in size):
        size = None  # no size to check against: the orientation follows the EXIF tag
    return SourceItem(
        Path(img["file_name"]).stem,
        image_dir / img["file_name"],
        split,
        None,
        None,
        tuple(by_image.get(img["id"], ())),
        img["id"] if isinstance(img["id"], int) else None,
        size,
    )


# ----------------------------------------------------------------------------------- folder and demo
def _list_folder(params: DatasetParams, root: Path, splits: list[str]) -> Listing:
    """Every row of the tags file becomes an item or a problem naming its line."""
    classes = demo_classes() if params.name == "demo" else read_class_file(root / params.classes_file)
    listing = Listing(classes=classes, items=[])
    names = {n: i for i, n in enumerate(classes) if i > 0}
    tags_path = root / params.tags_file
    for line_no, entry in _read_tags_file(tags_path):
        where = f"{tags_path}:{line_no}"
        if "error" in entry:
            listing.problems.append(problem(entry.get("image") or where, entry["error"], where=where))
            continue
        image = _inside(root, entry["image"], where, listing)
        if image is None:
            continue
        tags_raw = entry["tags"]
        unknown = sorted({t for t in tags_raw if t not in names})
        if unknown:
            why = f"tags {unknown} are not in the class list {root / params.classes_file}{_tag_hint(unknown, names)}"
            listing.problems.append(problem(image, why, where=where))
            continue
        split = entry["split"] or "train"
        if split not in splits:
            if split in names:
                why = f"split {split!r} is a class name: several tags go in one column, separated by semicolons (a;b)"
                listing.problems.append(problem(image, why, where=where))
            else:
                indexed = ", ".join(splits)
                why = f"split {split!r} is not indexed (indexed: {indexed}); set dataset.val_split={split} to use it"
                listing.problems.append(problem(image, why, NOT_INDEXED, where))
            continue
        mask = root / "masks" / f"{image.stem}.png"
        tags = tuple(sorted({names[t] for t in tags_raw}))
        listing.items.append(SourceItem(image.stem, image, split, tags, mask if mask.is_file() else None, where=where))
    return listing


def _tag_hint(unknown: list[str], names: dict[str, int]) -> str:
    """A short hint for unknown tags: a case or spelling match, or a separator mistake."""
    lower = {n.lower(): n for n in names}
    for tag in unknown:
        if tag.lower() in lower:
            return f" (did you mean {lower[tag.lower()]!r}? class names are case-sensitive)"
        if "," in tag or "|" in tag:
            return "; separate several tags with ';'"
        close = difflib.get_close_matches(tag, list(names), n=1)
        if close:
            return f" (did you mean {close[0]!r}?)"
    return ""


def _read_tags_file(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV (header `image,tags[,split]`, tags separated by `;`) or JSON-lines
    tags file. A row is {image, tags: list of names, split} or {image?, error} when it cannot be read."""
    text = read_user_text(path, "tags file", "write a CSV with header image,tags[,split]")
    if path.suffix in (".jsonl", ".json"):
        return [(no, _json_row(line)) for no, line in enumerate(text.splitlines(), 1) if line.strip()]
    lines = list(csv.reader(text.splitlines()))
    header = [h.strip() for h in lines[0]] if lines else []
    if not {"image", "tags"} <= set(header):
        raise DataError(f"{path}: the CSV header must name the columns image,tags (and optionally split); got {header}")
    rows = []
    for no, fields in enumerate(lines[1:], 2):
        if not fields:
            continue  # blank line
        row = dict(zip(header, fields, strict=False))
        image = row.get("image", "").strip()
        if len(fields) > len(header):
            error = (
                f"{len(fields)} fields but the header names {len(header)} ({','.join(header)}): "
                f"separate several tags with ';' (e.g. {';'.join(fields[1:3])})"
            )
            rows.append((no, {"image": image, "error": error}))
            continue
        tags = [t.strip() for t in (row.get("tags") or "").split(";") if t.strip()]
        rows.append((no, {"image": image, "tags": tags, "split": (row.get("split") or "").strip() or None}))
    return rows


def _json_row(line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return {"error": f"not a JSON object ({e})"}
    if not isinstance(row, dict):
        return {"error": f"not a JSON object: {line.strip()[:60]}"}
    tags = row.get("tags", [])
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        return {"image": row.get("image"), "error": f"tags must be a list of class names, got {tags!r}"}
    split = row.get("split")
    return {"image": str(row.get("image", "")), "tags": [t.strip() for t in tags], "split": split and str(split)}


def _inside(root: Path, relative: str, where: str, listing: Listing) -> Path | None:
    """Resolve an image path from a tags file, refusing anything outside the data root."""
    if not relative:
        listing.problems.append(problem(where, "empty image path", where=where))
        return None
    # normalised, not resolved: `..` may not climb out of the root, but a symlinked image is fine
    resolved = Path(os.path.normpath(root.absolute() / relative))
    if not resolved.is_relative_to(root.absolute()):
        listing.problems.append(
            problem(relative, f"image path {relative!r} points outside the data root {root}", where=where)
        )
        return None
    return resolved
