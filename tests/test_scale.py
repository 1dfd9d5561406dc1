"""What planning reads of a large run: the class list comes from the manifest's header, not its rows."""

import json

from labelgen.data.manifest import MANIFEST_SCHEMA, manifest_classes, write_manifest

CLASSES = ("background", "cat", 'say "records": [', "dog")


def rows(n):
    for i in range(n):
        yield {"id": f"{i:06d}", "image": f"/x/{i}.jpg", "width": 4, "height": 3, "tags": [1], "mask": None,
               "split": "train", "sha256": "0" * 64}  # fmt: skip


def test_classes_come_from_the_header_alone(tmp_path):
    path = tmp_path / "manifest.json"
    write_manifest(path, "demo", CLASSES, None, rows(20_000))
    assert manifest_classes(path) == CLASSES
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # rows cut off mid-file: only a reader of the rows fails
    assert manifest_classes(path) == CLASSES


def test_a_manifest_without_the_layout_is_read_whole(tmp_path):
    path = tmp_path / "manifest.json"
    records = list(rows(2))
    path.write_text(json.dumps({"records": records, "schema": MANIFEST_SCHEMA, "dataset": "demo",
                                "classes": list(CLASSES), "category_ids": None}))  # fmt: skip
    assert manifest_classes(path) == CLASSES
