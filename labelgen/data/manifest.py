"""The manifest: the only thing later stages read about a data set.

One JSON file: a header (data set, class names, label space) and one row per usable image.
The schema is `data_manifests/manifest.schema.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from labelgen.errors import DataError

MANIFEST_SCHEMA = 2  # 2: orientation, source_id, category_ids


@dataclass(frozen=True)
class ImageRecord:
    id: str  # unique within the manifest; file stem for most data sets
    image: str  # absolute path of the image file
    width: int
    height: int
    tags: tuple[int, ...]  # foreground labels (1..C) present in the image
    mask: str | None  # absolute path of the GT class-index PNG, if any
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
    # the source's id of each label (COCO category ids; index 0, background, is 0), kept for export;
    # None where the labels are the source's ids themselves (VOC, folder, demo)
    category_ids: tuple[int, ...] | None = None

    def category_id(self, label: int) -> int:
        """The source category id of `label` (the label itself where the source has no ids)."""
        return label if self.category_ids is None else self.category_ids[label]

    @property
    def num_classes(self) -> int:
        """Labels including background."""
        return len(self.classes)

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records})

    def save(self, path: Path) -> None:
        data = {
            "schema": MANIFEST_SCHEMA,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "category_ids": None if self.category_ids is None else list(self.category_ids),
            "records": [asdict(r) for r in self.records],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=0))
        tmp.replace(path)

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
