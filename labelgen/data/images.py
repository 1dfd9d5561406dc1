"""The one image reader. Every stage reads pixels through `read_image`, so every stage agrees on
how grayscale, CMYK, 16-bit, alpha and broken files are handled."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from labelgen.errors import DataError

# PIL's own bomb check warns at 89 Mpx and fails at 178 Mpx; we apply our own, configurable limit
# before decoding, so the message names the file and the setting to change.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str  # the file's PIL mode before conversion
    converted: str | None  # what `read_image` does to make it RGB uint8, if anything


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


def read_image(path: Path | str, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode an image file as an H×W×3 uint8 RGB array; raise `DataError` naming the file if broken."""
    path = Path(path)
    img = _open(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        return _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: truncated or corrupt image data ({e}); replace or remove the file") from e


def inspect_image(path: Path | str, max_pixels: int = 40_000_000) -> ImageInfo:
    """Fully decode an image to prove it is readable; report its size and any conversion."""
    path = Path(path)
    array = read_image(path, max_pixels)
    with Image.open(path) as img:
        mode = img.mode
    converted = None if mode == "RGB" else _CONVERSIONS.get(mode, f"mode {mode} converted to RGB")
    return ImageInfo(width=array.shape[1], height=array.shape[0], mode=mode, converted=converted)
