"""The one executor (labelgen/pipeline/executor.py) gives mask export and `labelgen data index` the
runner's guarantees: an interrupted export resumes without rewriting its finished shards, a second
export into a folder that one is writing is refused at once naming the holder, and an index folder
keeps a record per slice. Real LocalClusters, a real run indexed from coco128 photos (as in
tests/test_export.py), real files."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

import labelgen.formats.source as export_source_module
from labelgen.formats.write import export_masks
from labelgen.store.artifact import ArtifactLock
from labelgen.store.sharded import ImageArrays
from labelgen.store.workfolder import WorkFolder
from tests.killing import labelgen_cmd
from tests.test_export import coco128, coco2014_root, gt_run  # noqa: F401  (fixtures)

OVERRIDES = ('dataset.name="coco"', 'dataset.train_split="train2014"', 'dataset.val_split=""')


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory, client, coco2014_root):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("executor_run")
    gt_run(run_dir, client, (*OVERRIDES, f'dataset.root="{coco2014_root}"'))
    return run_dir


@pytest.fixture(scope="module")
def one_worker():
    """One worker with one thread: units run in the order they were submitted, so which shard is
    done when the last one fails is known."""
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        yield c


def _records(out: Path) -> dict[int, dict]:
    return {int(p.stem): json.loads(p.read_text()) for p in out.glob(".labelgen/*/_shards/*.json")}


def _stamp(out: Path, files: list[str]) -> dict[str, tuple[int, int]]:
    return {f: (os.stat(out / f).st_ino, os.stat(out / f).st_mtime_ns) for f in files}


def test_an_interrupted_export_resumes_without_rewriting_its_finished_shards(
    coco_run, one_worker, client, tmp_path, monkeypatch
):
    monkeypatch.setattr(export_source_module, "SHARD", 2)  # 6 images: 3 shards of 2
    out = tmp_path / "voc"
    ids = ImageArrays(next(coco_run.glob("pseudo_labels/*/masks.zarr"))).ids  # in store (export) order
    # the first image of the last shard cannot be written (a folder stands where its PNG goes)
    blocker = out / "SegmentationClass" / f"{ids[4]}.png"
    blocker.mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        export_masks(coco_run, "pseudo_labels", "voc", out, one_worker)
    done = _records(out)
    assert sorted(done) == [0, 1]  # the two shards before the failing one finished and were recorded
    failure = json.loads((out / ".labelgen" / "_FAILED.json").read_text())
    assert failure["unit"] == "train2014 shard 2 (images 4-5)" and failure["error"].startswith("IsADirectoryError")
    finished = [f for r in done.values() for f in r["files"]]
    assert len(finished) == 4 and all(f.startswith("SegmentationClass/") for f in finished)
    before = _stamp(out, finished)

    blocker.rmdir()
    export_masks(coco_run, "pseudo_labels", "voc", out, one_worker)
    assert _stamp(out, finished) == before  # the finished shards' files were not written again
    assert sorted(_records(out)) == [0, 1, 2] and not (out / ".labelgen" / "_FAILED.json").exists()

    fresh = tmp_path / "fresh"  # the resumed export holds exactly what an uninterrupted one writes
    export_masks(coco_run, "pseudo_labels", "voc", fresh, client)
    written = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file() and ".labelgen" not in p.parts)
    assert written == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and ".labelgen" not in p.parts)
    assert all((fresh / p).read_bytes() == (out / p).read_bytes() for p in written)
    assert len([p for p in written if p.parts[0] == "SegmentationClass"]) == 6


def test_a_second_export_into_a_folder_being_written_is_refused_naming_the_holder(coco_run, tmp_path):
    out = tmp_path / "out"
    with ArtifactLock(WorkFolder(out, "any", "export")):  # as if another export were writing `out`
        done = subprocess.run(
            labelgen_cmd(
                "export", "--run-dir", str(coco_run), "--what", "pseudo_labels", "--format", "coco", "--out", str(out)
            ),
            capture_output=True,
            text=True,
            timeout=300,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
            },
        )
    assert done.returncode == 2, done.stderr
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    assert f"error: export folder {out} is being written by {holder}" in done.stderr
    assert "LocalCluster" not in done.stderr  # refused before a cluster started
    assert not list(out.glob("*.json"))  # and before anything was written


def test_data_index_keeps_a_record_per_slice_and_a_rerun_redoes_none(coco2014_root, tmp_path, caplog):  # noqa: F811
    from labelgen.config import load_recipe, recipe_path
    from labelgen.pipeline.indexing import index_dataset

    params = load_recipe(recipe_path("coco"), (*OVERRIDES, "dataset.index_slice=2"))["dataset"]
    first = index_dataset(params, coco2014_root, tmp_path / "index", workers=2)
    assert sorted(_records(tmp_path / "index")) == [0, 1, 2]
    with caplog.at_level(logging.INFO, logger="labelgen"):  # in this process this time: the same records
        again = index_dataset(params, coco2014_root, tmp_path / "index", workers=1)
    assert any("running 0 of 3 unit(s) (3 already done)" in r.message for r in caplog.records)
    assert [r.id for r in again.records] == [r.id for r in first.records] and len(first.records) == 6


def _write_rows(folder: Path, index: int, rows: range) -> tuple[list[Path], dict]:
    path = folder / f"part{index}.txt"
    path.write_text(",".join(map(str, rows)))
    return [path], {"images": len(rows)}


def test_a_record_counts_only_for_the_same_unit(tmp_path):
    """In this process (no client): unit records resume work; a record left by a cut into other
    pieces (same index, other images) is redone, not trusted."""
    from labelgen.pipeline.executor import run_units
    from labelgen.pipeline.stage import Unit

    folder = WorkFolder(tmp_path, "k", "index")

    def units(size: int) -> list[Unit]:
        cuts = [range(s, min(s + size, 6)) for s in range(0, 6, size)]
        return [
            Unit(i, _write_rows, (tmp_path, i, r), f"slice {i} (images {r.start}-{r.stop - 1})")
            for i, r in enumerate(cuts)
        ]

    assert [r["images"] for r in run_units(folder, units(3), None, "index")] == [3, 3]
    before = _stamp(tmp_path, ["part0.txt", "part1.txt"])
    run_units(folder, units(3), None, "index")
    assert _stamp(tmp_path, ["part0.txt", "part1.txt"]) == before  # resumed: nothing redone
    records = run_units(folder, units(2), None, "index")  # same indices 0, 1, other images
    assert [r["images"] for r in records] == [2, 2, 2] and (tmp_path / "part0.txt").read_text() == "0,1"
