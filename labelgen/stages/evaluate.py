"""evaluate: what can be known about every mask artifact of the run, with GT where some exists and
without GT everywhere -> metrics.json, per_image.csv, report.md, report.html and their pictures.

Streaming: one task per run of `evaluate.shard_size` images of one split reads every mask store of
that split (`cams`, `pseudo_labels`, `predict_<split>`), the GT masks it has and the images, and
writes three small parts: confusion matrices (.npz), one small record per image (.json) and the
images' gallery rows (.html, with thumbnails). The reduce sums the matrices, streams the records,
and copies the gallery rows into report.html in rank order: nothing holds more than a shard of
images, and the reduce keeps one short ranking entry per image.

GT of an image: a person's correction where the run has one (the `corrections` input: that image
counts as GT, is scored against it and marked "corrected"), else its GT mask where it has one.

Sources scored against GT: `cams` (argmax after a background threshold, no CRF; swept over
thresholds), `pseudo_labels` (CRF labels) and `predict_<split>`. Without GT (`labelgen.numerics.quality`):
tagged classes found, foreground share, pseudo-label/prediction agreement, classifier confidence.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from labelgen.config import EvaluateParams
from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.masks import gt_mask, read_mask
from labelgen.data.problems import NOT_SCORED
from labelgen.models.cam_inference import load_cam_model
from labelgen.models.weaktr import WeakTr
from labelgen.numerics.maps_to_labels import cam_to_labels, resize_maps
from labelgen.numerics.metrics import cam_threshold_sweep, confusion_matrix, image_miou, scores, tag_agreement
from labelgen.numerics.quality import SplitTally, image_quality, mean_confidence, rank_key
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult
from labelgen.report.html import GalleryRow, gallery_row, write_html
from labelgen.report.markdown import (
    UNRESTRICTED_SUFFIX,
    RankEntry,
    gt_sources,
    per_image_row,
    report_sections,
    source_title,
    write_charts,
    write_markdown,
    write_per_image_csv,
)
from labelgen.report.pictures import data_uri, heatmap, overlay, overlay_grid, shrink_image, shrink_mask, thumbnail_size
from labelgen.review.pulled import corrected_masks
from labelgen.store.artifact import standard_json
from labelgen.store.sharded import ImageArrays

log = logging.getLogger(__name__)

METRICS = "metrics.json"
REPORT = "report.md"
REPORT_HTML = "report.html"
PER_IMAGE = "per_image.csv"
PARTS = "parts"


@dataclass(frozen=True)
class ShardJob:
    """One evaluate task: a run of images of one split and every mask store that holds that split."""

    split: str
    records: tuple[ImageRecord, ...]
    start: int  # row of records[0] in every store of `stores` (they all follow the manifest's split order)
    stores: dict[str, Path]  # source name -> zarr store, in pipeline order (cams, pseudo_labels, predict_<split>)
    pair: tuple[str, str] | None  # (pseudo_labels, predict_<train split>): the GT-free agreement, where both exist
    cam_model: Path | None  # train_cam's model.pt: the classifier's confidence on the tags
    confidence_size: int  # pixels: the image is resized to this square for the confidence (train_cam.input_size)
    classes: tuple[str, ...]
    thresholds: tuple[float, ...]  # CAM background thresholds scored against GT
    bg_threshold: float  # the recipe's threshold: CAM label maps of the per-image numbers
    thumbnail: int  # pixels, longer side of a gallery picture
    not_scored: dict[str, str]  # image id -> why the index did not score its GT mask
    corrected: dict[str, Path]  # image id -> a person's corrected mask (PNG): its GT from now on
    max_pixels: int
    out: Path  # parts/<unit>: the task writes <out>.npz, <out>.json and <out>.html


def split_sources(ctx: StageContext) -> dict[str, dict[str, Path]]:
    """{split: {source: store}}, every zarr store this run has to score, in pipeline order: `cams`
    and `pseudo_labels` hold the train split; `predict_<s>` split s, preceded by
    `predict_<s>_unrestricted` where predict.restrict_to_tags kept split s within its tags (so that
    `predict_<s>`, the masks people export, is each image's final mask)."""
    train = ctx.recipe["dataset"].train_split
    out: dict[str, dict[str, Path]] = {}
    if "export_cams" in ctx.inputs:
        out.setdefault(train, {})["cams"] = ctx.input_path("export_cams", "cams")
    if "pseudo_labels" in ctx.inputs:
        out.setdefault(train, {})["pseudo_labels"] = ctx.input_path("pseudo_labels", "masks")
    if "predict" in ctx.inputs:
        raw = ctx.input_paths("predict", "unrestricted")
        for split, store in ctx.input_paths("predict", "masks").items():
            if split in raw:
                out.setdefault(split, {})[f"predict_{split}{UNRESTRICTED_SUFFIX}"] = raw[split]
            out.setdefault(split, {})[f"predict_{split}"] = store
    return out


def cam_thresholds(ctx: StageContext) -> tuple[float, ...]:
    """The sweep, plus the recipe's own background threshold (the one pseudo_labels uses)."""
    return tuple(sorted({*ctx.params.sweep_thresholds, ctx.recipe["pseudo_labels"].bg_threshold}))


def gt_not_scored(problems: Path, manifest: Manifest) -> tuple[dict[str, str], list[dict[str, str]]]:
    """({image id: reason}, every entry of the index's problems.json) for images the index kept without
    their GT (action "kept; GT not scored"): a mask that contradicts the tags, of another size, mostly ignore."""
    entries = [e for e in json.loads(problems.read_text()) if e["action"] == NOT_SCORED]
    by_path = {str(Path(r.image).resolve()): r.id for r in manifest.records}
    reasons = {by_path[p]: e["reason"] for e in entries if (p := str(Path(e["file"]).resolve())) in by_path}
    return reasons, entries


def _jobs(ctx: StageContext, manifest: Manifest | None = None) -> list[ShardJob]:
    """Every task of this evaluation, in unit order; `finalize` rebuilds the same list to find the parts
    (passing the manifest it has read: at a million images one read is 1.5 GB and 10 CPU seconds)."""
    p: EvaluateParams = ctx.params
    manifest = manifest or Manifest.load(ctx.input_path("index", "manifest"))
    not_scored, _ = gt_not_scored(ctx.input_path("index", "problems"), manifest)
    corrected = corrected_masks(ctx)
    train = ctx.recipe["dataset"].train_split
    cam_model = ctx.input_path("train_cam", "model") if "train_cam" in ctx.inputs else None
    template = ShardJob(
        split="",
        records=(),
        start=0,
        stores={},
        pair=None,
        cam_model=cam_model,
        confidence_size=ctx.recipe["train_cam"].input_size,
        classes=manifest.classes,
        thresholds=cam_thresholds(ctx),
        bg_threshold=ctx.recipe["pseudo_labels"].bg_threshold,
        thumbnail=p.thumbnail,
        not_scored={},
        corrected={},
        max_pixels=ctx.recipe["dataset"].max_image_pixels,
        out=Path(),
    )
    jobs = []
    for split, stores in split_sources(ctx).items():
        records = manifest.split(split)
        for store in stores.values():
            if ImageArrays(store).ids != [r.id for r in records]:
                raise AssertionError(f"{store} does not hold split {split!r} in manifest order")
        pair = ("pseudo_labels", f"predict_{train}")
        pair = pair if split == train and set(pair) <= set(stores) else None
        for start in range(0, len(records), p.shard_size):
            chunk = tuple(records[start : start + p.shard_size])
            jobs.append(
                replace(
                    template,
                    split=split,
                    records=chunk,
                    start=start,
                    stores=stores,
                    pair=pair,
                    not_scored={r.id: not_scored[r.id] for r in chunk if r.id in not_scored and r.id not in corrected},
                    corrected={r.id: corrected[r.id] for r in chunk if r.id in corrected},
                    out=ctx.artifact.path / PARTS / f"{len(jobs):06d}",
                )
            )
    return jobs


@functools.lru_cache(maxsize=1)
def cpu_cam_model(path: Path, mtime_ns: int) -> WeakTr:
    """train_cam's model on the CPU, loaded once per worker process (every shard task of a run asks
    for the same file; building the ViT costs seconds). The file's mtime is part of the cache key."""
    return load_cam_model(path, torch.device("cpu"))


@torch.no_grad()
def tag_confidence(model: WeakTr, image: np.ndarray, tags: tuple[int, ...], size: int) -> list[float]:
    """The CAM network's confidence in each of an image's tags: sigmoid of the logits of its coarse
    CAM head (the pooled class maps the CAMs are made from, trained on the tags), for the whole
    H×W×3 uint8 image resized to size×size (the training crop size), in float32 on the model's
    device. One value in [0, 1] per tag.

    Not the class-token logits: on short trainings they lag far behind (demo recipe: tagged vs
    untagged classes ranked right 59% of the time by the class tokens, 96% by the CAM head)."""
    square = np.array(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    x = torch.from_numpy(square).permute(2, 0, 1)[None].to(next(model.parameters()).device)
    logits = model(x).coarse_logits[0].float()  # C
    return [float(torch.sigmoid(logits[t - 1])) for t in tags]


def label_maps(stored: dict[str, Any], size: tuple[int, int], bg_threshold: float) -> dict[str, np.ndarray]:
    """Each source's H×W label map of one image; CAMs at the recipe's background threshold."""
    out = {}
    for name, value in stored.items():
        if name == "cams":
            maps, labels = value
            out[name] = cam_to_labels(resize_maps(maps, size), labels, bg_threshold)
        else:
            out[name] = value
    return out


def score_against_gt(
    gt: np.ndarray, stored: dict[str, Any], labels: dict[str, np.ndarray], job: ShardJob, cms: dict[str, np.ndarray]
) -> dict[str, float | None]:
    """Add one image to the shard's confusion matrices (CAMs at every threshold); its mIoU per source."""
    num = len(job.classes)
    ious = {}
    for name, value in stored.items():
        if name == "cams":
            maps, cam_labels = value
            sweep = cam_threshold_sweep(gt, resize_maps(maps, gt.shape), cam_labels, job.thresholds, num)
            cms[name] += sweep
            ious[name] = image_miou(sweep[job.thresholds.index(job.bg_threshold)])
        else:
            cm = confusion_matrix(gt, labels[name], num)
            cms[name][0] += cm
            ious[name] = image_miou(cm)
    return ious


def _row_pictures(
    image: np.ndarray, stored: dict[str, Any], labels: dict[str, np.ndarray], gt: np.ndarray | None, thumb: int
) -> tuple[str, list[tuple[int, str]], dict[str, str]]:
    """Data URIs of one gallery row: the photo, (label, heat map) per stored CAM, an overlay per label
    map and one of the GT, each at most `thumb` pixels on its longer side."""
    size = thumbnail_size(*image.shape[:2], thumb)
    small = shrink_image(image, size)
    cams = []
    if "cams" in stored:
        maps, cam_labels = stored["cams"]
        cams = [(int(c), data_uri(heatmap(small, m))) for c, m in zip(cam_labels, resize_maps(maps, size), strict=True)]
    masks = {name: data_uri(overlay(small, shrink_mask(m, size))) for name, m in labels.items() if name != "cams"}
    if gt is not None:
        masks["gt"] = data_uri(overlay(small, shrink_mask(gt, size)))
    return data_uri(small), cams, masks


@dataclass
class ShardTotals:
    """What one task adds up over its images: confusion matrices against GT and between the pair."""

    cms: dict[str, np.ndarray]  # source -> (T, L, L) for cams (one per threshold), else (1, L, L)
    agreement: np.ndarray  # L, L: rows the pair's first source, columns its second
    scored: int = 0  # images with GT


def image_gt(job: ShardJob, r: ImageRecord) -> np.ndarray | None:
    """The H×W uint8 GT an image is scored against: its correction, else its GT mask, else None."""
    if r.id in job.corrected:
        return read_mask(job.corrected[r.id])
    return gt_mask(r) if r.mask else None


def evaluate_image(
    job: ShardJob, r: ImageRecord, stored: dict[str, Any], cam_net: WeakTr | None, totals: ShardTotals
) -> tuple[dict[str, Any], str]:
    """One image: add it to `totals`; return its record and its gallery row."""
    num = len(job.classes)
    image = read_image(r.image, job.max_pixels, r.orientation)
    labels = label_maps(stored, image.shape[:2], job.bg_threshold)
    gt = image_gt(job, r)
    ious = score_against_gt(gt, stored, labels, job, totals.cms) if gt is not None else {}
    totals.scored += gt is not None
    confidence = None
    if cam_net is not None:
        confidence = tag_confidence(cam_net, image, r.tags, job.confidence_size)
    record = image_quality(r, job.split, labels, num, confidence, ious)
    record["corrected"] = r.id in job.corrected
    if job.pair:
        pair_cm = confusion_matrix(labels[job.pair[0]], labels[job.pair[1]], num)
        totals.agreement += pair_cm
        record["agreement"] = tag_agreement(pair_cm, r.tags)
    record["score"], record["rank"] = rank_key(record)
    photo, cams, masks = _row_pictures(image, stored, labels, gt, job.thumbnail)
    return record, gallery_row(GalleryRow(record, photo, cams, masks, job.not_scored.get(r.id)), job.classes)


def evaluate_shard(job: ShardJob) -> UnitResult:
    """The dask task: confusion matrices, per-image records and gallery rows of one shard's images,
    written to <job.out>.npz, .json and .html (each record holds its row's byte offset and length)."""
    num = len(job.classes)
    stop = job.start + len(job.records)
    blocks = {name: ImageArrays(path).rows(job.start, stop) for name, path in job.stores.items()}
    cms = {name: np.zeros((len(job.thresholds) if name == "cams" else 1, num, num), np.int64) for name in job.stores}
    totals = ShardTotals(cms, np.zeros((num, num), np.int64))
    cam_net = cpu_cam_model(job.cam_model, job.cam_model.stat().st_mtime_ns) if job.cam_model else None
    records = []
    with job.out.with_suffix(".html").open("wb") as rows_file:
        for j, r in enumerate(job.records):
            record, row = evaluate_image(job, r, {n: b[j] for n, b in blocks.items()}, cam_net, totals)
            fragment = row.encode("utf-8")
            record["offset"], record["length"] = rows_file.tell(), len(fragment)
            rows_file.write(fragment)
            records.append(record)
    np.savez(job.out.with_suffix(".npz"), agreement=totals.agreement, **totals.cms)
    job.out.with_suffix(".json").write_text(json.dumps(records))
    files = [job.out.with_suffix(s) for s in (".npz", ".json", ".html")]
    return files, {"images": len(job.records), "scored": totals.scored}


def _plan(ctx: StageContext) -> list[Unit]:
    (ctx.artifact.path / PARTS).mkdir(exist_ok=True)
    return [
        Unit(k, evaluate_shard, (job,), f"{job.split} images {job.start}-{job.start + len(job.records) - 1}")
        for k, job in enumerate(_jobs(ctx))
    ]


@dataclass
class Reduced:
    """The parts of every task, added up: per source confusion matrices, per split tallies, the ranking."""

    cms: dict[str, np.ndarray] = field(default_factory=dict)
    agreement: dict[str, np.ndarray] = field(default_factory=dict)  # split -> L, L
    tallies: dict[str, SplitTally] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)  # split -> images with GT
    corrected: dict[str, int] = field(default_factory=dict)  # split -> of those, corrected by people
    ranking: list[RankEntry] = field(default_factory=list)


def reduce_parts(jobs: list[ShardJob], num_labels: int) -> Reduced:
    """Read the parts task by task (one shard's records at a time) and add them up; sort the ranking."""
    out = Reduced()
    for k, job in enumerate(jobs):
        with np.load(job.out.with_suffix(".npz")) as parts:
            for name in job.stores:
                out.cms[name] = out.cms.get(name, 0) + parts[name]
            if job.pair:
                out.agreement[job.split] = out.agreement.get(job.split, 0) + parts["agreement"]
        tally = out.tallies.setdefault(job.split, SplitTally(num_labels))
        for rec in json.loads(job.out.with_suffix(".json").read_text()):
            tally.add(rec)
            out.scored[job.split] = out.scored.get(job.split, 0) + rec["gt"]
            out.corrected[job.split] = out.corrected.get(job.split, 0) + rec["corrected"]
            conf = mean_confidence(rec)
            conf = 1.0 if conf is None else conf
            out.ranking.append(RankEntry(rec["rank"], conf, rec["split"], rec["id"], k, rec["offset"], rec["length"]))
    out.ranking.sort()
    return out


# Why a source gets no mIoU although images were scored: a GT with no object pixel at all (every
# image untagged, e.g. a COCO export whose "annotations" list is empty, kept as negatives) gives
# background IoU alone, which reads 100 % for an all-background prediction.
NO_OBJECTS = (
    "not scored: no scored image has a tagged object (every GT mask is all background), so an mIoU "
    "would measure background alone; check the tags and the index's problems.json"
)


def gt_scores(cm: np.ndarray) -> dict[str, Any]:
    """`scores` of an L×L confusion matrix (rows = GT), with `miou` None and `not_scored` saying
    why when no GT pixel holds a foreground label."""
    result = scores(cm)
    if not cm[1:].sum():
        result.update(miou=None, not_scored=NO_OBJECTS)
    return result


def build_metrics(
    manifest: Manifest, jobs: list[ShardJob], reduced: Reduced, not_scored: list[dict[str, str]], ctx: StageContext
) -> dict[str, Any]:
    """metrics.json: per source GT scores (as before), `gt` (how much GT there was), `gt_free` per split."""
    thresholds = cam_thresholds(ctx)
    bg = ctx.recipe["pseudo_labels"].bg_threshold
    split_of = {name: job.split for job in jobs for name in job.stores}
    sizes = {split: len(manifest.split(split)) for split in reduced.tallies}
    metrics: dict[str, Any] = {"classes": list(manifest.classes)}
    for name, cm in reduced.cms.items():
        counts = {"images": reduced.scored.get(split_of[name], 0), "of": sizes[split_of[name]]}
        if name == "cams":
            sweep = [{"threshold": float(t), "miou": gt_scores(c)["miou"]} for t, c in zip(thresholds, cm, strict=True)]
            metrics[name] = {**gt_scores(cm[thresholds.index(bg)]), "threshold": bg, "sweep": sweep, **counts}
        else:
            metrics[name] = {**gt_scores(cm[0]), **counts}
    metrics["gt"] = {
        "images": sizes,
        "scored": {split: reduced.scored.get(split, 0) for split in sizes},
        "corrected": {split: reduced.corrected.get(split, 0) for split in sizes},
        "not_scored_by_index": len(not_scored),
        "not_scored": [{"file": e["file"], "reason": e["reason"]} for e in not_scored[:100]],
    }
    metrics["gt_free"] = {}
    for split, tally in reduced.tallies.items():
        metrics["gt_free"][split] = tally.result(reduced.agreement.get(split))
        pair = next((job.pair for job in jobs if job.split == split and job.pair), None)
        if pair and "agreement" in metrics["gt_free"][split]:
            metrics["gt_free"][split]["agreement"]["between"] = list(pair)
    return metrics


def worst_overlays(jobs: list[ShardJob], ranking: list[RankEntry], count: int, path: Path) -> bool:
    """overlays.png for report.md: image, GT and every label map of the `count` worst images."""
    chosen = ranking[:count]
    if not chosen:
        return False
    sources = list(dict.fromkeys(s for e in chosen for s in jobs[e.part].stores if s != "cams")) or ["cams"]
    rows = []
    for e in chosen:
        job = jobs[e.part]
        j = [r.id for r in job.records].index(e.image_id)
        r = job.records[j]
        image = read_image(r.image, job.max_pixels, r.orientation)
        stored = {n: ImageArrays(p).rows(job.start + j, job.start + j + 1)[0] for n, p in job.stores.items()}
        labels = label_maps(stored, image.shape[:2], job.bg_threshold)
        gt = image_gt(job, r)
        gt = overlay(image, gt) if gt is not None else None
        rows.append([image, gt, *(overlay(image, labels[s]) if s in labels else None for s in sources)])
    overlay_grid(rows, ["image (worst first)", "GT", *(source_title(s) for s in sources)], path)
    return True


def per_image_rows(jobs: list[ShardJob], ranking: list[RankEntry], classes: list[str]):
    """per_image.csv rows in manifest order, each with its place in the worst-first order."""
    position = {(e.split, e.image_id): n for n, e in enumerate(ranking, start=1)}
    for job in jobs:
        for rec in json.loads(job.out.with_suffix(".json").read_text()):
            yield per_image_row(position[(rec["split"], rec["id"])], rec, classes)


def _finalize(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    out = ctx.artifact.path
    manifest = Manifest.load(ctx.input_path("index", "manifest"))
    jobs = _jobs(ctx, manifest)
    _, not_scored = gt_not_scored(ctx.input_path("index", "problems"), manifest)
    reduced = reduce_parts(jobs, manifest.num_labels)
    metrics = build_metrics(manifest, jobs, reduced, not_scored, ctx)
    (out / METRICS).write_text(json.dumps(standard_json(metrics), indent=1, allow_nan=False))  # null, not NaN
    write_per_image_csv(out / PER_IMAGE, per_image_rows(jobs, reduced.ranking, metrics["classes"]))
    train_cam = ctx.inputs.get("train_cam")
    selection = train_cam.success().get("selection") if train_cam is not None and train_cam.is_complete() else None
    sections = report_sections(metrics, write_charts(metrics, out), selection, ctx.recipe["pseudo_labels"].bg_threshold)
    overlays = worst_overlays(jobs, reduced.ranking, ctx.params.overlays, out / "overlays.png")
    write_markdown(out / REPORT, ctx.artifact.run_dir, sections, overlays)
    write_html(
        out / REPORT_HTML,
        ctx.artifact.run_dir,
        sections,
        manifest.classes,
        reduced.ranking,
        out / PARTS,
        ctx.params.gallery_page,
        ctx.params.gallery_inline,
    )
    summary = {
        k: round(metrics[k]["miou"], 4)
        for k in gt_sources(metrics)
        if metrics[k]["images"] and metrics[k]["miou"] is not None
    }
    unscored = [k for k in gt_sources(metrics) if metrics[k].get("not_scored")]
    if unscored:
        log.warning("evaluate: %s %s", ", ".join(unscored), NO_OBJECTS)
    if summary:
        log.info("evaluate: mIoU %s -> %s", summary, out / REPORT_HTML)
    elif not unscored:  # a user's own set without masks: say so rather than log an mIoU of nan
        log.info("evaluate: no image has GT, so no mIoU; the GT-free report -> %s", out / REPORT_HTML)
    return {"miou": summary, "images": len(reduced.ranking)}


def _key_extra(recipe, run_dir: Path) -> dict[str, Any]:
    """The CAM scores use pseudo_labels' background threshold even in runs that stop at export_cams;
    the confidence uses train_cam's crop size."""
    return {"bg_threshold": recipe["pseudo_labels"].bg_threshold, "confidence_size": recipe["train_cam"].input_size}


STAGE = Stage(
    name="evaluate",
    version=3,  # 2: GT-free quality, per-image records, report.html gallery, solid overlays; 3: corrections
    section="evaluate",
    inputs=("index", "train_cam", "export_cams", "pseudo_labels", "corrections", "predict"),
    gpu=False,
    plan=_plan,
    finalize=_finalize,
    outputs=(
        Output("metrics", METRICS, "every score, per source and split"),
        Output("report", REPORT, "the Markdown report"),
        Output("report_html", REPORT_HTML, "the HTML report with the worst-first gallery"),
        Output("per_image", PER_IMAGE, "one row per image and source"),
    ),
    key_extra=_key_extra,
)
