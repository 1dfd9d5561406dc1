"""Driving the index's work: its units (for the `index` stage and for `labelgen data index/check`),
the `data index/check` run itself, and the run's class list before its later stages run. The work
itself is pure data work, in labelgen/data/index.py."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from labelgen.config import DatasetParams, Recipe
from labelgen.data.fingerprint import data_fingerprint
from labelgen.data.index import MANIFEST, assemble_index, declared_run_classes, index_slice, list_into_slices
from labelgen.data.manifest import Manifest
from labelgen.data.sources import Listing
from labelgen.pipeline.dag import STAGES
from labelgen.pipeline.executor import run_units
from labelgen.pipeline.stage import Unit, output_path
from labelgen.store.artifact import Artifact, ArtifactLock
from labelgen.store.workfolder import WorkFolder, work_key


def index_units(params: DatasetParams, root: Path, out: Path) -> tuple[Listing, list[Unit]]:
    """List the data set into slices under `out` and make one unit per slice (`index_slice`)."""
    listing, tasks = list_into_slices(params, root, out)
    return listing, [Unit(i, index_slice, args, label) for i, (label, args) in enumerate(tasks)]


def index_dataset(params: DatasetParams, root: Path, out_dir: Path, workers: int | None = None) -> Manifest:
    """Index without a run, for `labelgen data index/check`: the index stage's units, run by the
    executor into `out_dir` (records under `out_dir/.labelgen/`, so an interrupted index of the same
    data resumes; a second index into the folder is refused, naming its holder), then assembled.
    One slice runs in this process; more run on a local cluster of `workers` processes (default: one
    per available core), with a progress bar. Writes problems.json (always, also when nothing is
    usable: then raises `NoUsableImages`) and manifest.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {"params": dataclasses.asdict(params), "root": str(root), "data": data_fingerprint(root)}
    folder = WorkFolder(out_dir, work_key(identity), "index")
    with ArtifactLock(folder):
        folder.forget_other_keys()
        listing, units = index_units(params, root, out_dir)
        with _client(len(units), workers) as client:
            run_units(folder, units, client, "index")
        assemble_index(params.name, out_dir)
    return Manifest.load(out_dir / MANIFEST)


@contextlib.contextmanager
def _client(units: int, workers: int | None):
    """A local cluster for more than one unit; none (in this process) for one, where starting worker
    processes would cost more than the unit."""
    if units < 2 or workers == 1:
        yield None
        return
    from labelgen.devices import available_cores
    from labelgen.pipeline.cluster import open_client

    with open_client(None, min(workers or available_cores(), units)) as client:
        yield client


def load_manifest(index: Artifact) -> Manifest:
    """The manifest of a finished index artifact (for code outside the stages; a stage reads it with
    `Manifest.load(ctx.input_path("index", "manifest"))`)."""
    return Manifest.load(output_path(STAGES["index"], index, "manifest"))


def known_classes(recipe: Recipe, run_dir: Path, index: Artifact) -> tuple[str, ...] | None:
    """The run's class list (background first) before its later stages run: the finished index's,
    else where the layout declares it (`declared_run_classes`)."""
    if index.is_complete():
        return load_manifest(index).classes
    return declared_run_classes(recipe, run_dir)
