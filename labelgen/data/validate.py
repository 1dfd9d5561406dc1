"""Validation of source items into manifest rows: the work of one `index` task.

Per image: check the file (a broken one is left out; see `inspect_image` for what is checked without
decoding), decide its orientation (which frame, stored pixels or EXIF-oriented, the annotations were
drawn on), check its GT (COCO annotations, kept as shapes and rasterised when a stage reads them; or
a mask file) against the tags. What is decided and why goes into problems.json, one line each;
nothing is decided silently.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from labelgen.data.coco_gt import GT_SUFFIX, check_coco, gt_reference, write_gt_file
from labelgen.data.colours import DeclaredColours
from labelgen.data.fingerprint import file_digest
from labelgen.data.images import ImageInfo, inspect_image
from labelgen.data.manifest import ImageRecord
from labelgen.data.masks import IGNORE_INDEX, read_user_mask, tags_from_mask, value_counts, write_mask
from labelgen.data.problems import CONVERTED, NOT_ORIENTED, NOT_SCORED, ORIENTED, problem
from labelgen.data.sources import SourceItem
from labelgen.errors import DataError

# A user mask more than this share "ignore" (255) carries almost no labels: most likely its object
# value is 255 (binary 0/255 exports). Such GT is reported and not scored.
MOSTLY_IGNORE = 0.5


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def choose_orientation(info: ImageInfo, annotated: tuple[int, int] | None, what: str) -> tuple[int, str | None]:
    """The EXIF orientation to apply (1 = stored pixels) so the image has the `annotated` (width,
    height) of its annotations or mask, and a note saying what was decided, if anything was.

    Without an annotated size, or where both frames have it (square images, flips, 180° turns), the
    EXIF orientation is applied, as OpenCV, mmcv and detectron2 do when they read the file. Raises
    `DataError` when neither frame has the annotated size. `what` names the annotations in messages.
    """
    tag = info.exif_orientation
    raw, upright = info.size(1), info.size(tag)
    if annotated is not None and annotated not in (raw, upright):
        turned = f" ({_wh(upright)} after its EXIF orientation {tag})" if tag != 1 else ""
        raise DataError(
            f"image is {_wh(raw)}{turned} but {what} is {_wh(annotated)}; they were made for another "
            "image: re-export the annotations for this file or replace the file"
        )
    if tag == 1:
        return 1, None
    if annotated is None or annotated == upright:
        why = "no annotated size to compare" if annotated is None else f"{what} has the oriented size"
        if annotated is not None and annotated == raw:
            why = f"{what} fits both frames ({_wh(raw)}); the EXIF tag decides, as OpenCV/mmcv/detectron2 read it"
        return tag, f"EXIF orientation {tag}: stored {_wh(raw)} turned upright to {_wh(upright)} ({why})"
    return 1, (
        f"EXIF orientation {tag}, but {what} ({_wh(annotated)}) matches the stored pixels, not the upright "
        f"{_wh(upright)}: labelgen uses the stored pixels (exports write them without the tag); OpenCV/mmcv "
        "would turn this file, so strip its EXIF orientation tag to make every tool agree"
    )


def mask_disagreements(counts: np.ndarray, tags: tuple[int, ...], classes: tuple[str, ...]) -> str | None:
    """Why a user's GT mask (given by its `value_counts`) contradicts the image's tags, with the likely
    cause; None if it agrees.

    Checked: tagged classes with no pixel, classes in the mask the tags do not name, a mask mostly
    ignore (255). Binary masks (values 0/255, a common export) get the remapping hint."""
    present = {v for v in np.flatnonzero(counts) if v not in (0, IGNORE_INDEX)}
    missing = sorted(set(tags) - present)
    extra = sorted(present - set(tags))
    ignore_share = counts[IGNORE_INDEX] / counts.sum()
    reasons = []
    if missing:
        reasons.append(f"no pixel of tagged {_names(missing, classes)}")
    if extra:
        reasons.append(f"pixels of {_names(extra, classes)} which the tags do not name")
    if ignore_share > MOSTLY_IGNORE:
        reasons.append(f"{100 * ignore_share:.0f}% of its pixels are {IGNORE_INDEX} (ignore)")
    if not reasons:
        return None
    hint = ""
    if counts[IGNORE_INDEX] and not present:
        target = f"class {tags[0]} ({classes[tags[0]]})" if len(tags) == 1 else "its class index"
        hint = f"; values 0/{IGNORE_INDEX}: is {IGNORE_INDEX} your object? remap it to {target}"
    elif missing and extra:
        hint = "; mask values must be class indices in class-list order (1 = the first class)"
    return "GT mask has " + ", ".join(reasons) + hint


def _names(labels: list[int], classes: tuple[str, ...]) -> str:
    return ", ".join(f"{classes[v]!r} ({v})" if v < len(classes) else str(v) for v in labels)


def index_items(
    items: list[SourceItem],
    classes: tuple[str, ...],
    max_pixels: int,
    gt_file: Path,
    keep_untagged: bool = False,
    unannotated: set[str] = frozenset(),
    declared: DeclaredColours | None = None,
) -> tuple[list[ImageRecord], list[dict[str, str]]]:
    """Validate each item; return manifest rows for the good ones and a problem for each bad one
    (and a note for each image kept with a decision: conversion, orientation, GT not scored).
    Items of the `unannotated` splits (a COCO JSON without annotations, named once by the lister)
    get no line of their own for having no tags; they are kept or left out as the others.
    The usable COCO shapes of the rows with complete COCO GT go into `gt_file` (written only if
    there are any); their `mask` refers to their entry there. Colour masks are decoded against
    `declared` (the data set's labelmap.txt) where it is given, and written as class-index PNGs
    beside `gt_file` (`decoded_masks`), which their rows' `mask` names."""
    records, problems, shapes = [], [], {}
    gt_file = gt_file.resolve()
    for n, item in enumerate(items):
        notes: list[tuple[str, str]] = []
        try:
            decoded = decoded_mask_path(gt_file, n) if declared is not None else None
            record, coco = _index_one(item, classes, max_pixels, gt_reference(gt_file, n), notes, declared, decoded)
        except DataError as e:
            problems.append(problem(item.image, str(e).removeprefix(f"{item.image}: "), where=item.where))
            continue
        problems += [problem(item.image, reason, action, item.where) for reason, action in notes]
        if not record.tags and not keep_untagged:
            if item.split not in unannotated:
                why = "no image-level tags; set dataset.untagged=keep to train on untagged images as negatives"
                problems.append(problem(item.image, why, where=item.where))
            continue
        if item.split in unannotated:  # no annotations is no GT, not an all-background GT
            record, coco = replace(record, mask=None), None
        records.append(record)
        if coco is not None:
            shapes[n] = (record.height, record.width, coco)
    if shapes:
        write_gt_file(gt_file, shapes)
    return records, problems


def decoded_mask_path(gt_file: Path, n: int) -> Path:
    """Where item `n` of the slice whose COCO GT file is `gt_file` keeps its decoded colour mask."""
    return gt_file.with_name(f"{gt_file.name.removesuffix(GT_SUFFIX)}.{n}.png")


def decoded_masks(gt_file: Path) -> list[Path]:
    """The decoded colour masks of the slice whose COCO GT file is `gt_file`."""
    return sorted(gt_file.parent.glob(f"{gt_file.name.removesuffix(GT_SUFFIX)}.*.png"))


def _index_one(
    item: SourceItem,
    classes: tuple[str, ...],
    max_pixels: int,
    gt_ref: str,
    notes: list[tuple[str, str]],
    declared: DeclaredColours | None,
    decoded_path: Path | None,
) -> tuple[ImageRecord, list[dict[str, Any]] | None]:
    """The manifest row of one item, and its usable COCO shapes where its COCO GT is complete
    (the row's `mask` is then `gt_ref`; a colour mask decoded with `declared` is written to
    `decoded_path`, and the row's `mask` names that file)."""
    info = inspect_image(item.image, max_pixels)
    if info.converted:
        notes.append((info.converted, CONVERTED))
    tags, mask_path, mask, coco = item.tags, item.mask, None, None
    if item.coco_annotations is not None:
        orientation, note = choose_orientation(info, item.annotated_size, "the JSON's width×height")
        width, height = info.size(orientation)
        gt = check_coco(item.coco_annotations, height, width)
        notes += gt.notes
        tags = gt.tags
        coco = gt.shapes if gt.complete else None
    else:
        if mask_path is not None:
            try:
                mask, decoded = read_user_mask(mask_path, classes, declared)
            except DataError as e:
                if tags is None:  # the mask was the only source of tags
                    raise
                notes.append((str(e), NOT_SCORED))  # the action says the image trains without GT
                mask_path = None
            else:
                if decoded:
                    notes.append((decoded, CONVERTED))
                    if declared is not None:  # later reads see class indices, not colours
                        decoded_path.parent.mkdir(parents=True, exist_ok=True)
                        write_mask(decoded_path, mask)
                        mask_path = decoded_path
        try:
            annotated = None if mask is None else (mask.shape[1], mask.shape[0])
            orientation, note = choose_orientation(info, annotated, f"its mask {mask_path}")
        except DataError as e:
            if tags is None:  # the mask was the only source of tags
                raise
            orientation, note = choose_orientation(info, None, "")
            notes.append((str(e), NOT_SCORED))  # the action says the image trains without GT
            mask, mask_path = None, None
    if note:
        notes.append((note, ORIENTED if orientation != 1 else NOT_ORIENTED))
    if mask is not None:
        mask_path, tags = _check_user_mask(mask, mask_path, tags, classes, notes)
    if tags is None:
        raise DataError(f"{item.image}: no tags and no mask to read them from")
    bad = [t for t in tags if not 0 < t < len(classes)]
    if bad:
        raise DataError(f"{item.image}: tags {bad} outside the label space 1..{len(classes) - 1}")
    width, height = info.size(orientation)
    record = ImageRecord(
        id=item.id,
        image=os.path.abspath(item.image),  # not resolved: a symlinked data set keeps its own file names
        width=width,
        height=height,
        tags=tuple(tags),
        mask=gt_ref if coco is not None else _absolute(mask_path),
        split=item.split,
        sha256=file_digest(Path(item.image)),
        orientation=orientation,
        source_id=item.source_id,
    )
    return record, coco


def _absolute(path: Path | None) -> str | None:
    return os.path.abspath(path) if path is not None else None  # not resolved: keeps symlinked names


def _check_user_mask(
    mask: np.ndarray,
    path: Path,
    tags: tuple[int, ...] | None,
    classes: tuple[str, ...],
    notes: list[tuple[str, str]],
) -> tuple[Path | None, tuple[int, ...]]:
    """(mask path to score, tags) for a mask file: values outside the label space or a mask that
    contradicts the tags keep the image (when the tags come from elsewhere) but not its GT."""
    counts = value_counts(mask)
    bad = [int(v) for v in np.flatnonzero(counts) if v >= len(classes) and v != IGNORE_INDEX]
    if bad:
        why = (
            f"mask {path} has values {bad} outside the label space 0..{len(classes) - 1} (and {IGNORE_INDEX} = "
            "ignore); mask values are class indices in class-list order"
        )
        if tags is None:
            raise DataError(why)
        notes.append((why, NOT_SCORED))
        return None, tags
    if tags is None:  # tags read from the mask agree with it by construction; only its coverage can be off
        share = float(counts[IGNORE_INDEX] / mask.size)
        if share > MOSTLY_IGNORE:
            notes.append((f"mask {path}: {100 * share:.0f}% of its pixels are {IGNORE_INDEX} (ignore)", NOT_SCORED))
            return None, tags_from_mask(mask, counts)
        return path, tags_from_mask(mask, counts)
    disagreement = mask_disagreements(counts, tags, classes)
    if disagreement:
        notes.append((f"{disagreement} (mask {path})", NOT_SCORED))
        return None, tags
    return path, tags
