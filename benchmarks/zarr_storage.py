"""Storage cost and speed of cams.zarr / masks.zarr vs one .npy (CAMs) and one PNG (masks) per image.

VOC-sized (375×500) images, 2 tagged classes each, smooth float CAMs and blocky masks.

    python benchmarks/zarr_storage.py [--images 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import print_table, write_result

from labelgen.data.masks import read_mask, write_mask
from labelgen.store.sharded import (
    ImageArrays,
    StoreLayout,
    create_cam_store,
    create_mask_store,
    write_cam_shard,
    write_mask_shard,
)

H, W, SHARD = 375, 500, 32


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def data(n: int):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    for _ in range(n):
        maps = []
        for _ in range(2):
            cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(40, 120)
            maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
        cams = np.stack(maps).astype(np.float32)
        yield cams, (cams.argmax(0) + 1).astype(np.uint8) * (cams.max(0) > 0.4)


def _read_all(arrays: ImageArrays) -> list:
    """As the stages read: a shard's images at a time."""
    return [x for s in range(0, len(arrays), SHARD) for x in arrays.rows(s, min(s + SHARD, len(arrays)))]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    n = args.images
    items = list(data(n))
    ids = tuple(f"{i:06d}" for i in range(n))
    layout = StoreLayout(ids, ((H, W),) * n, SHARD)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def zarr_cams():
            create_cam_store(tmp / "cams.zarr", layout, 2, {})
            for s in range(layout.num_shards):
                write_cam_shard(tmp / "cams.zarr", layout, s, [(items[i][0], (1, 2)) for i in layout.shard_range(s)])

        def npy_cams():
            (tmp / "npy").mkdir()
            for i, (cams, _) in enumerate(items):
                np.save(tmp / "npy" / f"{ids[i]}.npy", cams)

        def zarr_masks():
            create_mask_store(tmp / "masks.zarr", layout, {})
            for s in range(layout.num_shards):
                write_mask_shard(tmp / "masks.zarr", layout, s, [items[i][1] for i in layout.shard_range(s)])

        def png_masks():
            (tmp / "png").mkdir()
            for i, (_, mask) in enumerate(items):
                write_mask(tmp / "png" / f"{ids[i]}.png", mask)

        for name, write, path, read in [
            (
                "cams.zarr (float16, sharded)",
                zarr_cams,
                tmp / "cams.zarr",
                lambda: _read_all(ImageArrays(tmp / "cams.zarr")),
            ),
            (
                "one .npy per image (float32)",
                npy_cams,
                tmp / "npy",
                lambda: [np.load(tmp / "npy" / f"{i}.npy") for i in ids],
            ),
            (
                "masks.zarr (uint8, sharded)",
                zarr_masks,
                tmp / "masks.zarr",
                lambda: _read_all(ImageArrays(tmp / "masks.zarr")),
            ),
            ("one PNG per image", png_masks, tmp / "png", lambda: [read_mask(tmp / "png" / f"{i}.png") for i in ids]),
        ]:
            write_s = timed(write)
            read_s = timed(read)
            rows.append(
                {
                    "format": name,
                    "kB_per_image": round(folder_bytes(path) / n / 1024, 1),
                    "write_images_per_s": round(n / write_s, 1),
                    "read_images_per_s": round(n / read_s, 1),
                    "files": sum(1 for f in path.rglob("*") if f.is_file()),
                }
            )
    print_table(rows)
    write_result("zarr_storage", rows, {"images": n, "size": [H, W]})


if __name__ == "__main__":
    main()
