"""index: scan a data set, validate every image, read tags and check GT -> manifest + problems.

Output: `manifest.json` (see data_manifests/manifest.schema.json), `problems.json` (every file left
out or converted, with the reason), `gt/<slice>.cocogt.json` (COCO: each image's usable annotation
shapes, rasterised when a stage reads the GT: `labelgen.data.masks.gt_mask`), `slices/` (each task's
rows and problems, assembled into the manifest), `listing.json` (the data set's header).

The driver lists the data set once into per-slice task inputs (`_inputs/`, removed once the manifest
is written): a COCO JSON is read element by element and each annotation written to its image's
slice, so neither the driver nor the tasks' arguments hold annotations. Tasks receive paths.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from labelgen.config import DatasetParams, Recipe
from labelgen.data.coco_gt import GT_SUFFIX
from labelgen.data.demo import generate_demo
from labelgen.data.fingerprint import data_fingerprint
from labelgen.data.manifest import Manifest, write_manifest
from labelgen.data.problems import grouped, is_problem, problem
from labelgen.data.slices import SliceWriter, read_slice
from labelgen.data.sources import (
    CocoLabels,
    Listing,
    SourceItem,
    declared_classes,
    label_annotations,
    list_dataset,
)
from labelgen.data.validate import index_items
from labelgen.devices import available_cores
from labelgen.errors import DataError
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult, output_path
from labelgen.store.artifact import Artifact

log = logging.getLogger(__name__)


class NoUsableImages(DataError):
    """Every image of the data set was left out; problems.json says why for each."""


MANIFEST = "manifest.json"
PROBLEMS = "problems.json"
_LISTING = "listing.json"
_INPUTS = "_inputs"
_SLICES = "slices"
_GT = "gt"


def data_root(params: DatasetParams, run_dir: Path) -> Path:
    """Where the data set lives; the demo set is generated under the run folder unless a root is given."""
    if params.root:
        return Path(params.root).expanduser().resolve()
    if params.name == "demo":
        return (run_dir / "data" / "demo").resolve()
    raise DataError(f"dataset {params.name!r} needs --data-root PATH (or dataset.root in the recipe)")


def dataset_splits(params: DatasetParams) -> list[str]:
    return [params.train_split] + ([params.val_split] if params.val_split else [])


def load_manifest(index: Artifact) -> Manifest:
    """The manifest of a finished index artifact (for code outside the stages; a stage reads it with
    `Manifest.load(ctx.input_path("index", "manifest"))`)."""
    return Manifest.load(output_path(STAGE, index, "manifest"))


def index_dataset(params: DatasetParams, root: Path, out_dir: Path, workers: int | None = None) -> Manifest:
    """Index without the artifact machinery, for `labelgen data index/check`: the stage's plan, slice
    tasks and assembly, into `out_dir`. One slice runs in this process; more run on a pool of
    `workers` processes (default: one per available core), with a progress bar. Writes problems.json
    (always, also when nothing is usable: then raises `NoUsableImages`) and manifest.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    listing, units = plan_index(params, root, out_dir)
    run_units(units, listing.images, workers)
    assemble_index(params.name, out_dir)
    return Manifest.load(out_dir / MANIFEST)


def plan_index(params: DatasetParams, root: Path, out: Path) -> tuple[Listing, list[Unit]]:
    """List the data set into per-slice task inputs under `out` (COCO JSONs read once, element by
    element; nothing of them is kept here), and one unit per slice, whose arguments are paths."""
    sink = SliceWriter(out / _INPUTS, params.index_slice)
    listing = list_dataset(params, root, dataset_splits(params), sink)
    listing.save(out / _LISTING)
    for folder in (_SLICES, _GT):
        (out / folder).mkdir(exist_ok=True)
    units = []
    for i in range(listing.slices):
        first = i * params.index_slice
        label = f"slice {i} (images {first}-{min(first + params.index_slice, listing.images) - 1})"
        units.append(Unit(i, index_slice, (out, i, params.max_image_pixels, params.untagged == "keep"), label))
    return listing, units


def index_slice(out: Path, index: int, max_pixels: int, keep_untagged: bool) -> UnitResult:
    """One index task: validate the items of slice `index` of the index folder `out`; writes its rows
    and problems (`slices/<index>.json`) and its COCO GT shapes (`gt/<index>.cocogt.json`, if any)."""
    listing = Listing.load(out / _LISTING)
    items, raw = read_slice(out / _INPUTS, index)
    problems: list[dict[str, str]] = []
    if listing.coco is not None:
        items = [_with_annotations(item, raw.get(k, []), listing.coco, problems) for k, item in enumerate(items)]
    gt = out / _GT / f"{index:06d}{GT_SUFFIX}"
    gt.unlink(missing_ok=True)  # a rerun writes it anew, or not at all
    records, found = index_items(items, listing.classes, max_pixels, gt, keep_untagged, set(listing.unannotated))
    path = out / _SLICES / f"{index:06d}.json"
    path.write_text(json.dumps({"records": [r.__dict__ for r in records], "problems": problems + found}))
    return [path, *([gt] if gt.is_file() else [])], {"images": len(items), "problems": len(problems + found)}


def _with_annotations(
    item: SourceItem, raw: list[tuple[int, dict]], coco: CocoLabels, problems: list[dict[str, str]]
) -> SourceItem:
    """A COCO item with its labelled annotations; annotations of unknown categories go to `problems`."""
    annotations, skipped = label_annotations(raw, item.split, coco)
    problems += skipped
    return replace(item, coco_annotations=annotations)


def run_units(units: list[Unit], images: int, workers: int | None) -> None:
    """Run index units outside a pipeline, with a progress bar (images). One unit runs in this
    process: starting worker processes would cost more than it."""
    with tqdm(total=images, desc="index", unit="image", disable=len(units) < 2) as bar:
        if len(units) < 2 or workers == 1:
            for unit in units:
                bar.update(unit.fn(*unit.args)[1]["images"])
            return
        context = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        with ProcessPoolExecutor(min(workers or available_cores(), len(units)), mp_context=context) as pool:
            try:
                for future in as_completed([pool.submit(unit.fn, *unit.args) for unit in units]):
                    bar.update(future.result()[1]["images"])
            except BaseException:
                pool.shutdown(cancel_futures=True)  # after a failure, stop the rest rather than let it write on
                raise


def assemble_index(dataset: str, out: Path) -> dict[str, Any]:
    """Write manifest.json and problems.json from the slices' rows and problems, row by row (the
    driver holds each row's id and image path, for the duplicate check), then remove the task
    inputs; returns counts. Raises `NoUsableImages` (after writing problems.json) when no row is usable."""
    listing = Listing.load(out / _LISTING)
    problems, duplicates = list(listing.problems), []
    seen: dict[str, str] = {}  # id -> image
    splits: Counter[str] = Counter()

    def unique_rows() -> Iterator[dict[str, Any]]:
        for i in range(listing.slices):
            data = json.loads((out / _SLICES / f"{i:06d}.json").read_text())
            problems.extend(data["problems"])
            for row in data["records"]:
                if row["id"] in seen:
                    why = f"duplicate image id {row['id']!r} (first: {seen[row['id']]})"
                    duplicates.append(problem(row["image"], why))
                    continue
                seen[row["id"]] = row["image"]
                splits[row["split"]] += 1
                yield row

    write_manifest(out / MANIFEST, dataset, listing.classes, listing.category_ids, unique_rows())
    problems += duplicates
    (out / PROBLEMS).write_text(json.dumps(problems, indent=1))
    shutil.rmtree(out / _INPUTS, ignore_errors=True)
    log_problems(problems, out / PROBLEMS)
    if not seen:
        raise NoUsableImages(
            f"no usable images: every image was left out; see the problems report {out / PROBLEMS} "
            "(or run `labelgen data check`)"
        )
    return {"images": len(seen), "splits": dict(sorted(splits.items())), "problems": len(problems)}


def log_problems(problems: list[dict[str, str]], path: Path) -> None:
    """One log line per kind of problem, with its count and one example; the list is in `path`."""
    for what, count, example in grouped(problems):
        level = logging.WARNING if is_problem(example) else logging.INFO
        if count == 1:  # its own words: a kind's blanks ("N fields", "<file>") stand for several
            log.log(
                level, "index: 1 × %s [%s], %s; list in %s", example["reason"], example["action"], example["file"], path
            )
        else:
            log.log(level, "index: %d × %s, e.g. %s; list in %s", count, what, example["file"], path)


def _plan(ctx: StageContext) -> list[Unit]:
    params: DatasetParams = ctx.params
    root = data_root(params, ctx.artifact.run_dir)
    if params.name == "demo":
        generate_demo(root, params)
    return plan_index(params, root, ctx.artifact.path)[1]


def _finalize(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    info = assemble_index(ctx.params.name, ctx.artifact.path)
    log.info(
        "index: %d images %s, %d problem(s), assembled in %.1fs -> %s",
        info["images"],
        info["splits"],
        info["problems"],
        time.perf_counter() - started,
        ctx.artifact.path / MANIFEST,
    )
    return info


def _key_extra(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """The generated demo set is fully described by its params; a real data set by where it is and
    what it holds now (so an edited data set makes a new index, never a stale one)."""
    params: DatasetParams = recipe["dataset"]
    if params.name == "demo" and not params.root:
        return {"root": ""}
    root = data_root(params, run_dir)
    return {"root": str(root), "data": data_fingerprint(root) if root.is_dir() else None}


def known_classes(recipe: Recipe, run_dir: Path, index: Artifact) -> tuple[str, ...] | None:
    """The run's class list (background first) before its later stages run: the finished index's,
    else where the layout declares it (VOC, demo, a folder's class file). None for COCO-format data
    before its index has run (the categories are in the JSON), and where the data root or the class
    file is missing (the data-root check and the index name those)."""
    if index.is_complete():
        return load_manifest(index).classes
    params: DatasetParams = recipe["dataset"]
    try:
        root = data_root(params, run_dir)
        return declared_classes(params, root) if root.is_dir() else None
    except DataError:
        return None


def check_data_root(recipe: Recipe, run_dir: Path) -> None:
    """The data root exists (the demo set is generated, so it needs none)."""
    params: DatasetParams = recipe["dataset"]
    root = data_root(params, run_dir)
    if not (params.name == "demo" and not params.root) and not root.is_dir():
        raise DataError(f"data root {root} is not a folder; pass --data-root PATH (dataset {params.name!r})")


STAGE = Stage(
    name="index",
    version=3,  # 2: COCO GT kept as shapes (gt/*.cocogt.json), rasterised when read; 3: shapes checked
    # against their image and bbox, manifest schema 4 (category id 0 kept)
    section="dataset",
    inputs=(),
    gpu=False,
    plan=_plan,
    finalize=_finalize,
    outputs=(
        Output("manifest", MANIFEST, "every usable image: path, size, orientation, split, tags, GT"),
        Output("problems", PROBLEMS, "every file left out or converted, with the reason"),
    ),
    key_extra=_key_extra,
    checks=(check_data_root,),
)
