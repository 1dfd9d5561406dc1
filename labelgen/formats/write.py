"""`labelgen export`: write a run's masks in another tool's format, one module per format.

Each format's work runs as units through the one executor (labelgen/pipeline/executor.py) into the
export folder, whose `.labelgen/` keeps a record per finished shard and a lock: an interrupted export
resumes (finished shards are not written again), and a second export into the same folder while one
runs is refused at once, naming the process that holds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from distributed import Client

from labelgen.errors import ConfigError
from labelgen.formats.coco import export_coco
from labelgen.formats.images import IMAGE_FORMATS
from labelgen.formats.mmseg import export_mmseg
from labelgen.formats.source import ExportSource, export_source
from labelgen.formats.voc import export_voc
from labelgen.formats.yolo import export_yolo
from labelgen.formats.yolo_seg import export_yolo_seg
from labelgen.store.artifact import ArtifactLock
from labelgen.store.workfolder import WorkFolder, work_key

FORMATS = ("voc", "mmseg", "coco", "yolo", "yolo-seg")
# bump when a format's files or its shards (formats/source.py SHARD) change for the same masks: the
# records of an export folder then belong to another key and are not resumed from
EXPORT_VERSION = 1


def export_masks(
    run_dir: Path, what: str, fmt: str, out: Path, client: Client, image_format: str = "auto"
) -> dict[str, int]:
    """Write the masks of `what` (pseudo_labels | predictions) of a run in format `fmt` under `out`;
    return the image count per split. `image_format` (auto | jpg | png) is the one image suffix of
    the formats that write images (mmseg, yolo, yolo-seg)."""
    with export_folder(run_dir, what, fmt, out, image_format) as (source, folder):
        return write_export(source, what, fmt, folder, client, image_format)


@contextlib.contextmanager
def export_folder(
    run_dir: Path, what: str, fmt: str, out: Path, image_format: str
) -> Iterator[tuple[ExportSource, WorkFolder]]:
    """What the export reads (`export_source`) and the export folder `out`, locked for it. The lock
    is taken first, before the run is read (which imports the stages) and before a cluster starts,
    so that a second export into the folder is refused at once: `LockHeldError` naming the holder's
    pid and host. Raises `ConfigError` for an unknown format or image format, `ArtifactError` for
    masks the run has not made."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"--image-format {image_format!r}; allowed: {', '.join(IMAGE_FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    with ArtifactLock(WorkFolder(out, "", "export")):  # the lock's file is the folder's, whatever the key
        source = export_source(run_dir, what)
        folder = WorkFolder(out, _export_key(source, what, fmt, image_format), "export")
        folder.forget_other_keys()
        yield source, folder


def _export_key(source: ExportSource, what: str, fmt: str, image_format: str) -> str:
    identity = {
        "version": EXPORT_VERSION,
        "stores": {split: str(store) for split, store in source.stores.items()},  # content-addressed paths
        "what": what,
        "format": fmt,
        "image_format": image_format,
    }
    return work_key(identity)


def write_export(
    source: ExportSource, what: str, fmt: str, folder: WorkFolder, client: Client, image_format: str = "auto"
) -> dict[str, int]:
    """Write `source`'s masks in format `fmt` into the locked `folder` (`export_folder`), file names
    tagged with `what`; return the image count per split."""
    if fmt == "voc":
        return export_voc(source, what, folder, client)
    if fmt == "mmseg":
        return export_mmseg(source, what, folder, client, image_format)
    if fmt == "yolo":
        return export_yolo(source, what, folder, client, image_format)
    if fmt == "yolo-seg":
        return export_yolo_seg(source, what, folder, client, image_format)
    return export_coco(source, what, folder, client)
