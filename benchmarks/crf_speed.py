"""pseudo_labels (dense CRF) throughput: a single-process loop vs 1 and 2 dask worker processes.

Real COCO photos (../shared/data/coco128) at full resolution, smooth synthetic CAMs for two
classes, the VOC reference CRF settings (10 iterations).

    python benchmarks/crf_speed.py [--images 32] [--per-task 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import SHARED, print_table, write_result

from labelgen.config import PseudoLabelsParams
from labelgen.data.images import read_image
from labelgen.pipeline.worker_process import prepare_worker_process
from labelgen.stages.pseudo_labels import pseudo_label

PARAMS = PseudoLabelsParams()


def make_cams(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    maps = []
    for _ in range(2):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.3) * min(h, w)
        maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    return np.stack(maps).astype(np.float32)


def label_files(pairs: list[tuple[str, str]]) -> int:
    """One task: pseudo-labels of several images, read from paths, nothing big returned."""
    for image_path, cam_path in pairs:
        pseudo_label(read_image(image_path), np.load(cam_path), np.array([1, 2]), PARAMS)
    return len(pairs)


def with_dask(pairs, workers: int, per_task: int) -> float:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.run(prepare_worker_process)  # as the pipeline's run_unit does
        client.submit(label_files, pairs[:1]).result()  # warm the workers' imports
        started = time.perf_counter()
        tasks = [pairs[i : i + per_task] for i in range(0, len(pairs), per_task)]
        client.gather([client.submit(label_files, t, pure=False) for t in tasks])
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the table shows medians")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = sorted((SHARED / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        pairs = []
        for p in images:
            cam = Path(tmp) / f"{p.stem}.npy"
            np.save(cam, make_cams(read_image(p), rng))
            pairs.append((str(p), str(cam)))
        loop_runs, one_runs, two_runs = [], [], []
        for _ in range(args.repeat):  # in turn, so that a noisy minute hits all three alike
            started = time.perf_counter()
            label_files(pairs)
            loop_runs.append(time.perf_counter() - started)
            one_runs.append(with_dask(pairs, 1, args.per_task))
            two_runs.append(with_dask(pairs, 2, args.per_task))
        loop_s, one, two = (statistics.median(r) for r in (loop_runs, one_runs, two_runs))
    n = len(pairs)
    rows = [
        {"method": "single-process loop", "seconds": round(loop_s, 2), "images_per_s": n / loop_s},
        {"method": "dask, 1 worker process", "seconds": round(one, 2), "images_per_s": n / one},
        {"method": "dask, 2 worker processes", "seconds": round(two, 2), "images_per_s": n / two},
    ]
    print_table(rows)
    print(f"2 workers vs 1: {one / two:.2f}x; 2 workers vs loop: {loop_s / two:.2f}x")
    write_result(
        "crf_speed",
        rows,
        {
            "images": n,
            "per_task": args.per_task,
            "repeat": args.repeat,
            "two_vs_one": one / two,
            "two_vs_loop": loop_s / two,
        },
    )


if __name__ == "__main__":
    main()
