"""Training data loading: images/s that one CPU core decodes and augments for each training stage,
and what the `auto` loader processes of this machine deliver.

A GPU trains far faster than one core augments (DeiT training uses RandAugment and random erasing
at 224 px; the decoder resizes to 520 px, crops 480 px and distorts colours), so the number of
loader processes sets a training stage's ceiling: the stage cannot run faster than per-core rate ×
loader processes. Images: real coco128 photos resized to VOC size (500×375) and saved as JPEG;
decoder masks: PNGs of random rectangles. The VOC recipe's augmentation settings.

    python benchmarks/loader_speed.py [--images 128] [--batch 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import SHARED, print_table, write_result
from PIL import Image

from labelgen.config import load_recipe, recipe_path
from labelgen.data.manifest import ImageRecord
from labelgen.data.training import TaggedImages, loader_workers, start_epoch, training_loader
from labelgen.models.pixels import pixel_stats
from labelgen.stages.train_cam import training_transform
from labelgen.stages.train_decoder import PseudoMaskImages

VOC_SIZE = (500, 375)
MAX_PIXELS = 10**8


def voc_sized_photos(folder: Path, n: int) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    paths = sorted((SHARED / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))
    records = []
    for i in range(n):
        image = Image.open(paths[i % len(paths)]).convert("RGB").resize(VOC_SIZE, Image.BICUBIC)
        image.save(folder / f"{i:05d}.jpg", quality=90)
        mask = np.zeros(VOC_SIZE[::-1], np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, 300), rng.integers(0, 400)
            mask[y : y + 75, x : x + 100] = rng.integers(1, 21)
        Image.fromarray(mask).save(folder / f"{i:05d}.png")
        records.append(ImageRecord(f"{i:05d}", str(folder / f"{i:05d}.jpg"), *VOC_SIZE, (1,), None, "train", ""))
    return records


def images_per_s(data, batch: int, num_workers: str) -> float:
    """Two epochs through a training loader; the second is timed (loader processes started)."""
    loader = training_loader(data, batch, num_workers, 0, torch.device("cpu"))
    rates = []
    for epoch in range(2):
        start_epoch(loader, 0, epoch)
        started = time.perf_counter()
        count = sum(len(images) for images, _ in loader)
        rates.append(count / (time.perf_counter() - started))
    return rates[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(recipe_path("voc"))
    cam, dec = recipe["train_cam"], recipe["train_decoder"]
    auto = loader_workers("auto")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        records = voc_sized_photos(Path(tmp), args.images)
        datasets = {
            "train_cam": TaggedImages(
                records, 20, training_transform(cam, *pixel_stats(cam.backbone, cam.weights)), MAX_PIXELS
            ),
            "train_decoder": PseudoMaskImages(records, tmp, dec, MAX_PIXELS),
        }
        for stage, data in datasets.items():
            one_core = images_per_s(data, args.batch, "0")
            row = {"stage": stage, "one_core_images_per_s": one_core, "auto_processes": auto}
            if auto > 0:
                row["auto_images_per_s"] = images_per_s(data, args.batch, "auto")
            rows.append(row)
    print_table(rows)
    write_result("loader_speed", rows, {"image_size": VOC_SIZE, "recipe": "voc", "batch": args.batch})


if __name__ == "__main__":
    main()
