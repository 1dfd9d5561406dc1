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


def test_status_counts_finished_units_without_reading_their_files(tmp_path, monkeypatch):
    """A half-done stage of a large run: status counts shard records whose files exist, and reads none
    of those files (the run checksums them when it resumes)."""
    import labelgen.store.artifact as artifact_module
    from labelgen.pipeline.status import stage_status
    from labelgen.store.artifact import PLAN_FILE, Artifact, write_json_atomic

    art = Artifact(tmp_path, "export_cams", "k")
    (art.path / "cams.zarr").mkdir(parents=True)
    write_json_atomic(art.path / PLAN_FILE, {"units": 4, "labels": ["a", "b", "c", "d"]})
    for i in range(3):
        shard = art.path / "cams.zarr" / f"c{i}"
        shard.write_bytes(b"x" * 1000)
        art.write_shard_record(i, [shard], {"label": f"shard {i}"})
    (art.path / "cams.zarr" / "c2").unlink()  # a finished shard whose file is gone is not done

    def no_reading(path):
        raise AssertionError(f"status read {path}")

    monkeypatch.setattr(artifact_module, "file_digest", no_reading)
    state = stage_status(art)
    assert (state.state, state.detail) == ("partial", "2/4 units done")
