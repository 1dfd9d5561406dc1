"""The manifest: the only thing later stages read about a data set.

One JSON file: a header (data set, class names, label space) and one row per usable image.
The schema is `data_manifests/manifest.schema.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labelgen.errors import DataError

MANIFEST_SCHEMA = 4  # 2: orientation, source_id, category_ids; 3: `mask` may name COCO GT shapes;
# 4: category_ids hold null (not 0) for background, as 0 is a category id like any other


@dataclass(frozen=True)
class ImageRecord:
    id: str  # unique within the manifest; file stem for most data sets
    image: str  # absolute path of the image file
    width: int
    height: int
    tags: tuple[int, ...]  # foreground labels (1..C) present in the image
    # where the GT is, if it is scored: the absolute path of a class-index PNG, or for COCO
    # `<absolute path>.cocogt.json#<n>` (the image's annotation shapes, rasterised when read).
    # Read it with `labelgen.data.masks.gt_mask(record)`.
    mask: str | None
    split: str
    sha256: str  # of the image file bytes
    # EXIF orientation (1..8) labelgen applies when it reads the file: 1 = the stored pixels as they
    # are. width/height/mask are in that frame. Pass it to `read_image` (see data/images.py).
    orientation: int = 1
    source_id: int | None = None  # the image's id in its source (COCO `images[].id`), kept for export


@dataclass(frozen=True)
class Manifest:
    dataset: str
    classes: tuple[str, ...]  # index = label; 0 is background
    records: tuple[ImageRecord, ...]
    # the source's id of each label (COCO category ids, 0 a real id as any other; None for background
    # and for labels no category has), kept for export; None where the labels are the source's ids
    # themselves (VOC, folder, demo)
    category_ids: tuple[int | None, ...] | None = None

    def category_id(self, label: int) -> int | None:
        """The source category id of `label` (the label itself where the source has no ids; None for
        background and labels of no source category)."""
        return label if self.category_ids is None else self.category_ids[label]

    @property
    def num_labels(self) -> int:
        """Labels including background (0..num_labels-1)."""
        return len(self.classes)

    @property
    def num_fg_classes(self) -> int:
        """Foreground classes (labels 1..num_fg_classes): what the CAM network classifies."""
        return len(self.classes) - 1

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records})

    def save(self, path: Path) -> None:
        write_manifest(path, self.dataset, self.classes, self.category_ids, (asdict(r) for r in self.records))

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise DataError(f"manifest {path} not found; run `labelgen data index` or `labelgen run index`") from e
        except json.JSONDecodeError as e:
            raise DataError(f"manifest {path} is not valid JSON ({e}); re-create it with `labelgen data index`") from e
        if data.get("schema") != MANIFEST_SCHEMA:
            raise DataError(
                f"manifest {path} has schema {data.get('schema')!r}, this labelgen reads {MANIFEST_SCHEMA}; "
                "re-create it with `labelgen data index`"
            )
        records = tuple(ImageRecord(**{**r, "tags": tuple(r["tags"])}) for r in data["records"])
        category_ids = data.get("category_ids")
        return cls(
            dataset=data["dataset"],
            classes=tuple(data["classes"]),
            records=records,
            category_ids=None if category_ids is None else tuple(category_ids),
        )


_ROWS_START = ', "records": ['  # what write_manifest writes between the header and the rows
_HEADER_LIMIT = 1 << 24  # bytes: a header (class names) is far smaller; past this, read the whole file


def manifest_classes(path: Path) -> tuple[str, ...]:
    """The class names (background first) of a manifest, read from its header without parsing its
    rows: a 1 M-image manifest is 260 MB of rows, which planning a run never needs. A file not laid
    out header first is read whole (`Manifest.load`, with its errors)."""
    head = b""
    with open(path, "rb") as f:
        while len(head) < _HEADER_LIMIT and (block := f.read(1 << 16)):
            head += block
            end = head.find(_ROWS_START.encode())
            if end >= 0:
                header = json.loads(head[:end] + b"}")
                if header.get("schema") == MANIFEST_SCHEMA:
                    return tuple(header["classes"])
                break
    return Manifest.load(path).classes


def write_manifest(
    path: Path,
    dataset: str,
    classes: tuple[str, ...],
    category_ids: tuple[int | None, ...] | None,
    rows: Iterable[dict[str, Any]],
) -> int:
    """Write a manifest from its header and its rows (`ImageRecord` fields), one row a line, without
    holding the rows: the file appears whole (written aside, then renamed) and only if there is at
    least one row. Returns the number of rows."""
    header = {
        "schema": MANIFEST_SCHEMA,
        "dataset": dataset,
        "classes": list(classes),
        "category_ids": None if category_ids is None else list(category_ids),
    }
    tmp = path.with_suffix(".tmp")
    count = 0
    with open(tmp, "w") as f:
        f.write(json.dumps(header)[:-1] + ', "records": [')
        for row in rows:
            f.write((",\n" if count else "\n") + json.dumps(row))
            count += 1
        f.write("\n]}\n")
    if count:
        tmp.replace(path)
    else:
        tmp.unlink()
    return count
