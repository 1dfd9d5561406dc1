"""Pictures for reports: coloured masks, overlays, an overlay grid and a per-class bar chart (PIL only)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from labelgen.data.masks import IGNORE_INDEX, voc_palette

_PALETTE = np.array(voc_palette(), np.uint8).reshape(256, 3)
_SERIES_COLOURS = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193)]


def colourise(mask: np.ndarray) -> np.ndarray:
    """H×W labels -> H×W×3 VOC colours; ignore (255) drawn white."""
    rgb = _PALETTE[mask]
    rgb[mask == IGNORE_INDEX] = 255
    return rgb


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Mask colours blended over the image where the mask is not background."""
    colours = colourise(mask).astype(np.float32)
    out = image.astype(np.float32)
    fg = (mask > 0)[..., None]
    return np.where(fg, (1 - alpha) * out + alpha * colours, out).astype(np.uint8)


def overlay_grid(rows: list[list[np.ndarray]], titles: list[str], path: Path, cell: int = 160) -> None:
    """A grid of RGB images, one row per image, one column per title."""
    header = 18
    grid = Image.new("RGB", (cell * len(titles), header + cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(titles):
        draw.text((c * cell + 4, 3), title, fill="black")
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            img = Image.fromarray(picture)
            img.thumbnail((cell, cell))
            grid.paste(img, (c * cell, header + r * cell))
    grid.save(path)


def bar_chart(names: list[str], series: dict[str, list[float]], path: Path, bar: int = 7) -> None:
    """Horizontal bars of per-class values in [0, 1] (NaN skipped), one colour per series."""
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
            if not math.isnan(v):
                y = y0 + s * bar
                draw.rectangle([label_w, y, label_w + plot_w * v, y + bar - 2], fill=_SERIES_COLOURS[s % 6])
    y = 24 + group * len(names)
    for s, label in enumerate(series):
        draw.rectangle([label_w, y + s * 16, label_w + 10, y + s * 16 + 10], fill=_SERIES_COLOURS[s % 6])
        draw.text((label_w + 16, y + s * 16), label, fill="black")
    img.save(path)
