"""Pulled sets: the corrections people made, as `labelgen review pull` / `review import` read them,
kept in the run folder unchanged until the `corrections` stage merges them.

Each pull or import writes one folder `<run>/review/pulled/<UTC time>-<digest>/`: `<n>.png` (H×W
uint8 class-index masks in labelgen's frame of the image, 0 background, 255 ignore) and
`provenance.json` (one entry per mask: image id, file, who, when, where it came from). The folder
is written under a temporary name and renamed, so a set is there whole or not at all; it is never
changed afterwards, so its name (time + digest of its provenance, which holds each mask's sha256)
identifies its content, and the `corrections` stage's key is the list of these names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labelgen.data.fingerprint import file_digest
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.masks import IGNORE_INDEX, read_mask, write_mask
from labelgen.errors import DataError
from labelgen.store.artifact import write_json_atomic

if TYPE_CHECKING:
    from labelgen.pipeline.stage import StageContext

log = logging.getLogger(__name__)

PULLED = Path("review") / "pulled"  # under the run folder
PROVENANCE = "provenance.json"


@dataclass(frozen=True)
class Correction:
    """One image's mask as a person left it."""

    image_id: str  # the manifest row's id
    mask: np.ndarray  # H×W uint8, 0 background, 1..C classes, 255 ignore; H, W the manifest row's
    who: str  # the annotator (Label Studio's e-mail or user id, or the export file's author where known)
    when: str  # ISO 8601 time the annotation was last saved ("" where the file does not say)
    source: str  # where it came from: a Label Studio task/annotation URL or an exported file


def check_correction(c: Correction, record: ImageRecord, num_labels: int, where: str) -> None:
    """`DataError` naming `where` when the mask is not the image's size or holds a label outside 0..C, 255."""
    if c.mask.shape != (record.height, record.width):
        raise DataError(
            f"{where}: mask of {c.image_id} is {c.mask.shape[1]}×{c.mask.shape[0]}, its image "
            f"{record.width}×{record.height} in labelgen's frame; correct the image labelgen sent"
        )
    bad = sorted(set(np.unique(c.mask).tolist()) - {*range(num_labels), IGNORE_INDEX})
    if bad:
        raise DataError(f"{where}: mask of {c.image_id} holds labels {bad}, outside 0..{num_labels - 1} and 255")


def save_pulled(run_dir: Path, corrections: list[Correction], manifest: Manifest, origin: str) -> Path | None:
    """Check each correction against its manifest row and write them as one pulled set; its folder,
    or None when there is nothing to write. Raises `DataError` (nothing written) for an unknown
    image id or a wrong mask."""
    if not corrections:
        log.info("review: nothing to pull from %s", origin)
        return None
    rows = {r.id: r for r in manifest.records}
    for c in corrections:
        if c.image_id not in rows:
            raise DataError(f"{c.source}: image {c.image_id!r} is not in this run's manifest")
        check_correction(c, rows[c.image_id], manifest.num_labels, c.source)
    before = latest_masks(run_dir)
    corrections = [c for c in corrections if c.image_id not in before or not _same(before[c.image_id], c.mask)]
    if not corrections:  # pulling again without new edits changes nothing, so reruns nothing
        log.info("review: no new corrections from %s (every mask equals the one pulled before)", origin)
        return None
    root = Path(run_dir) / PULLED
    tmp = root / f".incoming-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir(parents=True)
    try:
        entries = []
        for n, c in enumerate(corrections):
            name = f"{n:06d}.png"
            write_mask(tmp / name, c.mask)
            entries.append(
                {"image": c.image_id, "file": name, "sha256": file_digest(tmp / name), "who": c.who, "when": c.when}
                | {"source": c.source}
            )
        record = {"origin": origin, "pulled_at": utc_now(), "corrections": entries}
        write_json_atomic(tmp / PROVENANCE, record)
        digest = file_digest(tmp / PROVENANCE)[:12]
        final = root / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{digest}"
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("review: %d corrected masks from %s -> %s", len(corrections), origin, final)
    return final


def latest_masks(run_dir: Path) -> dict[str, Path]:
    """{image id: its latest pulled mask PNG} over every pulled set of the run."""
    latest = {}
    for folder in pulled_sets(run_dir):
        for entry in json.loads((folder / PROVENANCE).read_text())["corrections"]:
            latest[entry["image"]] = folder / entry["file"]
    return latest


def _same(path: Path, mask: np.ndarray) -> bool:
    return bool(np.array_equal(read_mask(path), mask))


def pulled_sets(run_dir: Path) -> list[Path]:
    """The run's pulled sets, oldest first (their names begin with the UTC time)."""
    root = Path(run_dir) / PULLED
    return sorted(p.parent for p in root.glob(f"*/{PROVENANCE}") if not p.parent.name.startswith("."))


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def corrected_masks(ctx: StageContext) -> dict[str, Path]:
    """{image id: corrected mask PNG} of a stage whose inputs hold the `corrections` stage; empty
    without it. Read through the stage's declared output, as every stage reads another's."""
    if "corrections" not in ctx.inputs:
        return {}
    folder = ctx.input_path("corrections", "masks")
    return {p.stem: p for p in sorted(folder.glob("*.png"))}
