"""Corrections from files a person exports from their own annotation server, for teams that run
one (`labelgen review import --format ...`):

- `labelstudio-json`: Label Studio's JSON export (a list of tasks, each with `data.image` and
  `annotations[]` holding brush results; see `labelgen.review.brush`). A task's latest annotation
  that was not cancelled (skipped) is its correction; who = `completed_by` (an e-mail where the
  export holds one, else the user id), when = `updated_at`.
- `cvat-mask`: CVAT's "Segmentation mask 1.1" (a .zip or its unpacked folder): `labelmap.txt`
  (`name:r,g,b::` lines), `SegmentationClass/<image name>.png` (1- or 3-channel masks, one colour
  per label), `ImageSets/Segmentation/default.txt`. Every mask in the export is a correction.
- `coco`: CVAT's "COCO 1.0" (or any COCO instances JSON, bare or in a .zip): categories matched by
  name, shapes drawn as labelgen draws COCO GT (larger objects first, crowd regions ignore). Every
  image in `images` is a correction (one without annotations: all background).

Images are matched to the run by file name (Label Studio's upload prefix `<8 hex>-` stripped):
a manifest row whose id or file stem equals the name's stem. Class names must be the run's.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from labelgen.data.coco_gt import check_coco, rasterise
from labelgen.data.colours import colour_table, decode_colours, parse_labelmap
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.masks import IGNORE_INDEX
from labelgen.errors import DataError
from labelgen.review.brush import results_to_mask
from labelgen.review.pulled import Correction

FORMATS = ("labelstudio-json", "cvat-mask", "coco")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio names an uploaded file <8 hex>-<its name>


class ImageMatcher:
    """Finds a run's manifest row from a file name an annotation tool kept."""

    def __init__(self, manifest: Manifest):
        self.by_id = {r.id: r for r in manifest.records}
        self.by_stem: dict[str, list[ImageRecord]] = {}
        for r in manifest.records:
            self.by_stem.setdefault(Path(r.image).stem, []).append(r)

    def find(self, name: str, where: str) -> ImageRecord:
        """The row of image `name` (a path or URL; only its last part counts); `DataError` naming
        `where` when no row or two rows match."""
        base = PurePosixPath(name.replace("\\", "/").split("?")[0]).name
        stems = [PurePosixPath(base).stem, PurePosixPath(_UPLOAD_PREFIX.sub("", base)).stem]
        for stem in stems:
            if stem in self.by_id:
                return self.by_id[stem]
            found = self.by_stem.get(stem, [])
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise DataError(
                    f"{where}: image {name!r} matches {len(found)} images of the run "
                    f"({found[0].image}, {found[1].image}); give the images distinct file names"
                )
        raise DataError(f"{where}: image {name!r} is not an image of this run (no manifest row has its name)")


def read_corrections(path: Path, fmt: str, manifest: Manifest) -> list[Correction]:
    """The corrections in an exported file or folder `path` of format `fmt` (one of `FORMATS`).
    Raises `DataError` naming the file for a wrong layout, an unknown class or image."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    readers = {"labelstudio-json": _labelstudio, "cvat-mask": _cvat_mask, "coco": _coco}
    return readers[fmt](path, manifest)


# ----------------------------------------------------------------------------- Label Studio JSON
def labelstudio_task_corrections(
    task: dict[str, Any], record: ImageRecord, classes: tuple[str, ...], where: str
) -> Correction | None:
    """A Label Studio task's correction: its latest annotation not cancelled, as a mask; None where
    it has none."""
    annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    if not annotations:
        return None
    latest = max(annotations, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)))
    where = f"{where} task {task.get('id')} annotation {latest.get('id')}"
    mask = results_to_mask(latest.get("result", []), classes, (record.height, record.width), where)
    who = latest.get("completed_by")
    if isinstance(who, dict):  # some exports expand the user
        who = who.get("email") or who.get("id")
    return Correction(record.id, mask, str(who), latest.get("updated_at") or latest.get("created_at") or "", where)


def _labelstudio(path: Path, manifest: Manifest) -> list[Correction]:
    try:
        tasks = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as e:
        raise DataError(f"{path}: not a Label Studio JSON export ({e}); export the project as JSON") from e
    if not isinstance(tasks, list):
        raise DataError(f"{path}: a Label Studio JSON export is a list of tasks, this holds a {type(tasks).__name__}")
    matcher, out = ImageMatcher(manifest), []
    for task in tasks:
        data = task.get("data", {})
        image = data.get("labelgen_id") or data.get("image")
        if not image:
            raise DataError(f"{path}: task {task.get('id')} has no data.image; label an image project")
        record = matcher.find(str(image), f"{path} task {task.get('id')}")
        correction = labelstudio_task_corrections(task, record, manifest.classes, str(path))
        if correction is not None:
            out.append(correction)
    return out


# ----------------------------------------------------------------------------- CVAT
class _Tree:
    """A zip archive or a folder, read alike."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None

    def names(self) -> list[str]:
        if self.zip:
            return [n for n in self.zip.namelist() if not n.endswith("/")]
        return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]

    def read(self, name: str) -> bytes:
        return self.zip.read(name) if self.zip else (self.path / name).read_bytes()


def _tree(path: Path, fmt: str) -> _Tree:
    try:
        return _Tree(path)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a zip archive ({e}); pass the {fmt} export's .zip or its unpacked folder") from e


def _cvat_mask(path: Path, manifest: Manifest) -> list[Correction]:
    tree = _tree(path, "Segmentation mask 1.1")
    names = tree.names()
    labelmap = next((n for n in names if PurePosixPath(n).name == "labelmap.txt"), None)
    if labelmap is None:
        raise DataError(f"{path}: no labelmap.txt; export the task as CVAT's 'Segmentation mask 1.1' (it writes one)")
    colours = parse_labelmap(tree.read(labelmap).decode("utf-8-sig"), f"{path}/{labelmap}")
    table, unnamed = colour_table(colours, manifest.classes, IGNORE_INDEX)
    if unnamed:
        unknown = ", ".join(map(repr, sorted(set(unnamed.values()))))
        raise DataError(
            f"{path}/{labelmap}: labels {unknown} are not classes of this run "
            f"({', '.join(manifest.classes[1:])}); name the task's labels as the run's classes"
        )
    masks = [n for n in names if "SegmentationClass/" in n and n.lower().endswith(".png")]
    if not masks:
        raise DataError(f"{path}: no SegmentationClass/*.png; export the task as CVAT's 'Segmentation mask 1.1'")
    matcher, out = ImageMatcher(manifest), []
    for name in sorted(masks):
        where = f"{path}/{name}"
        record = matcher.find(name.split("SegmentationClass/", 1)[1], where)
        rgb = np.asarray(Image.open(io.BytesIO(tree.read(name))).convert("RGB"))
        mask = decode_colours(rgb, table, f"of {where} are not in {labelmap}")
        out.append(Correction(record.id, mask, "", "", where))
    return out


# ----------------------------------------------------------------------------- COCO
def _coco(path: Path, manifest: Manifest) -> list[Correction]:
    data, where = _coco_json(path)
    label_of = {name: k for k, name in enumerate(manifest.classes) if k}
    categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    unknown = sorted(n for n in categories.values() if n not in label_of)
    if unknown:
        raise DataError(
            f"{where}: categories {', '.join(map(repr, unknown))} are not classes of this run "
            f"({', '.join(manifest.classes[1:])}); name the labels as the run's classes"
        )
    by_image: dict[Any, list[dict]] = {}
    for ann in data.get("annotations", []):
        name = categories.get(ann.get("category_id"))
        if name is None:
            raise DataError(f"{where}: annotation {ann.get('id')} has category id {ann.get('category_id')}, not listed")
        by_image.setdefault(ann.get("image_id"), []).append({**ann, "label": label_of[name], "name": name})
    matcher, out = ImageMatcher(manifest), []
    for image in data.get("images", []):
        at = f"{where} image {image.get('id')}"
        record = matcher.find(str(image.get("file_name", "")), at)
        gt = check_coco(tuple(by_image.get(image.get("id"), [])), record.height, record.width)
        broken = [reason for reason, _ in gt.notes]
        if broken:
            raise DataError(f"{at}: {broken[0]}")
        out.append(Correction(record.id, rasterise(gt.shapes, record.height, record.width), "", "", at))
    return out


def _coco_json(path: Path) -> tuple[dict[str, Any], str]:
    """The instances JSON of a COCO export: the file itself, or the one JSON under annotations/ of
    a .zip or folder."""
    if path.suffix.lower() == ".json":
        return _load_json(path.read_bytes(), str(path)), str(path)
    tree = _tree(path, "COCO 1.0")
    found = [n for n in tree.names() if n.lower().endswith(".json")]
    if len(found) != 1:
        raise DataError(f"{path}: expected one instances JSON in a COCO export, found {len(found)}; pass the JSON")
    return _load_json(tree.read(found[0]), f"{path}/{found[0]}"), f"{path}/{found[0]}"


def _load_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not JSON ({e})") from e
    if not isinstance(data, dict) or "images" not in data:
        raise DataError(f"{where}: not a COCO instances file (no `images`)")
    return data
