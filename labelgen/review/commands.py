"""`labelgen review push | pull | import`: the library functions the CLI calls."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from labelgen.data.manifest import Manifest
from labelgen.formats.images import FORMAT_OF_SUFFIX, export_image
from labelgen.review.brush import mask_to_results
from labelgen.review.files import ImageMatcher, labelstudio_task_corrections, read_corrections
from labelgen.review.labelstudio import (
    FROM_NAME,
    TO_NAME,
    LabelStudio,
    LabelStudioError,
    labeling_config,
    read_mapping,
)
from labelgen.review.pulled import Correction, save_pulled, utc_now
from labelgen.review.queue import review_queue
from labelgen.review.run import open_run
from labelgen.store.artifact import write_json_atomic
from labelgen.store.sharded import ImageArrays

log = logging.getLogger(__name__)

PUSHED = Path("review") / "pushed"  # under the run folder: <project id>.json, which task is which image


def default_project(run_dir: Path) -> str:
    return f"labelgen {Path(run_dir).resolve().name}"


def push(run_dir: Path, k: int, server: LabelStudio, project: str | None = None) -> dict[str, Any]:
    """Send the `k` images of the train split that most need a person (`review_queue`), each with
    its current mask as a pre-annotation, to a Label Studio project (created where it does not
    exist; images it already holds are not sent again). Returns {project, url, tasks, sent}."""
    run = open_run(run_dir)
    manifest = run.manifest()
    rows = run.per_image()
    what, store = run.current_masks()
    title = project or default_project(run_dir)
    project_id = server.find_project(title)
    if project_id is None:
        project_id = server.create_project(title, labeling_config(manifest.classes), f"labelgen {what}")
    record_path = run_dir / PUSHED / f"{project_id}.json"
    mapping = read_mapping(record_path).get("tasks", {})
    sent_before = set(mapping.values())
    queue = review_queue([r for r in rows if r["id"] not in sent_before], run.train_split, k)
    arrays = ImageArrays(store)
    position = {image_id: i for i, image_id in enumerate(arrays.ids)}
    records = {r.id: r for r in manifest.records}
    max_pixels = run.recipe["dataset"].max_image_pixels
    with tempfile.TemporaryDirectory(prefix="labelgen-review-") as tmp:
        for row in queue:
            r = records[row["id"]]
            fmt = FORMAT_OF_SUFFIX.get(Path(r.image).suffix.lower(), "png")
            # labelgen's frame (EXIF orientation applied), which the masks are in
            image = Path(tmp) / f"{r.id}.{fmt}"
            export_image(Path(r.image), r.orientation, image, fmt, max_pixels)
            task = server.add_task(project_id, image)
            mask = arrays.mask(position[r.id])
            results = mask_to_results(mask, manifest.classes, FROM_NAME, TO_NAME)
            server.add_prediction(task, results, f"labelgen {what}", float(row["gt_free_score"]))
            mapping[str(task)] = r.id
            log.info("review: sent %s (GT-free score %s) as task %d", r.id, row["gt_free_score"], task)
    write_json_atomic(
        record_path,
        {"project": project_id, "title": title, "url": server.url, "masks": what, "tasks": mapping, "at": utc_now()},
    )
    return {"project": project_id, "title": title, "sent": [row["id"] for row in queue], "tasks": len(mapping)}


def pull(run_dir: Path, server: LabelStudio, project: str | None = None) -> dict[str, Any]:
    """Read every task of the project that people annotated and keep the corrections in the run as a
    new pulled set (nothing is written when no mask changed). Returns {project, corrections, set}."""
    run = open_run(run_dir)
    manifest = run.manifest()
    title = project or default_project(run_dir)
    project_id = server.find_project(title)
    if project_id is None:
        raise LabelStudioError(f"Label Studio at {server.url} has no project {title!r}; push first, or pass --project")
    mapping = read_mapping(run_dir / PUSHED / f"{project_id}.json").get("tasks", {})
    emails = server.user_emails()
    corrections = labelstudio_corrections(server.export(project_id), manifest, mapping, server, project_id, emails)
    folder = save_pulled(run_dir, corrections, manifest, f"{server.url} project {project_id} ({title})")
    return {"project": project_id, "corrections": len(corrections), "set": str(folder) if folder else None}


def labelstudio_corrections(
    tasks: list[dict[str, Any]],
    manifest: Manifest,
    mapping: dict[str, str],
    server: LabelStudio,
    project: int,
    emails: dict[int, str],
) -> list[Correction]:
    """The corrections of a project's exported tasks: images by the push record's task ids, else by
    file name; annotators by e-mail where the server lists users."""
    matcher, rows, out = ImageMatcher(manifest), {r.id: r for r in manifest.records}, []
    for task in tasks:
        link = server.task_link(project, int(task["id"]))
        image_id = mapping.get(str(task["id"]))
        record = rows[image_id] if image_id in rows else matcher.find(str(task.get("data", {}).get("image")), link)
        c = labelstudio_task_corrections(task, record, manifest.classes, link)
        if c is None:
            continue
        who = emails.get(int(c.who), c.who) if c.who.isdigit() else c.who
        out.append(Correction(c.image_id, c.mask, who, c.when, c.source))
    return out


def import_files(run_dir: Path, path: Path, fmt: str) -> dict[str, Any]:
    """Keep the corrections of an exported file or folder in the run as a new pulled set."""
    manifest = open_run(run_dir).manifest()
    corrections = read_corrections(path, fmt, manifest)
    folder = save_pulled(run_dir, corrections, manifest, f"{fmt} {path}")
    return {"corrections": len(corrections), "set": str(folder) if folder else None}
