"""Images written beside exported masks (mmseg, yolo, yolo-seg): copied byte for byte where every
reader decodes labelgen's pixels, else re-encoded in labelgen's frame without an EXIF orientation
tag; and the loop those formats share, one task per shard writing its labels and images."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client
from PIL import Image

from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord
from labelgen.formats.source import ExportSource, Frame, export_units, file_orientation
from labelgen.pipeline.executor import run_units
from labelgen.pipeline.stage import UnitResult
from labelgen.store.sharded import ImageArrays
from labelgen.store.workfolder import WorkFolder

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("auto", "jpg", "png")  # the one image suffix of an mmseg export
# Re-encoding to JPEG (an image of another format or with an EXIF turn, in a mostly-JPEG export):
# quality 95 without chroma subsampling changes coco128 photos by 1-2 grey levels on average (a
# one-pixel shift: 9-27) at a third to a half of the PNG size; `--image-format png` is lossless.
JPEG_QUALITY = 95
FORMAT_OF_SUFFIX = {".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".jfif": "jpg", ".png": "png"}

# A shard task: (store, rows, frames, label folder, image folder, image format, max pixels, *extra) -> the
# files it wrote and {"written": counts}, with "copied" / "format" / "orientation" counting its images
ShardTask = Callable[..., UnitResult]


def image_format(records: list[ImageRecord], choice: str) -> str:
    """The one image format (jpg | png) of an mmseg export: `choice`, or for `auto` the format most
    images already have (fewest re-encoded; a tie takes png, which is lossless)."""
    if choice != "auto":
        return choice
    counts = Counter(FORMAT_OF_SUFFIX.get(Path(r.image).suffix.lower()) for r in records)
    return "jpg" if counts["jpg"] > counts["png"] else "png"


def reencode_reason(path: Path, orientation: int, fmt: str) -> str | None:
    """Why an image cannot be copied byte for byte into an export of image format `fmt`: "format"
    (another suffix), "orientation" (labelgen turns its pixels, or the file says to turn them);
    None when a copy decodes to labelgen's pixels in every reader."""
    if FORMAT_OF_SUFFIX.get(path.suffix.lower()) != fmt:
        return "format"
    if orientation != 1 or file_orientation(path) != 1:
        return "orientation"
    return None


def export_image(source: Path, orientation: int, target: Path, fmt: str, max_pixels: int) -> str | None:
    """Write one image to `target` (suffix .`fmt`): a byte copy where nothing must change, else
    labelgen's pixels (`orientation` applied) re-encoded without EXIF: PNG lossless, JPEG at quality
    `JPEG_QUALITY` without chroma subsampling. Returns the reason it was re-encoded, or None."""
    why = reencode_reason(source, orientation, fmt)
    if why is None:
        shutil.copyfile(source, target)
        return None
    pixels = Image.fromarray(read_image(source, max_pixels, orientation))  # RGB, in labelgen's frame
    if fmt == "jpg":
        pixels.save(target, quality=JPEG_QUALITY, subsampling=0)
    else:
        pixels.save(target)
    return why


def write_image(frame: Frame, image_dir: Path, image_id: str, fmt: str, max_pixels: int) -> str:
    """Write one image as `<image_dir>/<image_id>.<fmt>` (`export_image`); return "copied" or why it
    was re-encoded ("format", "orientation")."""
    path, orientation = frame
    return export_image(Path(path), orientation, image_dir / f"{image_id}.{fmt}", fmt, max_pixels) or "copied"


def masks_and_images(
    store: Path,
    rows: range,
    frames: dict[str, Frame],
    mask_dir: Path,
    image_dir: Path,
    fmt: str,
    max_pixels: int,
    write_png: Callable[[Path, np.ndarray], None],
) -> UnitResult:
    """A shard task (`ShardTask`, plus how a mask is saved): each image's mask as
    `<mask_dir>/<id>.png` through `write_png(path, mask)` and the image (`write_image`); returns the
    files and the counts of images copied and re-encoded (by reason)."""
    arrays = ImageArrays(store)
    counts: Counter[str] = Counter()
    files = []
    for i, mask in zip(rows, arrays.rows(rows.start, rows.stop), strict=True):
        image_id = arrays.ids[i]
        files.append(mask_dir / f"{image_id}.png")
        write_png(files[-1], mask)
        counts[write_image(frames[image_id], image_dir, image_id, fmt, max_pixels)] += 1
        files.append(image_dir / f"{image_id}.{fmt}")
    return files, {"written": dict(counts)}


def write_with_images(
    source: ExportSource,
    what: str,
    folder: WorkFolder,
    label_dir: Callable[[str], Path],
    image_dir: Callable[[str], Path],
    choice: str,
    client: Client,
    task: ShardTask,
    *extra: Any,
) -> tuple[str, dict[str, Counter[str]]]:
    """Write every split's labels and images: the one image format (`image_format` of `choice`), then
    `task(..., *extra)` as one unit per shard (`export_units`, through the executor into the export
    `folder`) with the split's `label_dir(split)` and `image_dir(split)` made for it; a log line per
    split. Returns the image format and per split the units' summed "written" counts and "images"."""
    fmt = image_format([r for split in source.stores for r in source.records(split)], choice)
    for split in source.stores:
        label_dir(split).mkdir(parents=True, exist_ok=True)
        image_dir(split).mkdir(parents=True, exist_ok=True)
    units = export_units(
        source, task, lambda split, shard, rows: (label_dir(split), image_dir(split), fmt, source.max_pixels, *extra)
    )
    done = run_units(folder, [u for _, u in units], client, "export")
    counts = {split: Counter({"images": len(source.records(split))}) for split in source.stores}
    for (split, _), record in zip(units, done, strict=True):
        counts[split].update(record["written"])
    for split, c in counts.items():
        log.info(
            "export: %d %s masks of split %s -> %s; images -> %s as .%s: %d copied, %d re-encoded "
            "(%d for their format, %d for their EXIF orientation)",
            c["images"],
            what,
            split,
            label_dir(split),
            image_dir(split),
            fmt,
            c["copied"],
            c["format"] + c["orientation"],
            c["format"],
            c["orientation"],
        )
    return fmt, counts
