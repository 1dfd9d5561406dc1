"""Broken and unusual image files, made on the fly (so the repo ships no binaries)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_corpus(folder: Path) -> dict[str, Path]:
    """name -> file: good, grayscale, CMYK, 16-bit, RGBA, palette, truncated, zero-byte, not-an-image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    files = {}

    def save(name: str, img: Image.Image, fmt: str | None = None) -> None:
        files[name] = folder / name
        img.save(files[name], fmt)

    save("good.jpg", Image.fromarray(rgb))
    save("gray.jpg", Image.fromarray(rgb[..., 0]))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("sixteen.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    save("alpha.png", Image.fromarray(np.dstack([rgb, rgb[..., :1]])))
    save("palette.png", Image.fromarray(rgb).convert("P"))
    data = files["good.jpg"].read_bytes()
    files["truncated.jpg"] = folder / "truncated.jpg"
    files["truncated.jpg"].write_bytes(data[: len(data) // 2])
    files["empty.jpg"] = folder / "empty.jpg"
    files["empty.jpg"].write_bytes(b"")
    files["text.jpg"] = folder / "text.jpg"
    files["text.jpg"].write_text("not an image")
    return files
