"""The index stage at scale: images/s per core and driver peak memory on synthetic COCO roots of N images.

A root of N images replicates coco128 with its real annotations: the 128 photos of ../shared are
symlinked under new file names with new image and annotation ids, so the instances JSON grows with
N as a real one does (about 4.4 kB per image; COCO train2014+val2014 is 450 MB for 122,218 images).
For each N the script runs `labelgen run index --dataset coco` in a subprocess on a LocalCluster of
`--workers` processes and samples the driver's peak RSS (its VmHWM, so a peak between samples still
counts; the worker processes are not the driver). Images/s per core = N / wall time / workers, the
wall time including process and cluster start, as a user waits for it; the task rate per core is N
over the summed times the index units record themselves (the work, without start-up). The driver's
serial parts come from its log: the listing ("index: listed ... in Xs") and the assembly.
Also timed: `labelgen data index` on the smallest root, and the start of a LocalCluster against a
process pool (what `data index` would pay before any work).

`--baseline REV` runs the same command on the code of git revision REV (extracted with `git archive`
into a temporary folder) beside this checkout's, for the sizes in `--baseline-sizes`.

The projection to COCO train+val on 16 cores assumes: the driver's listing pass over the instances
JSON is serial and scales with the JSON's size; the slice tasks keep the per-core rate measured
here (local disk, files in the page cache, one worker per core) and spread over 16 workers; the
driver's assembly of the manifest scales with the image count; start-up is what it was here.

    python benchmarks/index_scale.py                                     # 1k and 10k, this code
    python benchmarks/index_scale.py --sizes 1000 10000 50000 --baseline b08151d --baseline-sizes 1000 10000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
from _common import REPO, SHARED, print_table, write_result

COCO128 = SHARED / "data" / "coco128"
SPLIT = "train2017"
# COCO 2014 train + val, what the shipped coco recipe indexes (weaktr-method.md §1.6, §4.1)
FULL_IMAGES = 82_081 + 40_137
FULL_JSON_MB = 450.0
FULL_CORES = 16


def build_coco_root(root: Path, n: int) -> Path:
    """A COCO root of `n` images: coco128's photos repeated (symlinks, new names and ids) with their
    annotations (new ids, same shapes and categories)."""
    data = json.loads((COCO128 / "annotations" / f"instances_{SPLIT}.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    image_dir = root / "images" / SPLIT
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for k in range(n):
        copy, img = divmod(k, len(data["images"]))
        source = data["images"][img]
        new_id = copy * 1_000_000 + source["id"]
        name = f"{new_id:012d}.jpg"
        os.symlink(COCO128 / "images" / SPLIT / source["file_name"], image_dir / name)
        images.append({**source, "id": new_id, "file_name": name})
        for a in by_image.get(source["id"], []):
            annotations.append({**a, "id": copy * 10_000_000 + a["id"], "image_id": new_id})
    (root / "annotations").mkdir()
    doc = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    (root / "annotations" / f"instances_{SPLIT}.json").write_text(
        json.dumps({**doc, "images": images, "annotations": annotations})
    )
    return root


def checkout(rev: str, dest: Path) -> Path:
    """The package as it was at git revision `rev`, extracted into `dest`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_index(code: Path, root: Path, run_dir: Path, workers: int) -> dict:
    """Run `labelgen run index` with the package at `code`; wall seconds, driver peak MB, stage log."""
    cmd = [sys.executable, "-m", "labelgen.cli", "run", "index", "--dataset", "coco", "--data-root", str(root)]
    cmd += ["--run-dir", str(run_dir), "--workers", str(workers)]
    cmd += ["--set", f'dataset.train_split="{SPLIT}"', "--set", 'dataset.val_split=""']
    env = {**os.environ, "PYTHONPATH": str(code)}
    log = run_dir.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
        driver = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, _peak_rss(driver.pid))
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.1)
        proc.wait()
    wall = time.perf_counter() - started
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"labelgen exited with {proc.returncode}:\n{text[-3000:]}")
    success = json.loads(next(run_dir.glob("index/*/_SUCCESS.json")).read_text())
    return {"wall_s": wall, "driver_peak_mb": peak / 2**20, "stage": success, "log": text}


def _peak_rss(pid: int) -> int:
    """The high-water mark of a process's resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _logged_seconds(log: str, pattern: str) -> float | None:
    match = re.search(pattern, log)
    return float(match.group(1)) if match else None


def _task_seconds(run_dir: Path) -> float:
    """Sum of the index units' own times (from their completion records): the work, without worker
    start-up, imports or scheduling."""
    return sum(json.loads(p.read_text())["seconds"] for p in run_dir.glob("index/*/_shards/*.json"))


def measure(code: Path, label: str, root: Path, n: int, workers: int, tmp: Path) -> dict:
    json_mb = (root / "annotations" / f"instances_{SPLIT}.json").stat().st_size / 2**20
    run_dir = tmp / f"run-{label}-{n}"
    load = os.getloadavg()[0]
    result = run_index(code, root, run_dir, workers)
    task_s = _task_seconds(run_dir)
    listing = _logged_seconds(result["log"], r"index: listed .* in ([\d.]+)s")
    assembly = _logged_seconds(result["log"], r"index: .* assembled in ([\d.]+)s")
    row = {
        "code": label,
        "images": n,
        "json_mb": round(json_mb, 1),
        "workers": workers,
        "wall_s": round(result["wall_s"], 1),
        "images_per_s_per_core": round(n / result["wall_s"] / workers, 1),
        "driver_peak_mb": round(result["driver_peak_mb"]),
        "stage_s": result["stage"].get("seconds"),
        "listing_s": listing,
        "tasks_s_sum": round(task_s, 1),
        "task_images_per_s_per_core": round(n / task_s, 1),
        "assembly_s": assembly,
        "load_1min": f"{load:.1f}-{os.getloadavg()[0]:.1f}",
    }
    _remove_tree(run_dir)
    return row


def _remove_tree(path: Path) -> None:
    subprocess.run(["rm", "-rf", str(path)], check=True)


def projection(row: dict) -> dict | None:
    """COCO train+val on FULL_CORES cores from one measured row of this code (module docstring):
    fixed costs (process and cluster start, worker imports, shut-down) as measured, the listing
    scaled by JSON size, the assembly by image count, the tasks spread over FULL_CORES workers."""
    if row["listing_s"] is None or row["assembly_s"] is None:
        return None
    fixed = row["wall_s"] - row["listing_s"] - row["assembly_s"] - row["tasks_s_sum"] / row["workers"]
    listing = row["listing_s"] * FULL_JSON_MB / row["json_mb"]
    assembly = row["assembly_s"] * FULL_IMAGES / row["images"]
    tasks = FULL_IMAGES / (row["task_images_per_s_per_core"] * FULL_CORES)
    total = fixed + listing + assembly + tasks
    return {
        "from_images": row["images"],
        "fixed_s": round(fixed, 1),
        "listing_s": round(listing, 1),
        "tasks_s": round(tasks, 1),
        "assembly_s": round(assembly, 1),
        "total_s": round(total, 1),
    }


def data_index_row(root: Path, n: int, workers: int, tmp: Path) -> dict:
    """`labelgen data index` (no cluster: one slice in-process, more on a process pool)."""
    cmd = [sys.executable, "-m", "labelgen.cli", "data", "index", "--dataset", "coco", "--data-root", str(root)]
    cmd += ["--split", SPLIT, "--out", str(tmp / "m.json"), "--workers", str(workers)]
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
    wall = time.perf_counter() - started
    return {"command": "data index", "images": n, "workers": workers, "wall_s": round(wall, 1)}


def startup_rows(workers: int) -> list[dict]:
    """Seconds to start a LocalCluster (labelgen's `open_client`) and run one trivial task on each
    worker, against a process pool of the same size doing the same: what `data index` would pay
    before any work. Each in a fresh process (this script with --startup-probe)."""
    rows = []
    for kind, name in (("dask", "LocalCluster (open_client)"), ("pool", "process pool (forkserver)")):
        cmd = [sys.executable, __file__, "--startup-probe", kind, "--workers", str(workers)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
        rows.append({"start": name, "workers": workers, "seconds": round(float(out.stdout.split()[-1]), 1)})
    return rows


def _startup_probe(kind: str, workers: int) -> None:
    started = time.perf_counter()
    if kind == "dask":
        from labelgen.pipeline.cluster import open_client

        with open_client(None, workers) as client:
            client.gather(client.map(abs, range(workers)))
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            list(pool.map(abs, range(workers)))
    print(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--baseline", metavar="REV", help="also run the code of this git revision")
    parser.add_argument("--baseline-sizes", type=int, nargs="+", default=[1000])
    parser.add_argument("--startup-probe", choices=["dask", "pool"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup_probe:
        return _startup_probe(args.startup_probe, args.workers)
    load = os.getloadavg()
    rows, extra = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        codes = [(REPO, "this")]
        if args.baseline:
            codes.append((checkout(args.baseline, tmp / "baseline"), args.baseline))
        for n in sorted(set(args.sizes) | (set(args.baseline_sizes) if args.baseline else set())):
            root = build_coco_root(tmp / f"coco{n}", n)
            for code, label in codes:
                if n in (args.sizes if label == "this" else args.baseline_sizes):
                    rows.append(measure(code, label, root, n, args.workers, tmp))
                    print(rows[-1], flush=True)
            if n == min(args.sizes):
                extra.append(data_index_row(root, n, args.workers, tmp))
            _remove_tree(root)
    extra += startup_rows(args.workers)
    load_after = os.getloadavg()
    _add_speedups(rows)
    print_table(rows)
    print_table(extra)
    mine = [r for r in rows if r["code"] == "this"]
    projected = projection(max(mine, key=lambda r: r["images"])) if mine else None
    if projected:
        print(
            f"projected COCO train+val ({FULL_IMAGES:,} images, {FULL_JSON_MB:.0f} MB JSON) on {FULL_CORES} cores: "
            f"{projected['total_s']:.0f} s {projected}"
        )
    print(f"load average (1 min) before/after: {load[0]:.1f}/{load_after[0]:.1f} on {os.cpu_count()} cores")
    write_result(
        "index_scale",
        rows,
        {
            "other": extra,
            "load_average_before": [round(x, 2) for x in load],
            "load_average_after": [round(x, 2) for x in load_after],
            "projection_coco_train_val_16_cores": projected,
            # issue 13's figures for the code before this change (2 shared cores): 1k 60 s, 10k 224 s, 50k 1,149 s
            "issue_figures_before": {"1000": 60, "10000": 224, "50000": 1149},
        },
    )


def _add_speedups(rows: list[dict]) -> None:
    """images/s per core of this code over the baseline's, where both ran the same size."""
    for row in rows:
        base = next((b for b in rows if b["code"] != "this" and b["images"] == row["images"]), None)
        if row["code"] == "this" and base:
            row["speedup"] = round(row["images_per_s_per_core"] / base["images_per_s_per_core"], 1)


if __name__ == "__main__":
    main()
