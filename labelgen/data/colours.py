"""Colour masks: an H×W×3 mask whose colours stand for classes, decoded into class indices against a
colour table. Two tables exist: the PASCAL VOC palette (label k = VOC colour k, what VOC-style tools
write when nothing else is declared) and a data set's own declaration, a CVAT/Datumaro `labelmap.txt`
(`name:r,g,b:parts:actions` lines, `#` comments), which CVAT's "Segmentation mask 1.1" export writes
beside its `SegmentationClass/` folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelgen.data.text import read_user_text
from labelgen.errors import DataError

LABELMAP = "labelmap.txt"
# labelmap names that mean "no class" rather than a class: CVAT calls its unlabelled colour
# "background"; "ignore"/"void" are what people name the VOC border colour.
BACKGROUND_NAMES = ("background", "_background_")
IGNORE_NAMES = ("ignore", "ignored", "void")


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """H×W int64 codes (r << 16 | g << 8 | b) of an H×W×3 uint8 colour image."""
    rgb = rgb[..., :3].astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def rgb_text(code: int) -> str:
    return f"({code >> 16},{(code >> 8) & 255},{code & 255})"


def parse_labelmap(text: str, where: str) -> dict[tuple[int, int, int], str]:
    """{(r, g, b): label name} of a CVAT/Datumaro `labelmap.txt`. Raises `DataError` naming the line
    that is not `name:r,g,b::`."""
    colours = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        rgb = rest.split(":")[0].split(",")
        if len(rgb) != 3 or not all(v.strip().isdigit() and int(v) < 256 for v in rgb):
            raise DataError(f"{where} line {n}: {line!r} is not `name:r,g,b::` (0..255 each)")
        colours[tuple(int(v) for v in rgb)] = name.strip()
    return colours


def read_labelmap(path: Path) -> dict[tuple[int, int, int], str]:
    """`parse_labelmap` of the file at `path`; `DataError` naming it when it cannot be read."""
    return parse_labelmap(read_user_text(path, "label map", "rewrite it as `name:r,g,b::` lines"), str(path))


def colour_table(
    colours: dict[tuple[int, int, int], str], classes: tuple[str, ...], ignore_index: int
) -> tuple[dict[int, int], dict[int, str]]:
    """({packed colour: label}, {packed colour: name} of the names the class list lacks) of a label
    map's colours: a name is the class of that name; "background" is label 0, "ignore"/"void" is
    `ignore_index`. A colour of an unknown name stays out of the table (a mask that uses it is
    refused, naming it)."""
    label_of = {name: k for k, name in enumerate(classes)}
    for name in BACKGROUND_NAMES:
        label_of.setdefault(name, 0)
    for name in IGNORE_NAMES:
        label_of.setdefault(name, ignore_index)
    packed = {(r << 16) | (g << 8) | b: n for (r, g, b), n in colours.items()}
    return (
        {c: label_of[n] for c, n in packed.items() if n in label_of},
        {c: n for c, n in packed.items() if n not in label_of},
    )


def decode_colours(
    rgb: np.ndarray, table: dict[int, int], unknown_why: str, names: dict[int, str] | None = None
) -> np.ndarray:
    """H×W uint8 labels of an H×W×3 colour mask through `table` ({packed colour: label}). Raises
    `DataError` for colours the table lacks: up to three named (with their name in `names`, where
    it has one), then `unknown_why` (what the table is and the fix)."""
    codes = pack_rgb(rgb)
    present, inverse = np.unique(codes, return_inverse=True)
    missing = [int(c) for c in present if int(c) not in table]
    if missing:
        names = names or {}
        shown = ", ".join(rgb_text(c) + (f" {names[c]!r}" if c in names else "") for c in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"colours {shown}{more} {unknown_why}")
    return np.array([table[int(c)] for c in present], np.uint8)[inverse.reshape(codes.shape)]


@dataclass(frozen=True)
class DeclaredColours:
    """A data set's `labelmap.txt` read once (an index task reads it once for its slice, not once a
    mask): its path, for messages, and `colour_table`'s two tables for the run's classes."""

    path: Path
    table: dict[int, int]
    unnamed: dict[int, str]

    @classmethod
    def read(cls, path: Path, classes: tuple[str, ...], ignore_index: int) -> DeclaredColours:
        return cls(path, *colour_table(read_labelmap(path), classes, ignore_index))
