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
    try:
        value = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
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
    """Fully decode an image to prove it is readable; report its stored size, EXIF orientation and
    any conversion."""
    path = Path(path)
    array = read_image(path, max_pixels)
    with Image.open(path) as img:
        mode, tag = img.mode, exif_orientation(img)
    converted = None if mode == "RGB" else _CONVERSIONS.get(mode, f"mode {mode} converted to RGB")
    return ImageInfo(width=array.shape[1], height=array.shape[0], mode=mode, converted=converted, exif_orientation=tag)
