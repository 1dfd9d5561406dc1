"""export_cams throughput: labelgen's shard tasks vs a reference-style loop, in turn, same machine.

Same images (real COCO photos from ../shared/data/coco128), same weights (DeiT-Tiny WeakTr), same
scales (1.0, 1.2) with flips. The reference-style loop does what the reference's
`generate_attention_maps_ms` does: one image a time, one forward per scale and per flip, the
attention maps stacked into one B×K×N×N tensor before fusion, every class upsampled, one `.npy` per
image. labelgen runs its export_cams shard function as dask tasks on a LocalCluster: attention
fused layer by layer, only tagged classes upsampled, flips merged before upsampling, shards in
parallel single-threaded worker processes, zarr output. The table also says how far the two outputs
are apart: the largest difference of the normalised CAMs, and the share of pixels whose CAM label
(argmax at background threshold 0.43) differs.

Precision: the reference wraps its forward in `torch.cuda.amp.autocast()`, which only touches CUDA
ops; on a CPU torch disables it ("CUDA is not available. Disabling autocast"), so the reference
runs in fp32 here, and so does the loop by default. labelgen runs at its stage default,
`precision = "auto"`, which is bf16 on a CPU with native bf16 (this benchmark's machine) and fp32
elsewhere. `--reference-precision bf16` gives the like-for-like comparison of the schedules alone.

    python benchmarks/export_cams_speed.py [--images 32] [--workers 2] [--precision auto|bf16|fp32]
        [--reference-precision fp32|bf16] [--views-per-pass 1] [--checkpoint runs/.../train_cam/<key>/model.pt]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from _common import SHARED, print_table, use_shared_weights, write_result
from PIL import Image

from labelgen.config import ExportCamsParams
from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord
from labelgen.models import weaktr
from labelgen.models.cam_inference import load_cam_model, save_cam_model
from labelgen.models.precision import PRECISIONS, autocast, resolve_precision
from labelgen.models.weaktr import WeakTr, WeakTrConfig
from labelgen.numerics.maps_to_labels import cam_to_labels
from labelgen.stages.export_cams import export_shard, stored_size
from labelgen.store.sharded import ImageArrays, StoreLayout, create_cam_store

SCALES = (1.0, 1.2)
BG_THRESHOLD = 0.43
FRESH_CLASSES = 20


def records(n: int, num_classes: int) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    paths = sorted((SHARED / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:n]
    out = []
    for p in paths:
        h, w = read_image(p).shape[:2]
        tags = tuple(sorted(rng.choice(np.arange(1, num_classes + 1), size=int(rng.integers(1, 4)), replace=False)))
        out.append(ImageRecord(p.stem, str(p), w, h, tuple(int(t) for t in tags), None, "train", ""))
    return out


def stacked_fusion(maps: list[torch.Tensor], weights: torch.Tensor | None) -> torch.Tensor:
    """The reference's fusion (weaktr-method.md §1.4): stack the maps to L×B×H×N×N, arrange them as
    B×K×N×N (j = h·L + l), weight them and take the mean over K. Same result as labelgen's
    `fuse_attention`, which accumulates layer by layer instead (a test checks they agree)."""
    stacked = torch.stack(list(maps)).permute(1, 2, 0, 3, 4).flatten(1, 2)  # B, K, N, N
    if weights is not None:
        stacked = stacked * weights[:, :, None, None].to(stacked.dtype)
    return stacked.mean(dim=1)


def reference_loop(model_path: Path, recs: list[ImageRecord], out: Path, precision: str) -> None:
    """As `generate_attention_maps_ms`: one image at a time, one forward per scale and per flip with
    autocast and the stacked fusion, every class upsampled, un-flipped and summed, tagged classes
    min–max normalised, one .npy per image."""
    model = load_cam_model(model_path, torch.device("cpu"))
    m, s = model.pixel_mean, model.pixel_std
    with mock.patch.object(weaktr, "fuse_attention", stacked_fusion):
        for r in recs:
            pil = Image.open(r.image).convert("RGB")
            total = None
            for scale in SCALES:
                size = (round(r.width * scale), round(r.height * scale))
                x = torch.from_numpy(np.array(pil.resize(size, Image.BICUBIC))).permute(2, 0, 1)[None].float() / 255
                x = (x - m) / s
                for flip in (False, True):
                    with torch.no_grad(), autocast(torch.device("cpu"), precision):
                        cam = model(x.flip(-1) if flip else x).fine_cam.float()  # every layer's maps kept
                    cam = F.interpolate(cam, size=(r.height, r.width), mode="bilinear", align_corners=False)
                    cam = cam.flip(-1) if flip else cam
                    total = cam if total is None else total + cam
            maps = total[0, [t - 1 for t in r.tags]]
            lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
            np.save(out / f"{r.id}.npy", ((maps - lo) / (hi - lo + 1e-8)).numpy())


def _warm_worker() -> None:
    """Imports done (as in the reference process) and the process set up as the pipeline's run_unit does."""
    import labelgen.stages.export_cams  # noqa: F401  (torch, timm, zarr)
    from labelgen.pipeline.worker_process import prepare_worker_process

    prepare_worker_process()


def labelgen_export(
    model_path: Path, recs: list[ImageRecord], out: Path, workers: int, shard: int, precision: str, views: int
) -> float:
    from distributed import Client, LocalCluster

    params = ExportCamsParams(scales=SCALES, shard_size=shard, batch_size=views, precision=precision)
    layout = StoreLayout(tuple(r.id for r in recs), tuple(stored_size(r, 1, params.max_side) for r in recs), shard)
    store = out / "cams.zarr"
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.run(_warm_worker)
        started = time.perf_counter()
        create_cam_store(store, layout, 3, {})
        futures = [
            client.submit(export_shard, params, model_path, recs[rows.start : rows.stop], layout, i, store, 10**8)
            for i, rows in ((i, layout.shard_range(i)) for i in range(layout.num_shards))
        ]
        client.gather(futures)
        return time.perf_counter() - started


def agreement(recs: list[ImageRecord], ref_dir: Path, store: Path) -> dict[str, float]:
    """Largest |CAM difference| and the share of pixels whose CAM label differs, ours vs the loop's."""
    arrays = ImageArrays(store)
    max_diff, differ, pixels = 0.0, 0, 0
    for i, r in enumerate(recs):
        ref = np.load(ref_dir / f"{r.id}.npy")
        ours, classes = arrays.cam(i)
        max_diff = max(max_diff, float(np.abs(ours.astype(np.float32) - ref).max()))
        labels = np.array(r.tags)
        differ += int((cam_to_labels(ours, classes, BG_THRESHOLD) != cam_to_labels(ref, labels, BG_THRESHOLD)).sum())
        pixels += ref.shape[1] * ref.shape[2]
    return {"max_cam_diff": max_diff, "label_disagreement": differ / pixels}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard", type=int, default=8)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="labelgen's export_cams.precision")
    parser.add_argument(
        "--reference-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the loop's precision; fp32 is what the reference's CUDA-only autocast gives on a CPU",
    )
    parser.add_argument("--views-per-pass", type=int, default=1, help="export_cams.batch_size (1 is best on CPU)")
    parser.add_argument(
        "--checkpoint", type=Path, help="a trained train_cam model.pt (default: fresh WeakTr with DeiT-Tiny weights)"
    )
    args = parser.parse_args()
    use_shared_weights()
    ref_precision = args.reference_precision
    precision = resolve_precision(torch.device("cpu"), args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.checkpoint:
            model_path = args.checkpoint
            num_classes = load_cam_model(model_path, torch.device("cpu")).config.num_fg_classes
        else:
            model_path, num_classes = tmp / "model.pt", FRESH_CLASSES
            torch.manual_seed(0)
            model = WeakTr(WeakTrConfig("deit_tiny_patch16_224", num_classes), "hub:deit_tiny_patch16_224.fb_in1k")
            save_cam_model(model_path, model.eval())
        recs = records(args.images, num_classes)
        (tmp / "ref").mkdir()
        started = time.perf_counter()
        reference_loop(model_path, recs, tmp / "ref", ref_precision)
        ref_s = time.perf_counter() - started
        ours_s = labelgen_export(model_path, recs, tmp, args.workers, args.shard, precision, args.views_per_pass)
        agree = agreement(recs, tmp / "ref", tmp / "cams.zarr")
    rows = [
        {
            "method": f"reference-style loop (1 process, 2 threads, {ref_precision})",
            "images": len(recs),
            "seconds": round(ref_s, 2),
            "images_per_s": len(recs) / ref_s,
        },
        {
            "method": f"labelgen ({args.workers} workers, {precision}, {args.views_per_pass} view/pass)",
            "images": len(recs),
            "seconds": round(ours_s, 2),
            "images_per_s": len(recs) / ours_s,
        },
    ]
    print_table(rows)
    print(f"speed-up: {ref_s / ours_s:.2f}x")
    print(
        f"largest CAM difference {agree['max_cam_diff']:.4f}; "
        f"CAM labels differ on {agree['label_disagreement']:.4%} of pixels"
    )
    write_result(
        "export_cams_speed",
        rows,
        {
            "speedup": ref_s / ours_s,
            "precision": precision,
            "reference_precision": ref_precision,
            "views_per_pass": args.views_per_pass,
            **agree,
            "scales": SCALES,
            "flip": True,
            "checkpoint": str(args.checkpoint or "fresh deit_tiny_patch16_224"),
            "classes": num_classes,
        },
    )


if __name__ == "__main__":
    main()
