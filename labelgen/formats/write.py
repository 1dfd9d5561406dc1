"""`labelgen export`: write a run's masks in another tool's format, one module per format."""

from __future__ import annotations

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

FORMATS = ("voc", "mmseg", "coco", "yolo", "yolo-seg")


def export_masks(
    run_dir: Path, what: str, fmt: str, out: Path, client: Client, image_format: str = "auto"
) -> dict[str, int]:
    """Write the masks of `what` (pseudo_labels | predictions) of a run in format `fmt` under `out`;
    return the image count per split. `image_format` (auto | jpg | png) is the one image suffix of
    the formats that write images (mmseg, yolo, yolo-seg)."""
    return write_export(export_source(run_dir, what), what, fmt, out, client, image_format)


def write_export(
    source: ExportSource, what: str, fmt: str, out: Path, client: Client, image_format: str = "auto"
) -> dict[str, int]:
    """Write `source`'s masks in format `fmt` under `out`, file names tagged with `what`; return the
    image count per split. Raises `ConfigError` for an unknown format."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"--image-format {image_format!r}; allowed: {', '.join(IMAGE_FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "voc":
        return export_voc(source, what, out, client)
    if fmt == "mmseg":
        return export_mmseg(source, what, out, client, image_format)
    if fmt == "yolo":
        return export_yolo(source, what, out, client, image_format)
    if fmt == "yolo-seg":
        return export_yolo_seg(source, what, out, client, image_format)
    return export_coco(source, what, out, client)
