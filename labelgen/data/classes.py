"""Class lists. Label 0 is always background; labels 1..C are the foreground classes."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from labelgen.data.text import read_user_text
from labelgen.errors import DataError

BACKGROUND = "background"


def _manifest_file(name: str) -> Path:
    return Path(str(resources.files("labelgen.data_manifests") / name))


def read_class_file(path: Path | str) -> tuple[str, ...]:
    """Foreground class names, one a line; blank lines and `#` comments skipped. Prepends background."""
    path = Path(path)
    lines = read_user_text(path, "class list", "write one class name a line").splitlines()
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


def official_coco_categories() -> dict[int, str]:
    """COCO's own 80 instance categories, {category id: name} (ids 1..90, 10 unused)."""
    categories = json.loads(_manifest_file("coco_categories.json").read_text())["categories"]
    return {c["id"]: c["name"] for c in categories}


def coco_label_space(
    categories: dict[int, str], label_space: str, where: str
) -> tuple[tuple[str, ...], dict[int, int]]:
    """Class names and the map category id -> label for the categories a COCO-format JSON declares
    ({id: name}); COCO's own file gives COCO's 80 classes, a tool's export (CVAT, Label Studio,
    Roboflow) its own.

    "contiguous": labels 1..K in category-id order. "original": labels are the category ids
    themselves (they must be 1..254; ids without a category are named `unused_<id>` and never occur,
    as COCO's 10 unused ids). Raises `DataError` naming `where` for ids or names that cannot be labels.
    """
    ids = sorted(categories)
    names = [categories[i] for i in ids]
    if BACKGROUND in names:
        raise DataError(
            f"{where}: category {BACKGROUND!r} (id {ids[names.index(BACKGROUND)]}) collides with label 0, which "
            "labelgen reserves for unlabelled pixels; rename or remove that category"
        )
    if label_space == "contiguous":
        return (BACKGROUND, *names), {c: label for label, c in enumerate(ids, 1)}
    if label_space == "original":
        if ids[0] < 1 or ids[-1] > 254:
            raise DataError(
                f"{where}: category ids {ids[0]}..{ids[-1]} cannot be labels 1..254; "
                "use --set dataset.coco_label_space=contiguous"
            )
        space = (BACKGROUND, *(categories.get(i, f"unused_{i}") for i in range(1, ids[-1] + 1)))
        return space, {c: c for c in ids}
    raise DataError(f"dataset.coco_label_space={label_space!r}; allowed: contiguous, original")
