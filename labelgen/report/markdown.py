"""The evaluation report's content, once: sections of sentences, tables and charts built from
metrics.json, rendered as report.md here and as report.html by `labelgen.report.html`; plus
per_image.csv and the overlay grid of the worst images."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from labelgen.report.pictures import bar_chart

SOURCE_TITLES = {"cams": "CAM labels", "pseudo_labels": "pseudo-label", "gt": "GT"}
# a split's raw predictions, where predict.restrict_to_tags kept its masks within the tags
UNRESTRICTED_SUFFIX = "_unrestricted"


def source_title(name: str) -> str:
    """What the gallery calls a source: `predict_val` -> `prediction (val)`,
    `predict_train_unrestricted` -> `prediction (train, not restricted to tags)` (tables use the
    metrics.json names)."""
    if name.startswith("predict_") and name.endswith(UNRESTRICTED_SUFFIX):
        return f"prediction ({name.removeprefix('predict_').removesuffix(UNRESTRICTED_SUFFIX)}, not restricted to tags)"
    if name.startswith("predict_"):
        return f"prediction ({name.removeprefix('predict_')})"
    return SOURCE_TITLES.get(name, name)


class RankEntry(NamedTuple):
    """One image's place in the gallery: sorted ascending, worst first (ties: less confident first)."""

    rank: float  # mIoU against GT where the image has GT, else its GT-free score
    confidence: float  # mean classifier confidence on its tags (1.0 where unknown)
    split: str
    image_id: str
    part: int  # the evaluate unit whose parts hold its record and gallery row
    offset: int  # byte offset of its gallery row in the unit's .html part
    length: int


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    scroll: bool = False  # long tables (one row per class) scroll in report.html

    def markdown(self) -> list[str]:
        lines = ["| " + " | ".join(self.header) + " |", "|---" * len(self.header) + "|"]
        return lines + ["| " + " | ".join(row) + " |" for row in self.rows]


class Chart(NamedTuple):
    alt: str
    name: str  # PNG file beside the report


@dataclass(frozen=True)
class Section:
    """A titled run of blocks: sentences (plain text), tables and charts, in reading order."""

    title: str
    blocks: list[str | Table | Chart] = field(default_factory=list)


def pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def gt_sources(metrics: dict[str, Any]) -> list[str]:
    """The sources scored against GT, in pipeline order (the top-level entries with an mIoU)."""
    return [k for k, v in metrics.items() if isinstance(v, dict) and "miou" in v]


def coverage_paragraphs(metrics: dict[str, Any]) -> list[str]:
    """How much GT the run had: images scored per split, and the GT the index refused, with reasons."""
    gt = metrics["gt"]
    per_split = ", ".join(f"{s} {gt['scored'][s]} of {gt['images'][s]}" for s in gt["images"])
    total = sum(gt["scored"].values())
    if total:
        lines = [f"Scored against GT: {total} of {sum(gt['images'].values())} images ({per_split})."]
        corrected = sum(gt.get("corrected", {}).values())
        if corrected:
            lines.append(
                f"Of these, {corrected} were corrected by people (labelgen review): their corrections are their GT, "
                'and the gallery and per_image.csv mark them "corrected".'
            )
    else:
        lines = [f"No image of this run has a GT mask ({per_split}): nothing is scored against GT."]
    for source in gt_sources(metrics):
        if metrics[source].get("not_scored"):
            lines.append(f"{source_title(source)}: {metrics[source]['not_scored']}.")
    refused = gt["not_scored_by_index"]
    if refused:
        lines.append(
            f"The index kept {refused} image(s) without scoring their GT mask "
            '(problems.json, action "kept; GT not scored"):'
        )
        lines += [f"{e['file']}: {e['reason']}" for e in gt["not_scored"][:10]]
        if refused > 10:
            lines.append(f"... and {refused - 10} more in the index artifact's problems.json.")
    return lines


def gt_table(metrics: dict[str, Any]) -> Table:
    rows = []
    for s in gt_sources(metrics):
        m = metrics[s]
        rows.append([s, f"{m['images']} of {m['of']}", pct(m["miou"]), pct(m["pixel_accuracy"])])
    return Table(["source", "images scored", "mIoU", "pixel accuracy"], rows)


def sweep_table(metrics: dict[str, Any]) -> Table:
    sweep = metrics["cams"]["sweep"]
    return Table(["threshold", *(f"{e['threshold']:.2f}" for e in sweep)], [["mIoU", *(pct(e["miou"]) for e in sweep)]])


def _per_class_sources(sources: list[str]) -> list[str]:
    """The sources of the per-class tables: a restricted split's raw masks are in the summaries only
    (its per-class numbers are the restricted masks' but for the excluded classes)."""
    return [s for s in sources if not s.endswith(UNRESTRICTED_SUFFIX)]


def gt_class_table(metrics: dict[str, Any]) -> Table:
    sources = _per_class_sources(gt_sources(metrics))
    rows = []
    for c, name in enumerate(metrics["classes"]):
        cells = [" / ".join(pct(metrics[s][k][c]) for k in ("iou", "precision", "recall")) for s in sources]
        rows.append([name, *cells])
    return Table(["class", *(f"{s} IoU / P / R" for s in sources)], rows, scroll=True)


def gt_free_summary(metrics: dict[str, Any]) -> Table:
    """One row per split: confidence, tags found and foreground share of its final mask, agreement."""
    rows = []
    for split, m in metrics["gt_free"].items():
        final = list(m["sources"])[-1]
        src = m["sources"][final]
        agreement = m.get("agreement")
        rows.append(
            [
                split,
                str(m["images"]),
                final,
                f"{src['all_tags_found']} of {m['tagged_images']}"
                + (f" ({pct(src['all_tags_found'] / m['tagged_images'])}%)" if m["tagged_images"] else ""),
                pct(src["foreground"]),
                pct(src.get("negative_foreground")),
                pct(m["mean_confidence"]),
                "–" if m["mean_confidence"] is None else str(m["low_confidence_images"]),
                pct(agreement["miou"]) if agreement else "–",
                pct(agreement["mean_image"]) if agreement else "–",
            ]
        )
    header = [
        "split",
        "images",
        "final mask",
        "tagged images with every tag found",
        "foreground %",
        "negatives painted %",
        "confidence on tags",
        "images with a tag below 0.5",
        "agreement mIoU",
        "mean image agreement",
    ]
    return Table(header, rows)


def gt_free_class_table(metrics: dict[str, Any], split: str) -> Table:
    """One row per foreground class: tagged images, confidence, found / area / spurious per source, agreement."""
    m = metrics["gt_free"][split]
    sources = _per_class_sources(list(m["sources"]))
    header = ["class", "tagged images", "confidence"]
    for s in sources:
        header += [f"{s}: found", "area %", "untagged"]
    agreement = m.get("agreement")
    if agreement:
        header.append("agreement IoU")
    rows = []
    for c in range(1, len(metrics["classes"])):
        row = [metrics["classes"][c], str(m["tagged"][c]), pct(m["confidence"][c]) if m["confidence"] else "–"]
        for s in sources:
            src = m["sources"][s]
            found = f"{src['found'][c]} ({pct(src['found_share'][c])}%)"
            row += [found, pct(src["area_share"][c]), str(src["spurious"][c])]
        if agreement:
            row.append(pct(agreement["iou"][c]))
        rows.append(row)
    return Table(header, rows, scroll=True)


GT_FREE_MEANING = [
    "Without GT: found = tagged images whose mask holds the class at all; area % = its mean share of "
    "those images' pixels; untagged = images whose mask holds the class though their tags do not name it; "
    "confidence = the CAM network's class score for the tag (sigmoid of its CAM head's pooled logit; whole "
    "image at the training crop size).",
    "Agreement = IoU between the pseudo-labels and the retrained decoder's predictions on the train split "
    "(a proxy for quality used in the WSSS literature: the decoder learns what is consistent in the "
    "pseudo-labels). The GT-free score of an image is its agreement (a tagged class lost by both counts 0), "
    "or, where there are no predictions, the share of its tags its mask holds; for an image without tags "
    "(a negative), the background share of its final mask.",
]


def write_charts(metrics: dict[str, Any], out: Path) -> dict[str, Chart]:
    """per_class_iou.png (where something was scored against GT) and per_class_gt_free.png, by kind."""
    charts = {}
    names = metrics["classes"]
    if sum(metrics["gt"]["scored"].values()):
        ious = {source_title(s): metrics[s]["iou"] for s in _per_class_sources(gt_sources(metrics))}
        bar_chart(names, ious, out / "per_class_iou.png")
        charts["gt"] = Chart("per-class IoU against GT", "per_class_iou.png")
    series: dict[str, list] = {}
    for split, m in metrics["gt_free"].items():
        for s in _per_class_sources(list(m["sources"])):
            series[f"found: {source_title(s)}"] = m["sources"][s]["found_share"][1:]
        if m.get("agreement"):
            series[f"agreement IoU ({split})"] = m["agreement"]["iou"][1:]
        if m["confidence"]:
            series[f"confidence ({split})"] = m["confidence"][1:]
    if series:
        bar_chart(names[1:], dict(list(series.items())[:6]), out / "per_class_gt_free.png")
        charts["gt_free"] = Chart("per-class numbers without GT", "per_class_gt_free.png")
    return charts


def report_sections(
    metrics: dict[str, Any], charts: dict[str, Chart], selection: str | None, bg_threshold: float
) -> list[Section]:
    """The report's content, shared by report.md and report.html."""
    gt = Section("Against ground truth", list(coverage_paragraphs(metrics)))
    if sum(metrics["gt"]["scored"].values()):
        gt.blocks.append(gt_table(metrics))
        if "cams" in metrics and metrics["cams"]["images"]:
            gt.blocks.append(
                f"CAM mIoU (no CRF) is at background threshold {bg_threshold}. Threshold sweep (chosen with "
                "pixel GT, reported only; the recipe's threshold is what is used):"
            )
            gt.blocks.append(sweep_table(metrics))
        gt.blocks.extend([gt_class_table(metrics), charts["gt"]])
    if selection:
        gt.blocks.append(f"CAM checkpoint selection: {selection}.")
    free = Section("Without ground truth", [*GT_FREE_MEANING, gt_free_summary(metrics)])
    free.blocks.extend(gt_free_class_table(metrics, split) for split in metrics["gt_free"])
    if "gt_free" in charts:
        free.blocks.append(charts["gt_free"])
    return [gt, free]


def write_markdown(path: Path, run_dir: Path, sections: list[Section], overlays: bool) -> None:
    lines = ["# labelgen evaluation report", "", f"Run folder: `{run_dir}`", ""]
    lines += ["Every image, worst first, with its CAMs and masks: [report.html](report.html)", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += block.markdown()
            elif isinstance(block, Chart):
                lines.append(f"![{block.alt}]({block.name})")
            else:
                lines.append(block)
            lines.append("")
    if overlays:
        lines += ["## Worst images", "", "![overlays](overlays.png)", ""]
    path.write_text("\n".join(lines))


PER_IMAGE_FIELDS = [
    "rank",
    "id",
    "split",
    "tags",
    "gt_iou",
    "gt",  # "corrected" (scored against a person's correction), "mask" (its own GT mask) or ""
    "gt_free_score",
    "agreement",
    "confidence",
    "tags_found",
]


def per_image_row(position: int, record: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """One row of per_image.csv: position in the worst-first order (1 = worst) and the image's numbers."""
    final = record["final"]
    iou = record["iou"].get(final) if record["gt"] else None
    conf = record["confidence"]
    return {
        "rank": position,
        "id": record["id"],
        "split": record["split"],
        "tags": ";".join(classes[t] for t in record["tags"]),
        "gt_iou": "" if iou is None else f"{iou:.4f}",
        "gt": "corrected" if record.get("corrected") else ("mask" if record["gt"] else ""),
        "gt_free_score": f"{record['score']:.4f}",
        "agreement": "" if record["agreement"] is None else f"{record['agreement']:.4f}",
        "confidence": "" if conf is None else ";".join(f"{v:.3f}" for v in conf),
        "tags_found": f"{sum(record['found'][final])}/{len(record['tags'])}",
    }


def write_per_image_csv(path: Path, rows: Any) -> None:
    """per_image.csv from an iterable of `per_image_row` dicts, written as they come."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, PER_IMAGE_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
