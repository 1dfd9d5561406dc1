"""Reading and writing class-index masks (PNG): palette or grayscale, 255 = ignore; and `gt_mask`,
the one way stages read an image's GT."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from labelgen.data.colours import LABELMAP, DeclaredColours, decode_colours, pack_rgb
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
    """An H×W uint8 class-index mask from a palette, grayscale or 16-bit PNG, a colour PNG in VOC
    palette colours, or from a manifest row's COCO GT reference (`<file>.cocogt.json#<n>`:
    rasterised from its annotations)."""
    from labelgen.data.coco_gt import is_gt_reference, read_gt  # coco_gt imports this module

    if is_gt_reference(path):
        return read_gt(str(path))
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "L"):
                return np.asarray(img, dtype=np.uint8).copy()
            if img.mode in ("RGB", "RGBA"):  # a colour mask the index accepted (`read_user_mask`)
                return _decode_voc_colours(np.asarray(img)[..., :3], path, IGNORE_INDEX)
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


# The first bytes of a JPEG file: masks saved as JPEG (lossy: values change along every edge) and
# renamed, or written by a tool that ignores the extension.
JPEG_MAGIC = b"\xff\xd8\xff"


def read_user_mask(
    path: Path, classes: tuple[str, ...], declared: DeclaredColours | None = None
) -> tuple[np.ndarray, str | None]:
    """An H×W uint8 class-index mask from a file a person saved, and a note when it had to be
    decoded (a colour mask). Read as people save masks:
    - palette (P) or grayscale PNG: the values are class indices, unless the palette shows another
      tool's class order (an index drawn in the VOC colour of another class): refused;
    - where the data set declares its colours (`declared`, its CVAT/Datumaro `labelmap.txt` read by
      `labelgen.data.colours.DeclaredColours.read`), a colour or palette PNG is decoded by its colours;
    - else a colour (RGB/RGBA) PNG is decoded against the VOC palette (label k = VOC colour k,
      255 = the VOC ignore colour);
    a colour that is no class's is refused, naming it;
    - JPEG bytes under any name: refused (lossy: class values change along every edge).
    Raises `DataError` naming the file, what is wrong and the fix."""
    try:
        with open(path, "rb") as f:
            head = f.read(3)
    except FileNotFoundError as e:
        raise DataError(f"{path}: mask file not found") from e
    if head == JPEG_MAGIC:
        raise DataError(
            f"mask {path} holds JPEG bytes: lossy, it changes class values along every edge; save it as a PNG"
        )
    try:
        with Image.open(path) as img:
            img.load()
            if declared is not None and img.mode in ("RGB", "RGBA", "P"):  # the colours say the class
                rgb = np.asarray(img.convert("RGB"))
                why = (
                    f"of colour mask {path} are no class's colour in {declared.path}; list each there under a "
                    f"class name (or background, ignore)"
                )
                mask = decode_colours(rgb, declared.table, why, declared.unnamed)
                return mask, f"colour mask {path.name} decoded with {declared.path}"
            if img.mode in ("RGB", "RGBA"):
                rgb = np.asarray(img)[..., :3]
                return _decode_voc_colours(
                    rgb, path, len(classes)
                ), f"colour mask {path.name} decoded with the VOC palette"
            if img.mode == "P":
                _check_palette_order(img, path, len(classes))
    except OSError as e:
        raise DataError(f"{path}: unreadable mask ({e}); replace or remove it") from e
    return read_mask(path), None


def _voc_colours(num_labels: int) -> dict[int, int]:
    """{packed RGB: label} of the VOC palette's colours for labels 0..num_labels-1 and ignore (255)."""
    palette = np.array(voc_palette(), np.uint8).reshape(1, 256, 3)
    packed = pack_rgb(palette)[0]
    return {int(packed[k]): k for k in [*range(min(num_labels, IGNORE_INDEX)), IGNORE_INDEX]}


def _decode_voc_colours(rgb: np.ndarray, path: Path, num_labels: int) -> np.ndarray:
    why = (
        f"of colour mask {path} are no class's VOC palette colour; save class indices or declare the "
        f"colours in a {LABELMAP} at the data set root"
    )
    return decode_colours(rgb, _voc_colours(num_labels), why)


def _check_palette_order(img: Image.Image, path: Path, num_labels: int) -> None:
    """Refuse a palette PNG whose used indices are drawn in the VOC colours of OTHER classes: its
    indices follow another tool's class order (a palette of its own colours is fine: the indices count)."""
    palette = img.getpalette() or []
    palette = (palette + [0] * 768)[:768]
    colours = np.array(palette, np.int64).reshape(256, 3)
    packed = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
    voc = _voc_colours(num_labels)
    used = np.flatnonzero(np.bincount(np.asarray(img).ravel(), minlength=256))
    # black is also what an unset palette entry reads as: only another class's colour is evidence
    moved = [(int(i), voc[int(packed[i])]) for i in used if packed[i] and voc.get(int(packed[i]), i) != i]
    if moved:
        i, k = moved[0]
        raise DataError(
            f"palette mask {path} draws index {i} in the VOC colour of label {k}: another class order; "
            "write class-list indices (1 = first class in classes.txt)"
        )


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
