"""The one image reader. Every stage reads pixels through `read_image`, so every stage agrees on
how grayscale, CMYK, 16-bit, alpha, EXIF-rotated and broken files are handled.

EXIF orientation: a camera stores pixels as the sensor saw them and writes a tag (EXIF 0x0112,
values 1..8) saying how to turn them upright. PIL's `Image.open` ignores the tag; OpenCV's
`imread`, mmcv's `imread` (both backends) and detectron2's `read_image` apply it. The index decides,
per image, which of the two frames its annotations were drawn on and records it in the manifest as
`orientation` (the EXIF value labelgen applies, 1 = the stored pixels as they are); every later read
passes that value back to `read_image`, so all stages see the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from labelgen.errors import DataError

# PIL's own bomb check warns at 89 Mpx and fails at 178 Mpx; we apply our own, configurable limit
# before decoding, so the message names the file and the setting to change.
Image.MAX_IMAGE_PIXELS = None


EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation value -> the PIL transpose that turns the stored pixels upright (the table of
# PIL's ImageOps.exif_transpose and detectron2's _apply_exif_orientation).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def swaps_axes(orientation: int) -> bool:
    """Whether applying EXIF `orientation` swaps width and height (values 5..8 turn by 90°)."""
    return orientation in (5, 6, 7, 8)


@dataclass(frozen=True)
class ImageInfo:
    width: int  # of the stored pixels (EXIF orientation not applied)
    height: int
    mode: str  # the file's PIL mode before conversion
    converted: str | None  # what `read_image` does to make it RGB uint8, if anything
    exif_orientation: int  # the file's EXIF orientation tag, 1 when absent or invalid

    def size(self, orientation: int) -> tuple[int, int]:
        """(width, height) of the pixels after applying `orientation` (1 = as stored)."""
        return (self.height, self.width) if swaps_axes(orientation) else (self.width, self.height)


_CONVERSIONS = {
    "L": "grayscale expanded to RGB",
    "LA": "grayscale+alpha: alpha dropped, expanded to RGB",
    "RGBA": "alpha channel dropped",
    "P": "palette expanded to RGB",
    "PA": "palette+alpha expanded to RGB, alpha dropped",
    "CMYK": "CMYK converted to RGB",
    "YCbCr": "YCbCr converted to RGB",
    "I;16": "16-bit grayscale scaled to 8 bits",
    "I;16B": "16-bit grayscale scaled to 8 bits",
    "I;16L": "16-bit grayscale scaled to 8 bits",
    "I": "32-bit integer grayscale scaled to 8 bits",
    "F": "float grayscale scaled to 8 bits",
    "1": "1-bit image expanded to RGB",
}


def _open(path: Path, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found; check the data root and the manifest") from e
    except (UnidentifiedImageError, OSError) as e:
        size = path.stat().st_size if path.exists() else 0
        why = "zero-byte file" if size == 0 else "not a readable image"
        raise DataError(f"{path}: {why} ({e}); replace or remove the file") from e
    if img.width * img.height > max_pixels:
        raise DataError(
            f"{path}: {img.width}x{img.height} = {img.width * img.height} pixels exceeds "
            f"dataset.max_image_pixels={max_pixels} (possible decompression bomb); "
            "raise the limit with --set dataset.max_image_pixels=N if the image is genuine"
        )
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        gray = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy: np.asarray of PIL is read-only


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an opened image: 1..8, or 1 when absent or not a valid value."""
    return _valid_orientation(img.getexif)


def _valid_orientation(getexif: Callable[[], Image.Exif]) -> int:
    try:
        value = getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block must not make a readable image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF `orientation` (1..8) to an H×W[×C] array, as `ImageOps.exif_transpose` does."""
    if orientation == 1:
        return image
    return np.array(Image.fromarray(image).transpose(_TRANSPOSE[orientation]))


def read_image(path: Path | str, max_pixels: int = 40_000_000, orientation: int = 1) -> np.ndarray:
    """Decode an image file as an H×W×3 uint8 RGB array, with EXIF `orientation` applied (1 = the
    stored pixels; pass the manifest row's `orientation`); raise `DataError` naming the file if broken."""
    path = Path(path)
    img = _open(path, max_pixels)
    try:
        img.load()
        return orient(_to_rgb(img), orientation)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: truncated or corrupt image data ({e}); replace or remove the file") from e


def inspect_image(path: Path | str, max_pixels: int = 40_000_000) -> ImageInfo:
    """Prove an image file readable and complete; report its stored size, mode, EXIF orientation and
    any conversion `read_image` will make. Raises `DataError` naming the file, as `read_image` does.

    Cheap where the format allows it (the index runs this on every image): JPEG (and MPO, a phone's
    multi-picture JPEG) and PNG are checked from their headers, which give size, mode and EXIF, and
    from how they end: a JPEG must end with its EOI marker (FF D9), a PNG's chunks must be whole and
    end with IEND. A file failing that check, a PNG with metadata after its pixel data, and every
    other format (GIF, BMP, TIFF, WebP, ...: no end marker that proves them complete) are decoded fully.
    Corrupt bytes inside a complete JPEG or PNG are found when a stage decodes the image: `read_image`
    then raises a one-line `DataError` naming the file.
    """
    path = Path(path)
    with _open(path, max_pixels) as img:
        cheap = _complete_without_decoding(path, img.format)
        if not cheap:
            read_image(path, max_pixels)  # raises DataError for a broken file
        mode, tag, (width, height) = img.mode, _orientation_tag(img, cheap), img.size
    converted = None if mode == "RGB" else _CONVERSIONS.get(mode, f"mode {mode} converted to RGB")
    return ImageInfo(width=width, height=height, mode=mode, converted=converted, exif_orientation=tag)


def _complete_without_decoding(path: Path, fmt: str | None) -> bool:
    """Whether the file's structure proves it complete, for the formats where that is cheap."""
    if fmt in ("JPEG", "MPO"):
        return _tail(path, 2) == _JPEG_EOI
    if fmt == "PNG":
        return _png_ends_after_metadata(path)
    return False


_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# chunks PIL reads EXIF orientation from (eXIf, text chunks with "Raw profile type exif" or XMP)
_PNG_METADATA = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")


def _tail(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(f.tell() - size, 0))
        return f.read()


def _png_ends_after_metadata(path: Path) -> bool:
    """Whether a PNG's chunks are whole up to an IEND at the end of the file, with no metadata chunk
    after the pixel data (PIL reads those only when it decodes): reads 8 bytes per chunk."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        if f.read(8) != _PNG_SIGNATURE:
            return False
        seen_pixels = False
        while True:
            header = f.read(8)
            if len(header) < 8:
                return False
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            end = f.tell() + length + 4  # data and CRC
            if end > size:
                return False
            if kind == b"IEND":
                return end == size
            if seen_pixels and kind in _PNG_METADATA:
                return False
            seen_pixels = seen_pixels or kind == b"IDAT"
            f.seek(end)


def _orientation_tag(img: Image.Image, checked: bool) -> int:
    """The EXIF orientation of an opened image. PIL's PNG reader decodes the whole image to look for
    EXIF after the pixel data; where the chunks were `checked` to hold none there, the metadata read
    with the header is complete and is used as it is."""
    if img.format == "PNG" and checked:
        return _valid_orientation(lambda: Image.Image.getexif(img))
    return exif_orientation(img)
