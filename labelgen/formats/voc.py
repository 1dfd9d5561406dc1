"""VOC layout: `SegmentationClass/<id>.png` palette masks and `ImageSets/Segmentation/<split>.txt`."""

from __future__ import annotations

import logging
from pathlib import Path

from distributed import Client

from labelgen.data.masks import write_mask
from labelgen.formats.source import ExportSource, Frame, export_units, other_frame_count, warn_other_frame
from labelgen.pipeline.executor import run_units
from labelgen.store.sharded import ImageArrays
from labelgen.store.workfolder import WorkFolder

log = logging.getLogger(__name__)


def _voc_task(store: Path, rows: range, frames: dict[str, Frame], mask_dir: Path) -> tuple[list[Path], dict[str, int]]:
    """Write one shard's masks as palette PNGs; return them and how many of its images are in
    another frame for EXIF-applying readers."""
    arrays = ImageArrays(store)
    files = []
    for i, mask in zip(rows, arrays.rows(rows.start, rows.stop), strict=True):
        files.append(mask_dir / f"{arrays.ids[i]}.png")
        write_mask(files[-1], mask)
    return files, {"other_frame": other_frame_count(frames)}


def export_voc(source: ExportSource, what: str, folder: WorkFolder, client: Client) -> dict[str, int]:
    """`SegmentationClass/<id>.png` and `ImageSets/Segmentation/<split>.txt`. No images: the masks are
    in labelgen's frame (stored pixels with the manifest's orientation applied); a warning counts the
    images that EXIF-applying readers decode in another frame."""
    out = folder.path
    mask_dir, list_dir = out / "SegmentationClass", out / "ImageSets" / "Segmentation"
    mask_dir.mkdir(parents=True, exist_ok=True)
    list_dir.mkdir(parents=True, exist_ok=True)
    units = export_units(source, _voc_task, lambda split, shard, rows: (mask_dir,))
    done = run_units(folder, [u for _, u in units], client, "export")
    counts = {}
    for split in source.stores:
        records = source.records(split)
        (list_dir / f"{split}.txt").write_text("".join(f"{r.id}\n" for r in records))
        counts[split] = len(records)
        log.info("export: %d %s masks of split %s -> %s", len(records), what, split, mask_dir)
    warn_other_frame(sum(r["other_frame"] for r in done), "voc", out)
    return counts
