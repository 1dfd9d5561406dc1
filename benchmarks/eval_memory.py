"""evaluate and export keep flat memory as the number of masks grows (1k vs 10k VOC-sized masks).

Builds a masks.zarr of N random 375×500 masks and N GT PNGs (every record points at one 375×500
photo), then runs the real evaluate shard task (`evaluate_shard`: confusion matrices, per-image
records, gallery rows with thumbnails) and the real VOC export task (`_png_task`) on a fresh 2-worker
LocalCluster, then evaluate's reduce and report.html writer in the driver (`reduce_parts`,
`write_html`), and reports the peak RSS of the driver and of each worker. The reference keeps every
prediction in memory (>200 GB on COCO val, its issue #30).

    python benchmarks/eval_memory.py [--sizes 1000 10000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import peak_rss_mb, print_table, write_result
from PIL import Image

from labelgen.config import EvaluateParams
from labelgen.data.manifest import ImageRecord
from labelgen.data.masks import write_mask
from labelgen.formats.voc import _voc_task
from labelgen.report.html import write_html
from labelgen.stages.evaluate import ShardJob, evaluate_shard, reduce_parts
from labelgen.store.sharded import StoreLayout, create_mask_store, write_mask_shard

H, W, LABELS, SHARD = 375, 500, 21, 32


def blocky_mask(rng: np.random.Generator) -> np.ndarray:
    small = rng.integers(0, LABELS, size=(6, 8)).astype(np.uint8)
    return np.kron(small, np.ones((63, 63), np.uint8))[:H, :W]


def build(root: Path, n: int) -> tuple[Path, list[ImageRecord]]:
    rng = np.random.default_rng(0)
    ids = tuple(f"{i:06d}" for i in range(n))
    layout = StoreLayout(ids, ((H, W),) * n, SHARD)
    store = root / "masks.zarr"
    create_mask_store(store, layout, {"split": "train"})
    (root / "gt").mkdir()
    photo = root / "photo.png"
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(photo)
    records = []
    for shard in range(layout.num_shards):
        masks = []
        for i in layout.shard_range(shard):
            gt = blocky_mask(rng)
            write_mask(root / "gt" / f"{ids[i]}.png", gt)
            tags = tuple(int(t) for t in np.unique(gt) if t)
            records.append(ImageRecord(ids[i], str(photo), W, H, tags, str(root / "gt" / f"{ids[i]}.png"), "train", ""))
            masks.append(np.where(rng.random((H, W)) < 0.1, (gt + 1) % LABELS, gt).astype(np.uint8))
        write_mask_shard(store, layout, shard, masks)
    return store, records


def job(store: Path, records: list[ImageRecord], rows: range, out: Path) -> ShardJob:
    """An evaluate task over predictions with GT, as `labelgen run` plans it (no CAMs, no classifier)."""
    return ShardJob(
        split="train",
        records=tuple(records[rows.start : rows.stop]),
        start=rows.start,
        stores={"predict_train": store},
        pair=None,
        cam_model=None,
        confidence_size=224,
        classes=tuple(f"class{i}" for i in range(LABELS)),
        thresholds=(0.43,),
        bg_threshold=0.43,
        thumbnail=EvaluateParams().thumbnail,
        not_scored={},
        max_pixels=40_000_000,
        out=out,
    )


def worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(n: int) -> dict:
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store, records = build(root, n)
        shards = [range(s, min(s + SHARD, n)) for s in range(0, n, SHARD)]
        (root / "parts").mkdir()
        (root / "voc").mkdir()
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            base = max(client.run(worker_peak_mb).values())
            started = time.perf_counter()
            jobs = [job(store, records, rows, root / "parts" / f"{k:06d}") for k, rows in enumerate(shards)]
            client.gather([client.submit(evaluate_shard, j, pure=False) for j in jobs])
            eval_s = time.perf_counter() - started
            eval_peak = max(client.run(worker_peak_mb).values())
            started = time.perf_counter()
            client.gather([client.submit(_voc_task, store, rows, root / "voc", {}, pure=False) for rows in shards])
            export_s = time.perf_counter() - started
            export_peak = max(client.run(worker_peak_mb).values())
        started = time.perf_counter()
        reduced = reduce_parts(jobs, LABELS)
        params = EvaluateParams()
        classes = tuple(f"class{i}" for i in range(LABELS))
        write_html(root / "report.html", root, [], classes, reduced.ranking, root / "parts", 50, params.gallery_inline)
        report_s = time.perf_counter() - started
        assert int(reduced.cms["predict_train"].sum()) == n * H * W and len(reduced.ranking) == n
        report_mb = (root / "report.html").stat().st_size / 2**20
        pages_mb = sum(p.stat().st_size for p in (root / "report_gallery").glob("*.js")) / 2**20
    return {
        "masks": n,
        "evaluate_s": round(eval_s, 1),
        "export_s": round(export_s, 1),
        "report_s": round(report_s, 1),
        "report_html_mb": round(report_mb, 1),
        "gallery_pages_mb": round(pages_mb, 1),
        "worker_idle_mb": round(base),
        "worker_peak_after_evaluate_mb": round(eval_peak),
        "worker_peak_after_export_mb": round(export_peak),
        "driver_peak_mb": round(peak_rss_mb()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    rows = [measure(n) for n in args.sizes]
    print_table(rows)
    write_result("eval_memory", rows, {"mask_size": [H, W], "labels": LABELS, "shard": SHARD})


if __name__ == "__main__":
    main()
