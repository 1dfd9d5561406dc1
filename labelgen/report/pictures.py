"""Pictures for reports: class colours, mask overlays, CAM heat maps, thumbnails, an overlay grid and
a per-class bar chart (PIL and numpy only)."""

from __future__ import annotations

import base64
import colorsys
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from labelgen.data.masks import IGNORE_INDEX

_SERIES_COLOURS = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193)]
# Saturated colours far apart from each other and from grey, for the first 16 classes (the photo
# under an overlay is shown in grey, so a class colour never competes with the photo's own colours).
# The first five follow the demo's shapes (red disc, blue square, green triangle, yellow ring,
# magenta cross), so that on the demo a right mask looks like the photo and a wrong one does not.
_FIRST_COLOURS = [
    (230, 25, 75),
    (0, 130, 200),
    (60, 180, 75),
    (255, 225, 25),
    (240, 50, 230),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (128, 128, 0),
    (0, 0, 128),
    (255, 150, 190),
    (120, 90, 255),
]
IGNORE_COLOUR = (255, 255, 255)
MASK_OPACITY = 0.65  # share of the class colour in a filled region; the rest is the grey photo


def class_colours() -> np.ndarray:
    """256×3 uint8 display colours: label 0 (background) black, 1..16 hand-picked, later labels
    golden-angle hues at alternating saturation and value, 255 (ignore) white. For reports only;
    exported PNGs keep the VOC palette."""
    colours = np.zeros((256, 3), np.uint8)
    colours[1 : 1 + len(_FIRST_COLOURS)] = _FIRST_COLOURS
    for label in range(1 + len(_FIRST_COLOURS), 255):
        i = label - 1 - len(_FIRST_COLOURS)
        hue = (i * 0.618034 + 0.05) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, (0.9, 0.7)[(i // 3) % 2], (0.95, 0.75, 0.55)[i % 3])
        colours[label] = [round(255 * c) for c in rgb]
    colours[IGNORE_INDEX] = IGNORE_COLOUR
    return colours


_DISPLAY = class_colours()


def greyscale(image: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 -> H×W×3 float32 luma (ITU-R 601), so that colours drawn over it are the only colours."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(luma[..., None], 3, axis=2)


def outline(mask: np.ndarray) -> np.ndarray:
    """H×W bool: pixels of a non-background region with a 4-neighbour of another label (its border)."""
    padded = np.pad(mask, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(mask.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] != centre
    return edge & (mask != 0)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = MASK_OPACITY) -> np.ndarray:
    """H×W×3 uint8 picture of `mask` (H×W uint8 labels) over `image` (H×W×3 uint8).

    The photo is shown in grey; every non-background region is filled with its solid class colour
    (`class_colours`) at opacity `alpha` and outlined in that colour at full opacity, so the class
    reads from the colour whatever the photo's own colours are. Ignore (255) is filled white.
    """
    base = greyscale(image)
    colours = _DISPLAY[mask].astype(np.float32)
    fg = (mask != 0)[..., None]
    out = np.where(fg, (1 - alpha) * base + alpha * colours, base)
    edge = outline(mask)
    out[edge] = colours[edge]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> jet colours (..., 3) in [0, 1]: blue (low) through green to red (high)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], np.float32)  # red, green, blue peaks
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)


def heatmap(image: np.ndarray, cam: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """H×W×3 uint8: one CAM (H×W float in [0, 1]) as jet colours at opacity `alpha` over the grey photo."""
    out = (1 - alpha) * greyscale(image) + alpha * 255.0 * _jet(cam)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heat_scale(width: int = 160, height: int = 10) -> np.ndarray:
    """height×width×3 uint8 legend bar of the heat map colours, 0 (left) to 1 (right)."""
    row = (255.0 * _jet(np.linspace(0.0, 1.0, width, dtype=np.float32))).astype(np.uint8)
    return np.repeat(row[None], height, axis=0)


def thumbnail_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(h, w) with the longer side `longest` (never enlarged), aspect ratio kept, at least 1 pixel."""
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H×W×3 uint8 -> size (h, w), area-averaged (Pillow's reducing box filter)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BOX))


def shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H×W labels -> size (h, w) by nearest neighbour, so no label is invented at borders."""
    if mask.shape == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))


def data_uri(picture: np.ndarray, quality: int = 85) -> str:
    """An H×W×3 uint8 picture as a `data:image/jpeg;base64,...` URI (no chroma subsampling, so thin
    coloured outlines keep their colour)."""
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="JPEG", quality=quality, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_data_uri(path: Path) -> str:
    """A PNG file as a `data:image/png;base64,...` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def overlay_grid(rows: list[list[np.ndarray | None]], titles: list[str], path: Path, cell: int = 160) -> None:
    """A grid of RGB images, one row per image, one column per title; None leaves a cell empty."""
    header = 18
    grid = Image.new("RGB", (cell * len(titles), header + cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(titles):
        draw.text((c * cell + 4, 3), title, fill="black")
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            if picture is None:
                continue
            img = Image.fromarray(picture)
            img.thumbnail((cell, cell))
            grid.paste(img, (c * cell, header + r * cell))
    grid.save(path)


def bar_chart(names: list[str], series: dict[str, list[float]], path: Path, bar: int = 7) -> None:
    """Horizontal bars of per-class values in [0, 1] (NaN or None skipped), one colour per series."""
    label_w, plot_w, gap = 130, 360, 6
    group = bar * len(series) + gap
    img = Image.new("RGB", (label_w + plot_w + 60, 24 + group * len(names) + 16 * len(series)), "white")
    draw = ImageDraw.Draw(img)
    for k in range(0, 11, 2):
        x = label_w + plot_w * k / 10
        draw.line([x, 20, x, 20 + group * len(names)], fill=(225, 225, 225))
        draw.text((x - 8, 6), f"{k / 10:.1f}", fill="black")
    for i, name in enumerate(names):
        y0 = 22 + i * group
        draw.text((4, y0), name[:20], fill="black")
        for s, values in enumerate(series.values()):
            v = values[i]
            if v is not None and not math.isnan(v):
                y = y0 + s * bar
                draw.rectangle([label_w, y, label_w + plot_w * v, y + bar - 2], fill=_SERIES_COLOURS[s % 6])
    y = 24 + group * len(names)
    for s, label in enumerate(series):
        draw.rectangle([label_w, y + s * 16, label_w + 10, y + s * 16 + 10], fill=_SERIES_COLOURS[s % 6])
        draw.text((label_w + 16, y + s * 16), label, fill="black")
    img.save(path)
