"""corrections: the masks people corrected (`labelgen review pull` / `review import`), merged into
one artifact that `train_decoder` trains on in place of those images' pseudo-labels and `evaluate`
scores against as GT.

Part of a run only where the run folder holds pulled sets (`<run>/review/pulled/`, see
`labelgen.review.pulled`) and `corrections.use` is on; runs without them keep their keys. Its key
is the names of the pulled sets (each names its content), so a new pull reruns this stage and what
depends on it (train_decoder, predict, evaluate), nothing upstream. Where two sets correct the same
image, the later one wins.

Outputs: `corrected_masks/<image id>.png` (VOC-palette class-index PNGs in labelgen's frame of the
image) and `provenance.json` ({image id: {who, when, source, set}} of the correction used).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from labelgen.config import CorrectionsParams, Recipe
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult
from labelgen.review.pulled import PROVENANCE, pulled_sets
from labelgen.store.artifact import write_json_atomic

MASKS = "corrected_masks"  # the folder of masks


def merge_pulled(sets: list[Path], out: Path) -> UnitResult:
    """The dask task: copy each image's latest correction into `out/corrected_masks/` and write provenance.json."""
    latest: dict[str, dict[str, Any]] = {}
    for folder in sets:  # oldest first: a later set's mask of an image replaces an earlier one's
        for entry in json.loads((folder / PROVENANCE).read_text())["corrections"]:
            latest[entry["image"]] = {**entry, "set": folder.name, "path": str(folder / entry["file"])}
    masks = out / MASKS
    masks.mkdir(exist_ok=True)
    files = []
    for image_id, entry in latest.items():
        target = masks / f"{image_id}.png"
        shutil.copyfile(entry.pop("path"), target)
        files.append(target)
    provenance = {image_id: {k: e[k] for k in ("who", "when", "source", "set")} for image_id, e in latest.items()}
    write_json_atomic(out / PROVENANCE, provenance)
    return [*files, out / PROVENANCE], {"images": len(latest), "sets": len(sets)}


def _plan(ctx: StageContext) -> list[Unit]:
    sets = pulled_sets(ctx.artifact.run_dir)
    return [Unit(0, merge_pulled, (sets, ctx.artifact.path), f"{len(sets)} pulled set(s)")]


def _finalize(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"images": records[0]["images"], "sets": records[0]["sets"]}


def _key_extra(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """Each pulled set's folder name: its time and the digest of its provenance (mask checksums)."""
    return {"pulled": [p.name for p in pulled_sets(run_dir)]}


def _present(recipe: Recipe, run_dir: Path) -> bool:
    params: CorrectionsParams = recipe["corrections"]
    return params.use and bool(pulled_sets(run_dir))


STAGE = Stage(
    name="corrections",
    version=1,
    section="corrections",
    inputs=("index",),
    gpu=False,
    plan=_plan,
    finalize=_finalize,
    outputs=(
        Output("masks", MASKS, "<image id>.png: the latest correction of each corrected image"),
        Output("provenance", PROVENANCE, "who corrected each image, when, and where it came from"),
    ),
    key_extra=_key_extra,
    present=_present,
)
