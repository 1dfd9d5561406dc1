"""index: scan a data set, validate every image, read tags and GT masks -> manifest + problems.

Output: `manifest.json` (see data_manifests/manifest.schema.json), `problems.json` (every file left
out or converted, with the reason), `gt_masks/` (COCO masks rasterised from the JSON).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from labelgen.config import DatasetParams, Recipe
from labelgen.data.demo import generate_demo
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.problems import grouped, is_problem, problem
from labelgen.data.sources import SourceItem, list_dataset
from labelgen.data.validate import index_items
from labelgen.errors import DataError
from labelgen.pipeline.stage import Stage, StageContext, Unit, UnitResult
from labelgen.store.artifact import Artifact

log = logging.getLogger(__name__)


class NoUsableImages(DataError):
    """Every image of the data set was left out; problems.json says why for each."""


MANIFEST = "manifest.json"
PROBLEMS = "problems.json"
_LISTING = "listing.json"


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
    return Manifest.load(index.path / MANIFEST)


def index_dataset(params: DatasetParams, root: Path, out_dir: Path) -> Manifest:
    """Index without the artifact machinery, for `labelgen data index/check`: same code, one process.
    Writes problems.json (always, also when nothing is usable) and manifest.json into `out_dir`."""
    listing = list_dataset(params, root, dataset_splits(params))
    gt_dir = out_dir / "gt_masks"
    gt_dir.mkdir(parents=True, exist_ok=True)
    results = [
        index_items(s, listing.classes, params.max_image_pixels, gt_dir)
        for s in _slices(listing.items, params.index_slice)
    ]
    records = [r for recs, _ in results for r in recs]
    problems = listing.problems + [p for _, probs in results for p in probs]
    return _assemble(params.name, listing.classes, listing.category_ids, records, problems, out_dir)


def log_problems(problems: list[dict[str, str]], path: Path) -> None:
    """One log line per kind of problem, with its count and one example; the list is in `path`."""
    for what, count, example in grouped(problems):
        level = logging.WARNING if is_problem(example) else logging.INFO
        log.log(level, "index: %d × %s, e.g. %s; list in %s", count, what, example["file"], path)


def _slices(items: list[SourceItem], size: int) -> list[list[SourceItem]]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def _assemble(
    dataset: str,
    classes: tuple[str, ...],
    category_ids: tuple[int, ...] | None,
    records: list[ImageRecord],
    problems: list[dict[str, str]],
    out: Path,
) -> Manifest:
    seen: dict[str, ImageRecord] = {}
    for r in records:
        if r.id in seen:
            problems.append(problem(r.image, f"duplicate image id {r.id!r} (first: {seen[r.id].image})"))
        else:
            seen[r.id] = r
    out.mkdir(parents=True, exist_ok=True)
    (out / PROBLEMS).write_text(json.dumps(problems, indent=1))
    if not seen:
        raise NoUsableImages(
            f"no usable images: every image was left out; see the problems report {out / PROBLEMS} "
            "(or run `labelgen data check`)"
        )
    manifest = Manifest(dataset=dataset, classes=classes, records=tuple(seen.values()), category_ids=category_ids)
    manifest.save(out / MANIFEST)
    return manifest


def _index_slice(
    items: list[SourceItem], classes: tuple[str, ...], max_pixels: int, gt_dir: Path, out: Path
) -> UnitResult:
    records, problems = index_items(items, classes, max_pixels, gt_dir)
    out.write_text(json.dumps({"records": [r.__dict__ for r in records], "problems": problems}))
    return [out], {"images": len(items), "problems": len(problems)}


def _plan(ctx: StageContext) -> list[Unit]:
    params: DatasetParams = ctx.params
    root = data_root(params, ctx.artifact.run_dir)
    if params.name == "demo":
        generate_demo(root, params)
    listing = list_dataset(params, root, dataset_splits(params))
    out = ctx.artifact.path
    (out / _LISTING).write_text(
        json.dumps({"classes": listing.classes, "category_ids": listing.category_ids, "problems": listing.problems})
    )
    (out / "gt_masks").mkdir(exist_ok=True)
    (out / "slices").mkdir(exist_ok=True)
    units = []
    for i, items in enumerate(_slices(listing.items, params.index_slice)):
        args = (
            items,
            listing.classes,
            params.max_image_pixels,
            out / "gt_masks",
            out / "slices" / f"{i:06d}.json",
        )
        units.append(Unit(i, _index_slice, args, f"slice {i} ({len(items)} images)"))
    return units


def _finalize(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    out = ctx.artifact.path
    listing = json.loads((out / _LISTING).read_text())
    rows, problems = [], list(listing["problems"])
    for path in sorted((out / "slices").glob("*.json")):
        data = json.loads(path.read_text())
        rows += [ImageRecord(**{**r, "tags": tuple(r["tags"])}) for r in data["records"]]
        problems += data["problems"]
    ids = listing["category_ids"]
    manifest = _assemble(ctx.params.name, tuple(listing["classes"]), ids and tuple(ids), rows, problems, out)
    log_problems(problems, out / PROBLEMS)
    counts = {s: len(manifest.split(s)) for s in manifest.splits}
    log.info("index: %d images %s, %d problem(s) -> %s", len(manifest.records), counts, len(problems), out / MANIFEST)
    return {"images": len(manifest.records), "splits": counts, "problems": len(problems)}


def _key_extra(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    params: DatasetParams = recipe["dataset"]
    # the generated demo set is fully described by its params; a real data set by where it is
    return {"root": "" if params.name == "demo" and not params.root else str(data_root(params, run_dir))}


def check_data_root(recipe: Recipe, run_dir: Path) -> None:
    """The data root exists (the demo set is generated, so it needs none)."""
    params: DatasetParams = recipe["dataset"]
    root = data_root(params, run_dir)
    if not (params.name == "demo" and not params.root) and not root.is_dir():
        raise DataError(f"data root {root} is not a folder; pass --data-root PATH (dataset {params.name!r})")


STAGE = Stage(
    name="index",
    version=1,
    section="dataset",
    inputs=(),
    gpu=False,
    plan=_plan,
    finalize=_finalize,
    key_extra=_key_extra,
    checks=(check_data_root,),
)
