"""evaluate: score every mask-producing artifact of the run against GT -> metrics.json + report.md.

Streaming: one task per (source, shard) returns a confusion matrix (saved as .npy); nothing keeps
images or predictions in memory, so memory stays flat however large the data set is.
Sources: `cams` (argmax after a background threshold, no CRF; swept over thresholds), `pseudo_labels`
(CRF labels), and `predict` (one source per split).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from labelgen.cam import cam_to_labels, resize_maps
from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.masks import gt_mask
from labelgen.metrics import confusion_matrix, scores
from labelgen.pipeline.stage import Stage, StageContext, Unit, UnitResult
from labelgen.stages.index import load_manifest
from labelgen.store.sharded import ImageArrays
from labelgen.viz import bar_chart, colourise, overlay, overlay_grid

log = logging.getLogger(__name__)

METRICS = "metrics.json"
REPORT = "report.md"


def mask_sources(ctx: StageContext) -> dict[str, Path]:
    """Every zarr store this run has to score, by source name."""
    sources = {}
    if "export_cams" in ctx.inputs:
        sources["cams"] = ctx.inputs["export_cams"].path / "cams.zarr"
    if "pseudo_labels" in ctx.inputs:
        sources["pseudo_labels"] = ctx.inputs["pseudo_labels"].path / "masks.zarr"
    if "predict" in ctx.inputs:
        for store in sorted(ctx.inputs["predict"].path.glob("masks_*.zarr")):
            sources[f"predict_{store.stem.removeprefix('masks_')}"] = store
    return sources


def cam_thresholds(ctx: StageContext) -> tuple[float, ...]:
    """The sweep, plus the recipe's own background threshold (the one pseudo_labels uses)."""
    return tuple(sorted({*ctx.params.sweep_thresholds, ctx.recipe["pseudo_labels"].bg_threshold}))


def score_shard(
    store: Path, rows: range, records: list[ImageRecord], num_labels: int, thresholds: tuple[float, ...], out: Path
) -> UnitResult:
    """Confusion matrices of one shard: (T, L, L) for CAMs (one per threshold), else (1, L, L)."""
    arrays = ImageArrays(store)
    count = len(thresholds) if arrays.kind == "cams" else 1
    cm = np.zeros((count, num_labels, num_labels), np.int64)
    scored = 0
    for r, stored in zip(records, arrays.rows(rows.start, rows.stop), strict=True):
        if r.mask is None:
            continue
        gt = gt_mask(r)
        if arrays.kind == "cams":
            maps, labels = stored
            maps = resize_maps(maps, gt.shape)
            for j, t in enumerate(thresholds):
                cm[j] += confusion_matrix(gt, cam_to_labels(maps, labels, t), num_labels)
        else:
            cm[0] += confusion_matrix(gt, stored, num_labels)
        scored += 1
    np.save(out, cm)
    return [out], {"scored": scored}


def _records_of(store: Path, by_id: dict[str, ImageRecord]) -> tuple[ImageArrays, list[ImageRecord]]:
    arrays = ImageArrays(store)
    return arrays, [by_id[i] for i in arrays.ids]


def _plan(ctx: StageContext) -> list[Unit]:
    manifest = load_manifest(ctx.inputs["index"])
    by_id = {r.id: r for r in manifest.records}
    parts = ctx.artifact.path / "parts"
    parts.mkdir(exist_ok=True)
    units = []
    shard_size = ctx.recipe["export_cams"].shard_size
    thresholds = cam_thresholds(ctx)
    for name, store in mask_sources(ctx).items():
        _arrays, records = _records_of(store, by_id)
        for start in range(0, len(records), shard_size):
            rows = range(start, min(start + shard_size, len(records)))
            out = parts / f"{name}_{start // shard_size:06d}.npy"
            args = (store, rows, records[rows.start : rows.stop], manifest.num_classes, thresholds, out)
            units.append(Unit(len(units), score_shard, args, f"{name} images {rows.start}-{rows.stop - 1}"))
    return units


def _finalize(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    manifest = load_manifest(ctx.inputs["index"])
    out = ctx.artifact.path
    metrics: dict[str, Any] = {"classes": list(manifest.classes)}
    bg = ctx.recipe["pseudo_labels"].bg_threshold
    thresholds = cam_thresholds(ctx)
    for name in mask_sources(ctx):
        cm = sum(np.load(f) for f in sorted((out / "parts").glob(f"{name}_*.npy")))
        scored = sum(r["scored"] for r in records if r["label"].startswith(name + " "))
        if name == "cams":
            sweep = [{"threshold": float(t), "miou": scores(c)["miou"]} for t, c in zip(thresholds, cm, strict=True)]
            at = thresholds.index(bg)
            metrics[name] = {
                **scores(cm[at]),
                "threshold": bg,
                "sweep": sweep,
                "images": scored,
            }
        else:
            metrics[name] = {**scores(cm[0]), "images": scored}
    (out / METRICS).write_text(json.dumps(metrics, indent=1))
    write_report(ctx, manifest, metrics, out)
    summary = {k: round(v["miou"], 4) for k, v in metrics.items() if isinstance(v, dict)}
    log.info("evaluate: mIoU %s -> %s", summary, out / REPORT)
    return {"miou": summary}


def write_report(ctx: StageContext, manifest: Manifest, metrics: dict[str, Any], out: Path) -> None:
    classes = metrics["classes"]
    sources = [k for k in metrics if k != "classes"]
    lines = ["# labelgen evaluation report", "", f"Run folder: `{ctx.artifact.run_dir}`", ""]
    train_cam = ctx.inputs.get("train_cam")
    lines += ["| source | images | mIoU | pixel accuracy |", "|---|---|---|---|"]
    for s in sources:
        m = metrics[s]
        lines.append(f"| {s} | {m['images']} | {100 * m['miou']:.2f} | {100 * m['pixel_accuracy']:.2f} |")
    if "cams" in metrics:
        lines += [
            "",
            (
                f"CAM mIoU (no CRF) is at background threshold {metrics['cams']['threshold']}. "
                "Threshold sweep (chosen with pixel GT, reported only; the recipe's threshold is what is used):"
            ),
            "",
            "| threshold | " + " | ".join(f"{e['threshold']:.2f}" for e in metrics["cams"]["sweep"]) + " |",
            "|---|" + "---|" * len(metrics["cams"]["sweep"]),
            "| mIoU | " + " | ".join(f"{100 * e['miou']:.2f}" for e in metrics["cams"]["sweep"]) + " |",
        ]
    if train_cam is not None and train_cam.is_complete():
        lines += ["", f"CAM checkpoint selection: {train_cam.success().get('selection', 'n/a')}."]
    bar_chart(classes, {s: metrics[s]["iou"] for s in sources}, out / "per_class_iou.png")
    lines += [
        "",
        "## Per-class IoU",
        "",
        "![per-class IoU](per_class_iou.png)",
        "",
        "| class | " + " | ".join(f"{s} IoU / P / R" for s in sources) + " |",
        "|---|" + "---|" * len(sources),
    ]
    for c, name in enumerate(classes):
        cells = [" / ".join(_pct(metrics[s][k][c]) for k in ("iou", "precision", "recall")) for s in sources]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if _overlays(ctx, manifest, out / "overlays.png"):
        lines += ["", "## Overlays", "", "![overlays](overlays.png)"]
    (out / REPORT).write_text("\n".join(lines) + "\n")


def _pct(v: float) -> str:
    return "–" if math.isnan(v) else f"{100 * v:.1f}"


def _overlays(ctx: StageContext, manifest: Manifest, path: Path) -> bool:
    """Image / GT / each mask source, for the first few train images that have GT."""
    by_id = {r.id: r for r in manifest.records}
    stores = {name: ImageArrays(s) for name, s in mask_sources(ctx).items() if name != "cams"}
    train = [name for name, a in stores.items() if a.attrs.get("split") == ctx.recipe["dataset"].train_split]
    if not train:
        return False
    ids = [i for i in stores[train[0]].ids if by_id[i].mask][: ctx.params.overlays]
    rows = []
    for image_id in ids:
        r = by_id[image_id]
        image = read_image(r.image, ctx.recipe["dataset"].max_image_pixels, r.orientation)
        row = [image, colourise(gt_mask(r))]
        row += [overlay(image, stores[n].mask(stores[n].ids.index(image_id))) for n in train]
        rows.append(row)
    if rows:
        overlay_grid(rows, ["image", "GT", *train], path)
    return bool(rows)


def _key_extra(recipe, run_dir: Path) -> dict[str, Any]:
    """The CAM scores use pseudo_labels' background threshold even in runs that stop at export_cams."""
    return {"bg_threshold": recipe["pseudo_labels"].bg_threshold}


STAGE = Stage(
    name="evaluate",
    version=1,
    section="evaluate",
    inputs=("index", "train_cam", "export_cams", "pseudo_labels", "predict"),
    gpu=False,
    plan=_plan,
    finalize=_finalize,
    key_extra=_key_extra,
)
