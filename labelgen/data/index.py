"""The data-set service: where a data set lives, which splits a run reads, its class list before any
work, and the index's pure work (list a data set into slices, check one slice, assemble the slices
into manifest.json and problems.json). No pipeline here: the `index` stage (labelgen/stages/index.py)
and `labelgen data index/check` (labelgen/pipeline/indexing.py) run these functions as units.

Files under an index folder `out`: `listing.json` (the data set's header), `_inputs/` (per-slice task
inputs, removed once the manifest is written: a COCO JSON is read element by element and each
annotation written to its image's slice, so neither the driver nor the tasks' arguments hold
annotations), `slices/<i>.json` (each task's rows and problems), `gt/<i>.cocogt.json` (COCO: each
image's usable annotation shapes, rasterised when a stage reads the GT: `labelgen.data.masks.gt_mask`),
`gt/<i>.<n>.png` (colour masks decoded against the data set's labelmap.txt, as class indices),
`manifest.json` (see data_manifests/manifest.schema.json), `problems.json` (every file left out or
converted, with the reason).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from labelgen.config import DatasetParams, Recipe
from labelgen.data.coco_gt import GT_SUFFIX
from labelgen.data.colours import DeclaredColours
from labelgen.data.manifest import write_manifest
from labelgen.data.masks import IGNORE_INDEX
from labelgen.data.problems import describe, grouped, is_problem, problem
from labelgen.data.slices import SliceWriter, read_slice
from labelgen.data.sources import (
    CocoLabels,
    Listing,
    SourceItem,
    declared_classes,
    label_annotations,
    list_dataset,
)
from labelgen.data.validate import decoded_masks, index_items
from labelgen.errors import DataError

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
    """The splits a run indexes and predicts: the train split, then the val split if any."""
    return [params.train_split] + ([params.val_split] if params.val_split else [])


def check_data_root(recipe: Recipe, run_dir: Path) -> None:
    """The data root exists (the demo set is generated, so it needs none)."""
    params: DatasetParams = recipe["dataset"]
    root = data_root(params, run_dir)
    if not (params.name == "demo" and not params.root) and not root.is_dir():
        raise DataError(f"data root {root} is not a folder; pass --data-root PATH (dataset {params.name!r})")


def declared_run_classes(recipe: Recipe, run_dir: Path) -> tuple[str, ...] | None:
    """The class list (background first) where the layout declares it apart from its images (VOC,
    demo, a folder's class file), before any index has run. None for COCO-format data (the
    categories are in the JSON), and where the data root or the class file is missing (the data-root
    check and the index name those)."""
    params: DatasetParams = recipe["dataset"]
    if params.name in ("voc", "demo"):  # fixed lists: known before the data root exists (the demo's is generated)
        return declared_classes(params, run_dir)
    try:
        root = data_root(params, run_dir)
        return declared_classes(params, root) if root.is_dir() else None
    except DataError:
        return None


def list_into_slices(params: DatasetParams, root: Path, out: Path) -> tuple[Listing, list[tuple[str, tuple]]]:
    """List the data set into per-slice task inputs under `out` (COCO JSONs read once, element by
    element; nothing of them is kept here); returns the listing and, per slice, its label and the
    arguments of `index_slice` (paths and numbers only)."""
    sink = SliceWriter(out / _INPUTS, params.index_slice)
    listing = list_dataset(params, root, dataset_splits(params), sink)
    listing.save(out / _LISTING)
    for folder in (_SLICES, _GT):
        (out / folder).mkdir(exist_ok=True)
    tasks = []
    for i in range(listing.slices):
        first = i * params.index_slice
        label = f"slice {i} (images {first}-{min(first + params.index_slice, listing.images) - 1})"
        tasks.append((label, (out, i, params.max_image_pixels, params.untagged == "keep")))
    return listing, tasks


def index_slice(out: Path, index: int, max_pixels: int, keep_untagged: bool) -> tuple[list[Path], dict[str, Any]]:
    """One index task: validate the items of slice `index` of the index folder `out`; writes its rows
    and problems (`slices/<index>.json`) and its COCO GT shapes (`gt/<index>.cocogt.json`, if any).
    Returns (the files written, {"images": items checked, "problems": count})."""
    listing = Listing.load(out / _LISTING)
    items, raw = read_slice(out / _INPUTS, index)
    problems: list[dict[str, str]] = []
    if listing.coco is not None:
        items = [_with_annotations(item, raw.get(k, []), listing.coco, problems) for k, item in enumerate(items)]
    gt = out / _GT / f"{index:06d}{GT_SUFFIX}"
    for stale in [gt, *decoded_masks(gt)]:  # a rerun writes them anew, or not at all
        stale.unlink(missing_ok=True)
    declared = (
        None
        if listing.labelmap is None
        else DeclaredColours.read(Path(listing.labelmap), listing.classes, IGNORE_INDEX)
    )
    records, found = index_items(
        items, listing.classes, max_pixels, gt, keep_untagged, set(listing.unannotated), declared
    )
    path = out / _SLICES / f"{index:06d}.json"
    path.write_text(json.dumps({"records": [r.__dict__ for r in records], "problems": problems + found}))
    written = [path, *([gt] if gt.is_file() else []), *decoded_masks(gt)]
    return written, {"images": len(items), "problems": len(problems + found)}


def _with_annotations(
    item: SourceItem, raw: list[tuple[int, dict]], coco: CocoLabels, problems: list[dict[str, str]]
) -> SourceItem:
    """A COCO item with its labelled annotations; annotations of unknown categories go to `problems`."""
    annotations, skipped = label_annotations(raw, item.split, coco)
    problems += skipped
    return replace(item, coco_annotations=annotations)


def assemble_index(dataset: str, out: Path) -> dict[str, Any]:
    """Write manifest.json and problems.json from the slices' rows and problems, row by row (the
    driver holds each row's id and image path, for the duplicate check), then remove the task
    inputs; returns counts. Raises `NoUsableImages` (after writing problems.json) when no row is usable."""
    listing = Listing.load(out / _LISTING)
    problems, duplicates = list(listing.problems), []
    seen: dict[str, tuple[str, str]] = {}  # id -> (image, split)
    splits: Counter[str] = Counter()

    def unique_rows() -> Iterator[dict[str, Any]]:
        for i in range(listing.slices):
            data = json.loads((out / _SLICES / f"{i:06d}.json").read_text())
            problems.extend(data["problems"])
            for row in data["records"]:
                if row["id"] in seen:
                    first, split = seen[row["id"]]
                    if first == row["image"]:
                        again = f"split {split!r}, then split {row['split']!r}"
                        why = f"listed twice ({again}); the second is left out: remove it"
                    else:
                        why = f"image id {row['id']!r} is also the id of {first}; rename one of the files"
                    duplicates.append(problem(row["image"], why))
                    continue
                seen[row["id"]] = (row["image"], row["split"])
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
    """One log line per kind of problem, with its count and one example (`describe`'s line, its
    paths said once); then where the whole list is, once."""
    kinds = grouped(problems)
    for what, count, example in kinds:
        level = logging.WARNING if is_problem(example) else logging.INFO
        if count == 1:  # its own words: a kind's blanks ("N fields", "<file>") stand for several
            log.log(level, "index: 1 × %s", describe(example))
        else:
            log.log(level, "index: %d × %s, e.g. %s", count, what, example["file"])
    if kinds:
        log.info("index: every problem, one line each: %s (or `labelgen data check`)", path)
