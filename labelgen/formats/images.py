"""Images written beside exported masks (mmseg): copied byte for byte where every reader decodes
labelgen's pixels, else re-encoded in labelgen's frame without an EXIF orientation tag."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from PIL import Image

from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord
from labelgen.formats.source import file_orientation

IMAGE_FORMATS = ("auto", "jpg", "png")  # the one image suffix of an mmseg export
# Re-encoding to JPEG (an image of another format or with an EXIF turn, in a mostly-JPEG export):
# quality 95 without chroma subsampling changes coco128 photos by 1-2 grey levels on average (a
# one-pixel shift: 9-27) at a third to a half of the PNG size; `--image-format png` is lossless.
JPEG_QUALITY = 95
FORMAT_OF_SUFFIX = {".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".jfif": "jpg", ".png": "png"}


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
