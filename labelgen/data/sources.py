"""What a data set holds before validation: one `SourceItem` per image, from each layout, handed to
a `SliceWriter` (the index tasks' inputs) as it is listed; and the COCO labels each task applies to
its images' annotations."""

from __future__ import annotations

import csv
import difflib
import json
import logging
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from labelgen.config import DatasetParams
from labelgen.data.classes import (
    coco_label_space,
    demo_classes,
    official_coco_categories,
    read_class_file,
    voc_classes,
)
from labelgen.data.colours import LABELMAP, colour_table, read_labelmap, rgb_text
from labelgen.data.json_stream import JsonObjectStream
from labelgen.data.masks import IGNORE_INDEX
from labelgen.data.problems import (
    ANNOTATION_SKIPPED,
    CATEGORY_NOT_A_CLASS,
    FILE_NOT_READ,
    LABEL_NOT_A_CLASS,
    LEFT_OUT,
    NOT_INDEXED,
    NOT_SCORED,
    problem,
)
from labelgen.data.text import read_user_text
from labelgen.errors import DataError

if TYPE_CHECKING:
    from labelgen.data.slices import SliceWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceItem:
    id: str
    image: Path
    split: str
    tags: tuple[int, ...] | None = None  # None: read them from the mask
    mask: Path | None = None  # GT class-index PNG
    # COCO: the image's annotations, each with `label` and `name` added (see `label_annotations`)
    coco_annotations: tuple[dict[str, Any], ...] | None = None
    source_id: int | None = None  # the image's id in its source (COCO images[].id)
    annotated_size: tuple[int, int] | None = None  # (width, height) the annotations were drawn on (COCO JSON)
    where: str | None = None  # the line of the tags file that listed it ("<file>:<line>"), for problems


@dataclass(frozen=True)
class CocoLabels:
    """What an index task needs to label its images' raw COCO annotations."""

    categories: dict[int, str]  # {category id: name} the JSON declares
    label_of: dict[int, int]  # category id -> label
    files: dict[str, str]  # split -> its annotation file (named in problems)


@dataclass
class Listing:
    """A data set's header, once its items are handed to a `SliceWriter`."""

    classes: tuple[str, ...]
    category_ids: tuple[int | None, ...] | None = None  # source id of each label (COCO), see Manifest
    problems: list[dict[str, str]] = field(default_factory=list)  # {file, reason, action}
    coco: CocoLabels | None = None
    images: int = 0  # items listed
    slices: int = 0  # slices they were cut into
    # splits whose COCO JSON holds no annotation at all: named once here, not once per untagged image
    unannotated: list[str] = field(default_factory=list)
    # the data set's declared mask colours (a CVAT/Datumaro labelmap.txt; `declared_labelmap`)
    labelmap: str | None = None

    def save(self, path: Path) -> None:
        coco = self.coco and {
            "categories": list(self.coco.categories.items()),
            "label_of": list(self.coco.label_of.items()),
            "files": self.coco.files,
        }
        data = {**self.__dict__, "coco": coco}
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> Listing:
        data = json.loads(path.read_text())
        coco = data["coco"] and CocoLabels(
            dict(data["coco"]["categories"]), dict(data["coco"]["label_of"]), data["coco"]["files"]
        )
        ids = data["category_ids"]
        return cls(**{**data, "classes": tuple(data["classes"]), "category_ids": ids and tuple(ids), "coco": coco})


def list_dataset(params: DatasetParams, root: Path, splits: list[str], sink: SliceWriter) -> Listing:
    """Every image of the requested splits, with where its tags and GT come from, handed to `sink`."""
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder; pass --data-root PATH")
    listers = {"voc": _list_voc, "coco": _list_coco, "folder": _list_folder, "demo": _list_folder}
    if params.name not in listers:
        raise DataError(f"dataset {params.name!r} is unknown; allowed: {', '.join(sorted(listers))}")
    started = time.perf_counter()
    listing = listers[params.name](params, root, splits, sink)
    listing.images, listing.slices = sink.count, sink.close()
    log.info(
        "index: listed %d images into %d slice(s) of up to %d in %.1fs",
        listing.images,
        listing.slices,
        sink.size,
        time.perf_counter() - started,
    )
    return listing


def declared_classes(params: DatasetParams, root: Path) -> tuple[str, ...] | None:
    """The class list (background first) of a layout that declares it apart from its images: VOC's
    20 classes, the demo's, a folder's class file; known before the index runs, so settings that
    depend on it are checked before any work. None for COCO, whose categories are in its annotation
    JSON and known once the index has read it. Raises `DataError` for a missing or bad class file."""
    if params.name == "voc":
        return voc_classes()
    if params.name == "demo":
        return demo_classes()
    if params.name == "folder":
        return read_class_file(root / params.classes_file)
    return None


# ---------------------------------------------------------------------------------------------- voc
def voc_root(root: Path) -> Path:
    """The folder holding JPEGImages: root itself, root/VOC2012 or root/VOCdevkit/VOC2012."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(f"{root}: no JPEGImages folder in it, in VOC2012/ or in VOCdevkit/VOC2012/")


def declared_labelmap(classes: tuple[str, ...], listing: Listing, *folders: Path) -> str | None:
    """The `labelmap.txt` in `folders` (a data set root, its masks folder): the colours its colour
    masks are drawn in, as CVAT's "Segmentation mask 1.1" export declares them. Checked once, here:
    raises `DataError` for a malformed one, or for two that disagree; a name that is no class
    (background and ignore aside) is named once in `listing.problems` (a mask drawn in its colour is
    refused, naming it)."""
    found = [f / LABELMAP for f in folders if (f / LABELMAP).is_file()]
    if not found:
        return None
    maps = [read_labelmap(path) for path in found]  # DataError naming the file and line
    if any(m != maps[0] for m in maps[1:]):
        raise DataError(
            f"{found[0]} and {found[1]} declare different mask colours; keep one label map (remove the other)"
        )
    _, unnamed = colour_table(maps[0], classes, IGNORE_INDEX)
    for code, name in sorted(unnamed.items(), key=lambda kv: kv[1]):
        why = (
            f"label {name!r} (colour {rgb_text(code)}) is no class of the class list; masks drawn in it are refused: "
            "rename it to its class"
        )
        listing.problems.append(problem(found[0], why, LABEL_NOT_A_CLASS))
    return os.path.abspath(found[0])


def _list_voc(params: DatasetParams, root: Path, splits: list[str], sink: SliceWriter) -> Listing:
    base = voc_root(root)
    listing = Listing(classes=declared_classes(params, root))
    listing.labelmap = declared_labelmap(listing.classes, listing, base)
    names = {n: i for i, n in enumerate(listing.classes)}
    for split in splits:
        aug = split == "train_aug"
        list_file = base / "ImageSets" / "Segmentation" / ("trainaug.txt" if aug else f"{split}.txt")
        if aug and not list_file.is_file():
            list_file = list_file.with_name("train_aug.txt")
        if not list_file.is_file():
            raise DataError(f"{list_file}: split list not found; VOC splits are train, val, trainval, train_aug")
        mask_dir = base / ("SegmentationClassAug" if aug else "SegmentationClass")
        entries = _voc_list(list_file, base, mask_dir, listing)
        if not entries:
            why = f"lists no images: split {split!r} is empty; add image ids or index another (dataset.val_split)"
            listing.problems.append(problem(list_file, why, NOT_INDEXED))
        for image_id, image, mask in entries:
            item_mask = mask if mask.is_file() else None
            tags = None
            if params.voc_tags_from == "xml" or item_mask is None:
                tags = _voc_xml_tags(base / "Annotations" / f"{image_id}.xml", names, listing)
                if tags is None:
                    continue
            sink.add(SourceItem(image_id, image, split, tags, item_mask))
    return listing


def _voc_list(list_file: Path, base: Path, mask_dir: Path, listing: Listing) -> list[tuple[str, Path, Path]]:
    """(image id, image, mask) of each line of a VOC split list: an image id a line (VOC's own
    lists), or DeepLab's two columns `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`, paths
    under the VOC folder. Lines of any other shape are named once, with what a line must hold."""
    text = read_user_text(list_file, "VOC split list", "check dataset.train_split")
    entries, bad = [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if len(fields) == 1 and "/" not in fields[0]:
            entries.append((fields[0], base / "JPEGImages" / f"{fields[0]}.jpg", mask_dir / f"{fields[0]}.png"))
        elif len(fields) in (1, 2):  # a path (DeepLab's image column), with its mask's path
            image = base / fields[0].lstrip("/")
            mask = base / fields[1].lstrip("/") if len(fields) == 2 else mask_dir / f"{image.stem}.png"
            named = (image, mask) if len(fields) == 2 else (image,)
            missing = [p for p in named if not p.is_file()]
            if missing:  # named with its line: without this its image would ask for an XML annotation
                what = " and ".join(f"{p.relative_to(base)}" for p in missing)
                why = f"line {line_no} names {what}, not found under {base}; fix the path or remove the line"
                listing.problems.append(problem(list_file, why, where=f"{list_file}:{line_no}"))
                continue
            entries.append((image.stem, image, mask))
        elif fields:
            bad.append(line_no)
    if bad:
        why = (
            f"{len(bad)} line(s) (first: line {bad[0]}) are neither an image id nor two paths; a VOC list holds "
            "an id a line (2007_000032) or DeepLab's `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`"
        )
        listing.problems.append(problem(list_file, why, where=f"{list_file}:{bad[0]}"))
    return entries


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
def _list_coco(params: DatasetParams, root: Path, splits: list[str], sink: SliceWriter) -> Listing:
    """Each split's JSON is read once, element by element: images become items, each annotation goes
    to its image's slice as it is read (labels are applied by the index task, `label_annotations`:
    a COCO file may declare its categories after its annotations)."""
    files = {split: _coco_files(root, split) for split in splits}
    listing = Listing(classes=())
    categories: dict[int, str] = {}
    used: set[Any] = set()  # category ids some annotation names
    supercategories: dict[int, str] = {}
    for split in splits:
        ann_file, image_dir = files[split]
        found, state = _list_coco_split(ann_file, image_dir, split, sink, listing)
        used |= state.used
        supercategories.update(state.supercategories)
        if not state.annotations:
            listing.unannotated.append(split)
            kept = "kept as a negative" if params.untagged == "keep" else "left out"
            why = f"the JSON has no annotations: no image has a tag or GT, each is {kept}; export it with its labels"
            listing.problems.append(problem(ann_file, why, LEFT_OUT if params.untagged != "keep" else NOT_SCORED))
        if split == splits[0]:
            categories = found
        elif found != categories:
            raise DataError(
                f"{ann_file} declares other categories than {files[splits[0]][0]}; the splits of one "
                "data set must share one category list"
            )
    first = files[splits[0]][0]
    official = categories == official_coco_categories()
    if not listing.unannotated:
        for root_id in _root_categories(categories, supercategories, used):
            why = (
                f"category {root_id} {categories[root_id]!r} is used by no annotation and is the supercategory of "
                "the others (a Roboflow export's root): not a class; the other categories keep their ids"
            )
            listing.problems.append(problem(first, why, CATEGORY_NOT_A_CLASS))
            del categories[root_id]
    classes, label_of = coco_label_space(categories, params.coco_label_space, str(first))
    log.info(
        "index: COCO classes from %s: %s, %s label space (%d labels incl. background)",
        first,
        "COCO's official 80 categories" if official else f"the JSON's own {len(categories)} categories",
        params.coco_label_space,
        len(classes),
    )
    category_ids: list[int | None] = [None] * len(classes)
    for category_id, label in label_of.items():
        category_ids[label] = category_id
    listing.classes, listing.category_ids = classes, tuple(category_ids)
    listing.coco = CocoLabels(categories, label_of, {split: str(files[split][0]) for split in splits})
    return listing


def _coco_files(root: Path, split: str) -> tuple[Path, Path]:
    ann_file = root / "annotations" / f"instances_{split}.json"
    image_dir = next((d for d in (root / "images" / split, root / split) if d.is_dir()), None)
    if not ann_file.is_file() or image_dir is None:
        # the splits the root does have (COCO 2017 beside the 2014 default, an export's own names)
        held = sorted(p.name.removeprefix("instances_").removesuffix(".json")
                      for p in (root / "annotations").glob("instances_*.json"))  # fmt: skip
        have = f"; it has {', '.join(held)}" if held else ""
        raise DataError(
            f"COCO split {split!r}: expected {ann_file} and images in {root / 'images' / split} "
            f"or {root / split}{have}; set dataset.train_split / dataset.val_split to the splits you have "
            "(--split on `labelgen data`; dataset.val_split='' for none)"
        )
    return ann_file, image_dir


class _CocoSplit:
    """The state of listing one COCO JSON: where each image id went, and the annotations that cannot
    be routed yet (met before the images) or ever (no such image)."""

    def __init__(
        self, ann_file: Path, image_dir: Path, split: str, sink: SliceWriter, listing: Listing, early: TextIO
    ) -> None:
        self.ann_file, self.image_dir, self.split, self.sink, self.listing = ann_file, image_dir, split, sink, listing
        self.positions: dict[Any, list[int]] = {}  # image id -> its item positions (several if the id repeats)
        self.images_read = False
        self.early, self.early_count = early, 0  # annotations met before the images, held in a temporary file
        self.orphans: list[tuple[str, Any, Any]] = []  # (where, category id, image id): no such image
        self.annotations = 0  # entries of the annotations list
        self.used: set[Any] = set()  # category ids the annotations name
        self.supercategories: dict[int, str] = {}  # category id -> its supercategory, where declared

    def image(self, img: Any) -> None:
        item = _coco_item(img, self.split, self.image_dir, self.ann_file, self.listing)
        if item is not None:
            self.positions.setdefault(img["id"], []).append(self.sink.add(item))

    def annotation(self, n: int, ann: Any, text: str) -> None:
        """Route annotation `n` of the file to its image's slice. `ann` may hold floats as their
        text (the JSON stream's fast decode): it is decoded exactly from `text` where a value is used."""
        image_id = ann.get("image_id", _MISSING) if isinstance(ann, dict) else _MISSING
        if isinstance(image_id, str):  # an id written as a string, or a float read as text
            ann = json.loads(text)
            image_id = ann["image_id"]
        if image_id is _MISSING or not _hashable(image_id):
            where = self._where(n, json.loads(text))
            self.listing.problems.append(problem(where, "not an object with an image_id", ANNOTATION_SKIPPED))
        elif not self.images_read:
            self.early_count += 1
            self.early.write(f"{n}\t{one_line(text)}\n")
        elif image_id in self.positions:
            for position in self.positions[image_id]:
                self.sink.add_annotation(position, n, text)
        else:
            exact = json.loads(text)
            self.orphans.append((self._where(n, exact), exact.get("category_id"), image_id))

    def _where(self, n: int, ann: Any) -> str:
        return f"{self.ann_file} annotation {ann.get('id', f'#{n}') if isinstance(ann, dict) else f'#{n}'}"

    def route_early(self) -> None:
        """Hand over the annotations that came before the images, now that the images are known."""
        if not self.early_count:
            return
        self.early.seek(0)
        for line in self.early:
            n, text = line.rstrip("\n").split("\t", 1)
            self.annotation(int(n), json.loads(text), text)

    def report_orphans(self, categories: dict[int, str]) -> None:
        """Annotations of no listed image are dropped; one with an unknown category is a problem too."""
        for where, category_id, image_id in self.orphans:
            if category_id not in categories:
                self.listing.problems.append(_unknown_category(where, category_id, categories, image_id))


def _list_coco_split(
    ann_file: Path, image_dir: Path, split: str, sink: SliceWriter, listing: Listing
) -> tuple[dict[int, str], _CocoSplit]:
    """List one split's JSON into `sink`; returns its categories ({id: name}) and the listing's
    state (how many annotations, the category ids they use, the supercategories). Raises
    `DataError` for a file that is not a COCO instances file."""
    categories = None
    with (
        JsonObjectStream(ann_file, "COCO annotation file", "check dataset.train_split / val_split") as stream,
        tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n") as early,
    ):
        state = _CocoSplit(ann_file, image_dir, split, sink, listing, early)
        for key in stream:
            if key in ("images", "annotations") and not stream.is_array():
                raise DataError(
                    f"{ann_file}: {key!r} is not a list; a COCO instances file has images, annotations, categories"
                )
            if key == "images":
                for img, _ in stream.elements():
                    state.image(img)
                state.images_read = True
            elif key == "annotations":
                for n, (ann, text) in enumerate(stream.elements(floats_as_text=True)):
                    state.annotation(n, ann, text)
                    state.annotations += 1
                    if isinstance(ann, dict) and _hashable(ann.get("category_id")):
                        state.used.add(ann.get("category_id"))
            elif key == "categories":
                entries = stream.value()
                categories = _categories(entries, ann_file)
                state.supercategories = {
                    c["id"]: c["supercategory"].strip() for c in entries if isinstance(c.get("supercategory"), str)
                }
        for key, found in (("images", state.images_read), ("categories", categories is not None)):
            if not found:
                raise DataError(
                    f"{ann_file}: no {key!r} list; a COCO instances file has images, annotations, categories"
                )
        state.route_early()
    state.report_orphans(categories)
    return categories, state


def _root_categories(categories: dict[int, str], supercategories: dict[int, str], used: set[Any]) -> list[int]:
    """Categories that are a data set's root rather than a class: no annotation uses them and their
    name is the supercategory of another category (Roboflow exports declare one, id 0, named after
    the project, e.g. "objects"). Kept as a class, it would shift every label by one."""
    return [
        cid
        for cid, name in categories.items()
        if cid not in used and any(sup == name and other != cid for other, sup in supercategories.items())
    ]


_MISSING = object()


def one_line(text: str) -> str:
    """A JSON text on one line: it holds line breaks only between tokens (strings escape them)."""
    return text.replace("\n", " ").replace("\r", " ") if "\n" in text or "\r" in text else text


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _categories(entries: Any, ann_file: Path) -> dict[int, str]:
    """{category id: name} of a COCO JSON's categories; raises DataError for malformed, repeated or no categories."""
    if not isinstance(entries, list):
        raise DataError(
            f"{ann_file}: 'categories' is not a list; a COCO instances file has images, annotations, categories"
        )
    categories: dict[int, str] = {}
    for c in entries:
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


def _unknown_category(where: str, category_id: Any, categories: dict[int, str], image_id: Any) -> dict[str, str]:
    ids = sorted(categories)
    declared = ", ".join(map(str, ids)) if len(ids) <= 8 else f"ids {ids[0]}..{ids[-1]}"
    return problem(
        where,
        f"category_id {category_id!r} is not among the file's {len(ids)} categories ({declared}) (image "
        f"{image_id}); fix its category_id or declare the category",
        ANNOTATION_SKIPPED,
    )


def label_annotations(
    annotations: list[tuple[int, dict[str, Any]]], split: str, coco: CocoLabels
) -> tuple[tuple[dict[str, Any], ...], list[dict[str, str]]]:
    """One image's raw annotations ((index in the file's list, annotation), as listed) with `label`
    and `name` added, and a problem for each whose category the file does not declare (skipped)."""
    kept, problems = [], []
    for n, ann in annotations:
        where = f"{coco.files[split]} annotation {ann.get('id', f'#{n}')}"
        if ann.get("category_id") not in coco.label_of:
            problems.append(_unknown_category(where, ann.get("category_id"), coco.categories, ann["image_id"]))
            continue
        keep = {k: ann.get(k) for k in ("id", "segmentation", "iscrowd", "area", "bbox", "category_id")}
        keep.update(label=coco.label_of[ann["category_id"]], name=coco.categories[ann["category_id"]])
        kept.append(keep)
    return tuple(kept), problems


def _coco_item(img: Any, split: str, image_dir: Path, ann_file: Path, listing: Listing) -> SourceItem | None:
    if not (isinstance(img, dict) and isinstance(img.get("file_name"), str) and "id" in img and _hashable(img["id"])):
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
        (),  # the annotations follow in the slice's annotations file
        img["id"] if isinstance(img["id"], int) else None,
        size,
    )


# ----------------------------------------------------------------------------------- folder and demo
def _list_folder(params: DatasetParams, root: Path, splits: list[str], sink: SliceWriter) -> Listing:
    """Every row of the tags file becomes an item or a problem naming its line."""
    listing = Listing(classes=declared_classes(params, root))
    listing.labelmap = declared_labelmap(listing.classes, listing, root, root / "masks")
    names = {n: i for i, n in enumerate(listing.classes) if i > 0}
    tags_path = root / params.tags_file
    stems: set[str] = set()  # of every image the tags file names: their masks are accounted for
    for line_no, entry in _read_tags_file(tags_path):
        where = f"{tags_path}:{line_no}"
        if "error" in entry:
            listing.problems.append(problem(entry.get("image") or where, entry["error"], where=where))
            continue
        image = _inside(root, entry["image"], where, listing)
        if image is None:
            continue
        stems.add(image.stem)
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
        sink.add(SourceItem(image.stem, image, split, tags, mask if mask.is_file() else None, where=where))
    listing.problems += _unread_masks(root / "masks", stems)
    return listing


def _unread_masks(folder: Path, stems: set[str]) -> list[dict[str, str]]:
    """A problem for each file in the masks folder that no image reads (`masks/<image stem>.png`):
    another extension, or no image of that name in the tags file. Never ignored silently."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name != LABELMAP):
        if path.suffix != ".png" and path.stem in stems:
            why = f"mask {path.name} is not read: masks are read as masks/<image stem>.png; save it so"
        elif path.suffix != ".png" or path.stem not in stems:
            why = f"mask {path.name} is not read: no image {path.stem!r} in the tags file; add its row or move it"
        else:
            continue
        found.append(problem(path, why, FILE_NOT_READ))
    return found


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
    text = read_user_text(
        path, "tags file", "write a CSV with header image,tags[,split] (or set dataset.tags_file to a .jsonl file)"
    )
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
