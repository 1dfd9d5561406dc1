"""export_cams throughput: labelgen's shard tasks vs a reference-style loop, in turn, same machine.

Same images (real COCO photos from ../shared/data/coco128), same weights (DeiT-Tiny WeakTr), same
scales (1.0, 1.2) with flips. The reference-style loop does what the reference's
`generate_attention_maps_ms` does: one image a time, one forward per scale and per flip, one `.npy`
per image. labelgen runs its export_cams shard function as dask tasks on a LocalCluster (flip and
same-size images batched into one forward, shards in parallel worker processes, zarr output).

    python benchmarks/export_cams_speed.py [--images 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import SHARED, print_table, use_shared_weights, write_result
from PIL import Image

from labelgen.config import ExportCamsParams
from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord
from labelgen.models.cam_inference import cam_checkpoint, load_cam_model
from labelgen.models.weaktr import WeakTr, WeakTrConfig
from labelgen.stages.export_cams import export_shard, stored_size
from labelgen.store.checkpoint import save_checkpoint
from labelgen.store.sharded import StoreLayout, create_cam_store

SCALES = (1.0, 1.2)
NUM_CLASSES = 20


def records(n: int) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    paths = sorted((SHARED / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:n]
    out = []
    for p in paths:
        h, w = read_image(p).shape[:2]
        tags = tuple(sorted(rng.choice(np.arange(1, NUM_CLASSES + 1), size=int(rng.integers(1, 4)), replace=False)))
        out.append(ImageRecord(p.stem, str(p), w, h, tuple(int(t) for t in tags), None, "train", ""))
    return out


def reference_loop(model_path: Path, recs: list[ImageRecord], out: Path) -> None:
    """One image at a time, one forward per scale and per flip, one .npy per image."""
    model, mean, std = load_cam_model(model_path, torch.device("cpu"))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    for r in recs:
        pil = Image.open(r.image).convert("RGB")
        total = None
        for scale in SCALES:
            size = (round(r.width * scale), round(r.height * scale))
            x = torch.from_numpy(np.asarray(pil.resize(size, Image.BICUBIC))).permute(2, 0, 1)[None].float() / 255
            x = (x - m) / s
            for flip in (False, True):
                with torch.no_grad():
                    cam = model.cams(x.flip(-1) if flip else x, "fine")
                cam = F.interpolate(cam, size=(r.height, r.width), mode="bilinear", align_corners=False)
                cam = cam.flip(-1) if flip else cam
                total = cam if total is None else total + cam
        maps = total[0, [t - 1 for t in r.tags]]
        lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
        np.save(out / f"{r.id}.npy", ((maps - lo) / (hi - lo + 1e-8)).numpy())


def labelgen_export(model_path: Path, recs: list[ImageRecord], out: Path, workers: int, shard: int) -> None:
    from distributed import Client, LocalCluster

    params = ExportCamsParams(scales=SCALES, shard_size=shard, batch_size=8)
    layout = StoreLayout(tuple(r.id for r in recs), tuple(stored_size(r, 1) for r in recs), shard)
    store = out / "cams.zarr"
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: torch.set_num_threads(1))
        started = time.perf_counter()
        create_cam_store(store, layout, 3, {})
        futures = [
            client.submit(export_shard, params, model_path, recs[rows.start : rows.stop], layout, i, store, 10**8)
            for i, rows in ((i, layout.shard_range(i)) for i in range(layout.num_shards))
        ]
        client.gather(futures)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard", type=int, default=8)
    args = parser.parse_args()
    use_shared_weights()
    recs = records(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = WeakTr(WeakTrConfig("deit_tiny_patch16_224", NUM_CLASSES), "hub:deit_tiny_patch16_224.fb_in1k")
        save_checkpoint(tmp / "model.pt", cam_checkpoint(model.eval(), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        (tmp / "ref").mkdir()
        started = time.perf_counter()
        reference_loop(tmp / "model.pt", recs, tmp / "ref")
        ref_s = time.perf_counter() - started
        ours_s = labelgen_export(tmp / "model.pt", recs, tmp, args.workers, args.shard)
    rows = [
        {
            "method": "reference-style loop (1 process, torch threads = cores)",
            "images": len(recs),
            "seconds": round(ref_s, 2),
            "images_per_s": len(recs) / ref_s,
        },
        {
            "method": f"labelgen export_cams ({args.workers} dask workers)",
            "images": len(recs),
            "seconds": round(ours_s, 2),
            "images_per_s": len(recs) / ours_s,
        },
    ]
    print_table(rows)
    print(f"speed-up: {ref_s / ours_s:.2f}x")
    write_result(
        "export_cams_speed",
        rows,
        {
            "speedup": ref_s / ours_s,
            "scales": SCALES,
            "flip": True,
            "model": "deit_tiny_patch16_224",
            "classes": NUM_CLASSES,
        },
    )


if __name__ == "__main__":
    main()
