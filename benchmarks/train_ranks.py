"""Steps/s of each training stage with 1 and 2 data-parallel CPU ranks of one core each, and the share
of a step spent in communication (the gradient all-reduce, timed by the loop: `communication_s` of
each epoch's log entry).

A LocalCluster of 2 worker processes, each pinned to its own core (`os.sched_setaffinity`, so a
rank's torch uses 1 thread); the tiny demo data set (DeiT-Tiny) at `--size` px crops (64 is the
test recipe's: a step there is so small that the all-reduce of DeiT-Tiny's 5.7 M gradients dominates
it; 224, the model's own size, is what a real run's steps are like); the stage's own unit
function submitted as the runner would. 1 rank: the unit trains in its worker on one core. 2 ranks:
the unit starts one rank per worker (gloo). Steps/s and communication are from the last of 2 epochs
(the first warms up); the global batch is the same for both.

    python benchmarks/train_ranks.py --size 224 --images 64 --batch 16   # ~10 min on 2 idle cores
    python benchmarks/train_ranks.py --size 64 --images 64 --batch 8     # the test recipe's tiny steps

Writes benchmarks/results/train_ranks_<size>px.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import print_table, use_shared_weights, write_result

from labelgen.config import load_recipe
from labelgen.data.demo import generate_demo
from labelgen.pipeline.indexing import index_dataset
from labelgen.stages.train_cam import train_cam
from labelgen.stages.train_decoder import train_decoder

RECIPE = Path(__file__).resolve().parents[1] / "tests" / "tiny_demo.toml"


def pin_to_one_core(index_of: dict[str, int], dask_worker=None) -> int:
    """On each worker: keep one core of the machine (the n-th worker the n-th core)."""
    core = sorted(os.sched_getaffinity(0))[index_of[dask_worker.address] % os.cpu_count()]
    os.sched_setaffinity(0, {core})
    return core


def size_overrides(size: int) -> list[str]:
    """Crops of `size` px for both stages, from demo images a third larger (the test recipe's ratio)."""
    image = size * 3 // 2
    return [
        f"dataset.demo_image_size={image}",
        f"train_cam.input_size={size}",
        f"train_decoder.crop_size={size}",
        f"train_decoder.resize_short={image}",
        f"train_decoder.clip_window={size // 2}",
    ]


def run(stage: str, devices: int, root: Path, out: Path, batch: int, images: int, size: int) -> dict:
    from distributed import Client, LocalCluster

    overrides = [
        f"dataset.demo_train_images={images}",
        *size_overrides(size),
        f"{stage}.epochs=2",
        f"{stage}.batch_size={batch}",
        f"{stage}.devices={devices}",
        "train_cam.drop_path=0.0",
        "train_cam.precision=fp32",
        "train_decoder.precision=fp32",
        f"train_decoder.masks={root / 'masks'}",
    ]
    recipe = load_recipe(RECIPE, overrides)
    p, dataset = recipe[stage], recipe["dataset"]
    manifest = root / "index" / "manifest.json"
    args = (p, dataset, manifest, out) if stage == "train_cam" else (p, dataset, manifest, str(root / "masks"), out)
    fn = train_cam if stage == "train_cam" else train_decoder
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        order = {a: i for i, a in enumerate(sorted(client.scheduler_info()["workers"]))}
        client.run(pin_to_one_core, order)
        started = time.perf_counter()
        client.submit(fn, *args, pure=False).result()
        wall = time.perf_counter() - started
    last = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()][-1]
    steps = (images // batch) / last["seconds"]
    return {
        "stage": stage,
        "crop_px": size,
        "ranks": devices,
        "global_batch": batch,
        "steps_per_s": round(steps, 3),
        "communication_share": round(last.get("communication_s", 0.0) / last["seconds"], 3),
        "epoch_s": round(last["seconds"], 2),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64, help="demo train images (steps an epoch: images/batch)")
    parser.add_argument("--batch", type=int, default=8, help="global batch of both stages")
    parser.add_argument("--size", type=int, default=64, help="crop side of both stages, px")
    args = parser.parse_args()
    use_shared_weights()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        settings = [f"dataset.demo_train_images={args.images}", *size_overrides(args.size)]
        dataset = load_recipe(RECIPE, settings)["dataset"]
        generate_demo(root, dataset)
        index_dataset(dataset, root, root / "index")
        rows = []
        for stage in ("train_cam", "train_decoder"):
            for devices in (1, 2):
                out = Path(tmp) / f"{stage}-{devices}"
                out.mkdir()
                rows.append(run(stage, devices, root, out, args.batch, args.images, args.size))
                print(rows[-1], flush=True)
    for stage in ("train_cam", "train_decoder"):
        one, two = (r for r in rows if r["stage"] == stage)
        two["speedup"] = round(two["steps_per_s"] / one["steps_per_s"], 2)
    load = os.getloadavg()[0]
    path = write_result(
        f"train_ranks_{args.size}px", rows, {"images": args.images, "size": args.size, "load_average_1min_at_end": load}
    )
    print_table(rows)
    print(f"wrote {path} (1-min load average at the end: {load:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
