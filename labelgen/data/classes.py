"""Class lists. Label 0 is always background; labels 1..C are the foreground classes."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from labelgen.errors import DataError

BACKGROUND = "background"


def _manifest_file(name: str) -> Path:
    return Path(str(resources.files("labelgen.data_manifests") / name))


def read_class_file(path: Path | str) -> tuple[str, ...]:
    """Foreground class names, one a line; blank lines and `#` comments skipped. Prepends background."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as e:
        raise DataError(f"class list {path} not found; write one class name a line") from e
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise DataError(f"class list {path} is empty; write one class name a line")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"class list {path} repeats {duplicates}; each class once")
    if BACKGROUND in names:
        raise DataError(f"class list {path} names {BACKGROUND!r}; it is implicit (label 0), remove it")
    return (BACKGROUND, *names)


def voc_classes() -> tuple[str, ...]:
    return read_class_file(_manifest_file("voc_classes.txt"))


def demo_classes() -> tuple[str, ...]:
    return read_class_file(_manifest_file("demo_classes.txt"))


def coco_label_space(label_space: str) -> tuple[tuple[str, ...], dict[int, int]]:
    """COCO class names and the map category id -> label.

    "contiguous": 80 classes, labels 1..80 in category-id order. "original": labels are the
    category ids 1..90 themselves; the 10 ids COCO never uses are named `unused_<id>`.
    """
    categories = json.loads(_manifest_file("coco_categories.json").read_text())["categories"]
    if label_space == "contiguous":
        names = (BACKGROUND, *(c["name"] for c in categories))
        return names, {c["id"]: i + 1 for i, c in enumerate(categories)}
    if label_space == "original":
        by_id = {c["id"]: c["name"] for c in categories}
        names = (BACKGROUND, *(by_id.get(i, f"unused_{i}") for i in range(1, 91)))
        return names, {i: i for i in by_id}
    raise DataError(f"dataset.coco_label_space={label_space!r}; allowed: contiguous, original")
