"""The index's task inputs: the listed items cut into slices, one items file per slice and one file of
the raw COCO annotations of that slice's images.

The driver writes them while it lists the data set (a COCO JSON is read once, element by element,
and each annotation goes straight to its image's slice) and keeps none of it; each index task reads
its own slice. Slices are consecutive runs of `size` items in listing order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from labelgen.data.sources import SourceItem, one_line

ITEMS = "{:06d}.items.json"
ANNOTATIONS = "{:06d}.annotations.jsonl"
# Annotation lines held before they are appended to their slices' files: bounds the driver's memory.
FLUSH_CHARS = 16 << 20


class SliceWriter:
    """Cuts the listed items into slices of `size` and writes each slice's task input under `folder`
    (emptied first: annotation files are appended to, so an earlier attempt's must go)."""

    def __init__(self, folder: Path, size: int) -> None:
        if size < 1:
            raise ValueError(f"slice size {size}: must be at least 1")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.folder, self.size, self.count = folder, size, 0
        self._items: list[dict[str, Any]] = []
        self._pending: dict[int, list[str]] = {}
        self._pending_chars = 0

    def add(self, item: SourceItem) -> int:
        """Append an item; returns its position in the listing (0, 1, ...)."""
        self._items.append(_item_row(item))
        self.count += 1
        if len(self._items) == self.size:
            self._write_items()
        return self.count - 1

    def add_annotation(self, position: int, n: int, text: str) -> None:
        """Hand one raw COCO annotation (`text`: its JSON; `n`: its index in the file's list) to the
        item at `position`."""
        index, k = divmod(position, self.size)
        line = f"[{k},{n},{one_line(text)}]\n"
        self._pending.setdefault(index, []).append(line)
        self._pending_chars += len(line)
        if self._pending_chars > FLUSH_CHARS:
            self._flush()

    def close(self) -> int:
        """Write what is held; returns the number of slices."""
        if self._items:
            self._write_items()
        self._flush()
        return -(-self.count // self.size)

    def _write_items(self) -> None:
        index = (self.count - 1) // self.size
        (self.folder / ITEMS.format(index)).write_text(json.dumps(self._items))
        self._items = []

    def _flush(self) -> None:
        for index, lines in self._pending.items():
            with open(self.folder / ANNOTATIONS.format(index), "a", encoding="utf-8", newline="\n") as f:
                f.writelines(lines)
        self._pending, self._pending_chars = {}, 0


def read_slice(folder: Path, index: int) -> tuple[list[SourceItem], dict[int, list[tuple[int, dict]]]]:
    """The items of slice `index`, and for each item position in the slice its raw COCO annotations
    as (index in the file's list, annotation), in file order."""
    items = [_item(row) for row in json.loads((folder / ITEMS.format(index)).read_text())]
    annotations: dict[int, list[tuple[int, dict]]] = {}
    path = folder / ANNOTATIONS.format(index)
    if path.is_file():
        with open(path, encoding="utf-8", newline="\n") as f:
            for line in f:
                k, n, ann = json.loads(line)
                annotations.setdefault(k, []).append((n, ann))
    return items, annotations


def _item_row(item: SourceItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "image": str(item.image),
        "split": item.split,
        "tags": item.tags,
        "mask": None if item.mask is None else str(item.mask),
        "coco": item.coco_annotations is not None,
        "source_id": item.source_id,
        "annotated_size": item.annotated_size,
        "where": item.where,
    }


def _item(row: dict[str, Any]) -> SourceItem:
    return SourceItem(
        id=row["id"],
        image=Path(row["image"]),
        split=row["split"],
        tags=None if row["tags"] is None else tuple(row["tags"]),
        mask=None if row["mask"] is None else Path(row["mask"]),
        coco_annotations=() if row["coco"] else None,
        source_id=row["source_id"],
        annotated_size=None if row["annotated_size"] is None else tuple(row["annotated_size"]),
        where=row["where"],
    )
