"""Reading and writing class-index masks (PNG): palette or grayscale, 255 = ignore; and `gt_mask`,
the one way stages read an image's GT."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from labelgen.data.manifest import ImageRecord
from labelgen.errors import DataError

IGNORE_INDEX = 255


@functools.cache  # built once per process, not once per mask written
def voc_palette() -> tuple[int, ...]:
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
    return tuple(palette)


def gt_mask(record: ImageRecord) -> np.ndarray:
    """The GT of a manifest row: H×W uint8 class indices (255 = ignore) in the row's frame (its
    `orientation` applied), (height, width) = the row's. Read from its mask file, or rasterised from
    its COCO annotations. Raises `DataError` if the row has no GT (`mask` is None), if the GT cannot
    be read, or if it does not have the row's size."""
    if record.mask is None:
        raise DataError(f"{record.image}: no GT mask in the manifest (its GT is not scored)")
    mask = read_mask(record.mask)
    if mask.shape != (record.height, record.width):
        raise DataError(
            f"{record.mask}: GT is {mask.shape[1]}×{mask.shape[0]} but the manifest row of {record.image} says "
            f"{record.width}×{record.height}; re-create the index"
        )
    return mask


def read_mask(path: Path | str) -> np.ndarray:
    """An H×W uint8 class-index mask from a palette, grayscale or 16-bit PNG, or from a manifest
    row's COCO GT reference (`<file>.cocogt.json#<n>`: rasterised from its annotations)."""
    from labelgen.data.coco_gt import is_gt_reference, read_gt  # coco_gt imports this module

    if is_gt_reference(path):
        return read_gt(str(path))
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


def value_counts(mask: np.ndarray) -> np.ndarray:
    """(256,) int64: the pixel count of each value of a uint8 mask (a bincount: no sort, unlike np.unique)."""
    return np.bincount(mask.ravel(), minlength=256)


def tags_from_mask(mask: np.ndarray, counts: np.ndarray | None = None) -> tuple[int, ...]:
    """Foreground classes present in a mask (background 0 and ignore 255 left out); pass its
    `value_counts` where they are at hand."""
    counts = value_counts(mask) if counts is None else counts
    return tuple(int(v) for v in np.flatnonzero(counts) if v not in (0, IGNORE_INDEX))
