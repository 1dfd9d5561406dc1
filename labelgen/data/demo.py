"""A procedural data set with exact masks: coloured shapes on cluttered backgrounds.

Each class has its own shape and colour family, so an ImageNet-pretrained ViT can learn the tags
in a few CPU minutes, while the cluttered, textured background keeps localisation non-trivial.
The same seed always gives the same files, written in the `folder` layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from labelgen.config import DatasetParams
from labelgen.data.classes import demo_classes
from labelgen.data.masks import write_mask

# class name -> base RGB colour; the shape is drawn by `_draw_shape`
_COLOURS = {
    "disc": (215, 45, 45),
    "square": (40, 75, 215),
    "triangle": (45, 175, 60),
    "ring": (230, 185, 30),
    "cross": (195, 55, 200),
}
_MIN_VISIBLE = 250  # pixels an object must keep after later objects overlap it
_MARKER = ".demo.json"


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, angle: float) -> None:
    def rotated(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if name == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif name == "square":
        h = r * 0.85
        draw.polygon(rotated([(-h, -h), (h, -h), (h, h), (-h, h)]), fill=255)
    elif name == "triangle":
        draw.polygon(
            rotated([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]),
            fill=255,
        )
    elif name == "cross":
        w = r * 0.33
        draw.polygon(rotated([(-r, -w), (r, -w), (r, w), (-r, w)]), fill=255)
        draw.polygon(rotated([(-w, -r), (w, -r), (w, r), (-w, r)]), fill=255)
    else:
        raise AssertionError(f"no drawing for demo class {name}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted low-frequency colour field, grey clutter strokes, and pixel noise."""
    grid = rng.integers(70, 170, size=(6, 6, 3)).astype(np.uint8)
    grey = grid.mean(axis=2, keepdims=True)
    grid = (0.35 * grid + 0.65 * grey).astype(np.uint8)  # desaturate: no object colours in the field
    field = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(4, 9))):
        g = int(rng.integers(60, 200))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
        draw.line([x0, y0, x1, y1], fill=(g, g, g), width=int(rng.integers(2, 7)))
    field = field.filter(ImageFilter.GaussianBlur(1.0))
    noise = rng.normal(0, 10, size=(size, size, 3))
    return np.clip(np.asarray(field, dtype=np.float64) + noise, 0, 255)


def render_demo_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """One image (H×W×3 uint8), its exact mask (H×W uint8) and its tags."""
    names = demo_classes()[1:]
    while True:
        image = _background(rng, size)
        mask = np.zeros((size, size), np.uint8)
        labels = []
        for _ in range(int(rng.integers(1, 4))):
            label = int(rng.integers(1, len(names) + 1))
            name = names[label - 1]
            r = rng.uniform(0.13, 0.24) * size
            cx, cy = rng.uniform(r, size - r, 2)
            canvas = Image.new("L", (size, size), 0)
            _draw_shape(ImageDraw.Draw(canvas), name, cx, cy, r, rng.uniform(0, 2 * math.pi))
            region = np.asarray(canvas) > 127
            colour = np.clip(np.array(_COLOURS[name]) + rng.integers(-30, 31, 3), 0, 255)
            shade = rng.normal(0, 8, size=(size, size, 1))
            image[region] = np.clip(colour + shade[region], 0, 255)
            mask[region] = label
            labels.append(label)
        tags = tuple(sorted(set(labels)))
        if all((mask == t).sum() >= _MIN_VISIBLE for t in tags):
            return image.astype(np.uint8), mask, tags


def generate_demo(root: Path, params: DatasetParams) -> None:
    """Write the demo data set under `root` unless the same one (same settings) is already there."""
    settings = {k: getattr(params, k) for k in ("demo_train_images", "demo_val_images", "demo_image_size", "demo_seed")}
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    names = demo_classes()
    rng = np.random.default_rng(params.demo_seed)
    rows = ["image,tags,split"]
    splits = [("train", params.demo_train_images), ("val", params.demo_val_images)]
    for split, count in splits:
        for i in range(count):
            image, mask, tags = render_demo_image(rng, params.demo_image_size)
            stem = f"{split}_{i:05d}"
            Image.fromarray(image).save(root / "images" / f"{stem}.png")
            write_mask(root / "masks" / f"{stem}.png", mask)
            rows.append(f"images/{stem}.png,{';'.join(names[t] for t in tags)},{split}")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(names[1:]) + "\n")
    marker.write_text(json.dumps(settings))
