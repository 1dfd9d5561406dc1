"""What a data set holds before validation: one `SourceItem` per image, from each layout."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelgen.config import DatasetParams
from labelgen.data.classes import coco_label_space, demo_classes, read_class_file, voc_classes
from labelgen.errors import DataError


@dataclass(frozen=True)
class SourceItem:
    id: str
    image: Path
    split: str
    tags: tuple[int, ...] | None = None  # None: read them from the mask
    mask: Path | None = None  # GT class-index PNG
    coco_annotations: tuple[dict[str, Any], ...] | None = None  # rasterised into a GT mask
    source_id: int | None = None  # the image's id in its source (COCO images[].id)


@dataclass
class Listing:
    classes: tuple[str, ...]
    items: list[SourceItem]
    category_ids: tuple[int, ...] | None = None  # source id of each label (COCO), see Manifest
    problems: list[dict[str, str]] = field(default_factory=list)  # {file, reason, action}


def problem(file: Path | str, reason: str, action: str = "left out") -> dict[str, str]:
    return {"file": str(file), "reason": reason, "action": action}


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
        for image_id in list_file.read_text().split():
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
    classes, label_of = coco_label_space(params.coco_label_space)
    category_ids = [0] * len(classes)
    for category_id, label in label_of.items():
        category_ids[label] = category_id
    listing = Listing(classes=classes, items=[], category_ids=tuple(category_ids))
    for split in splits:
        ann_file = root / "annotations" / f"instances_{split}.json"
        image_dir = next((d for d in (root / "images" / split, root / split) if d.is_dir()), None)
        if not ann_file.is_file() or image_dir is None:
            raise DataError(
                f"COCO split {split!r}: expected {ann_file} and images in {root / 'images' / split} "
                f"or {root / split}; set dataset.train_split / dataset.val_split to the splits you have "
                "(dataset.val_split='' for none)"
            )
        try:
            data = json.loads(ann_file.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{ann_file}: not valid JSON ({e})") from e
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            if ann["category_id"] not in label_of:
                raise DataError(f"{ann_file}: annotation {ann['id']} has unknown category_id {ann['category_id']}")
            keep = {k: ann[k] for k in ("segmentation", "iscrowd", "area", "category_id")}
            keep["label"] = label_of[ann["category_id"]]
            by_image.setdefault(ann["image_id"], []).append(keep)
        for img in data["images"]:
            anns = tuple(by_image.get(img["id"], ()))
            tags = tuple(sorted({a["label"] for a in anns}))
            listing.items.append(
                SourceItem(
                    Path(img["file_name"]).stem, image_dir / img["file_name"], split, tags, None, anns, img["id"]
                )
            )
    return listing


# ----------------------------------------------------------------------------------- folder and demo
def _list_folder(params: DatasetParams, root: Path, splits: list[str]) -> Listing:
    classes = demo_classes() if params.name == "demo" else read_class_file(root / params.classes_file)
    listing = Listing(classes=classes, items=[])
    names = {n: i for i, n in enumerate(classes) if i > 0}
    tags_path = root / params.tags_file
    for line_no, entry in _read_tags_file(tags_path):
        where = f"{tags_path}:{line_no}"
        image = _inside(root, entry.get("image", ""), where, listing)
        if image is None:
            continue
        tags_raw = entry.get("tags", [])
        unknown = sorted({t for t in tags_raw if t not in names})
        if unknown:
            listing.problems.append(problem(where, f"tags {unknown} are not in the class list {sorted(names)}"))
            continue
        split = entry.get("split") or "train"
        if split not in splits:
            continue
        mask = root / "masks" / f"{image.stem}.png"
        tags = tuple(sorted({names[t] for t in tags_raw}))
        listing.items.append(SourceItem(image.stem, image, split, tags, mask if mask.is_file() else None))
    return listing


def _read_tags_file(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a CSV (header `image,tags[,split]`, tags separated by `;`) or JSON-lines tags file."""
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise DataError(f"tags file {path} not found; write a CSV with header image,tags[,split]") from e
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{no}: not a JSON object ({e})") from e
            rows.append(
                (no, {"image": row.get("image", ""), "tags": list(row.get("tags", [])), "split": row.get("split")})
            )
        return rows
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"image", "tags"} <= set(reader.fieldnames):
        raise DataError(f"{path}: the CSV header must name the columns image,tags (and optionally split)")
    return [
        (
            no,
            {
                "image": row["image"],
                "tags": [t.strip() for t in (row["tags"] or "").split(";") if t.strip()],
                "split": row.get("split"),
            },
        )
        for no, row in enumerate(reader, 2)
    ]


def _inside(root: Path, relative: str, where: str, listing: Listing) -> Path | None:
    """Resolve an image path from a tags file, refusing anything outside the data root."""
    if not relative:
        listing.problems.append(problem(where, "empty image path"))
        return None
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        listing.problems.append(problem(where, f"image path {relative!r} points outside the data root {root}"))
        return None
    return resolved
