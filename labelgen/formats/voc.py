"""VOC layout: `SegmentationClass/<id>.png` palette masks and `ImageSets/Segmentation/<split>.txt`."""

from __future__ import annotations

import logging
from pathlib import Path

from distributed import Client

from labelgen.data.masks import write_mask
from labelgen.formats.source import ExportSource, Frame, frames_of, other_frame_count, shards, warn_other_frame
from labelgen.store.sharded import ImageArrays

log = logging.getLogger(__name__)


def _voc_task(store: Path, rows: range, mask_dir: Path, frames: dict[str, Frame]) -> int:
    """Write one shard's masks as palette PNGs; return how many of its images are in another frame
    for EXIF-applying readers."""
    arrays = ImageArrays(store)
    for i, mask in zip(rows, arrays.rows(rows.start, rows.stop), strict=True):
        write_mask(mask_dir / f"{arrays.ids[i]}.png", mask)
    return other_frame_count(frames)


def export_voc(source: ExportSource, what: str, out: Path, client: Client) -> dict[str, int]:
    """`SegmentationClass/<id>.png` and `ImageSets/Segmentation/<split>.txt`. No images: the masks are
    in labelgen's frame (stored pixels with the manifest's orientation applied); a warning counts the
    images that EXIF-applying readers decode in another frame."""
    mask_dir, list_dir = out / "SegmentationClass", out / "ImageSets" / "Segmentation"
    mask_dir.mkdir(parents=True, exist_ok=True)
    list_dir.mkdir(parents=True, exist_ok=True)
    counts, other = {}, 0
    for split, store in source.stores.items():
        records = source.records(split)
        rows_of = shards(len(records))
        other += sum(
            client.gather(
                [client.submit(_voc_task, store, r, mask_dir, frames_of(records, r), pure=False) for r in rows_of]
            )
        )
        (list_dir / f"{split}.txt").write_text("".join(f"{r.id}\n" for r in records))
        counts[split] = len(records)
        log.info("export: %d %s masks of split %s -> %s", len(records), what, split, mask_dir)
    warn_other_frame(other, "voc", out)
    return counts
