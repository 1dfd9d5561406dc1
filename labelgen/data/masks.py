"""Reading and writing class-index masks (PNG): palette or grayscale, 255 = ignore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from labelgen.errors import DataError

IGNORE_INDEX = 255


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (768 ints), used for every palette PNG labelgen writes."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def read_mask(path: Path | str) -> np.ndarray:
    """An H×W uint8 class-index mask from a palette, grayscale or 16-bit PNG."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "L"):
                return np.asarray(img, dtype=np.uint8).copy()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                values = np.asarray(img)
                if values.max() > 255:
                    raise DataError(f"{path}: mask value {values.max()} > 255; masks hold class indices 0..255")
                return values.astype(np.uint8)
            raise DataError(
                f"{path}: mask mode {img.mode} is not a class-index image; "
                "save masks as palette (P) or grayscale (L) PNGs whose values are class indices"
            )
    except FileNotFoundError as e:
        raise DataError(f"{path}: mask file not found") from e
    except OSError as e:
        raise DataError(f"{path}: unreadable mask ({e}); replace or remove it") from e


def write_mask(path: Path | str, mask: np.ndarray) -> None:
    """Save an H×W uint8 mask as a VOC-palette PNG."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8))  # mode L; putpalette makes it P
    img.putpalette(voc_palette())
    img.save(path, optimize=False)


def check_mask(mask: np.ndarray, num_classes: int, path: Path, image_size: tuple[int, int]) -> None:
    """Raise `DataError` if a mask does not fit its image or holds values outside the label space.

    `num_classes` counts background; valid values are 0..num_classes-1 and 255.
    """
    if mask.shape != (image_size[1], image_size[0]):
        raise DataError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image_size[0]}x{image_size[1]}; masks must have the size of their image"
        )
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DataError(
            f"{path}: mask values {bad.tolist()} are outside the label space 0..{num_classes - 1} "
            f"(and {IGNORE_INDEX} = ignore); check the class list"
        )


def tags_from_mask(mask: np.ndarray) -> tuple[int, ...]:
    """Foreground classes present in a mask (background 0 and ignore 255 left out)."""
    values = np.unique(mask)
    return tuple(int(v) for v in values if v not in (0, IGNORE_INDEX))
