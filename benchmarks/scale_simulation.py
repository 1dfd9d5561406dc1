"""Internet scale by simulation: a synthetic manifest of N images (OpenImages has 9 M with image-level
labels) through what the driver does at that size, with the per-image work replaced by stubs.

    python benchmarks/scale_simulation.py [--sizes 100000 1000000] [--keep DIR]

For each N it builds a run folder directly (no pixels): a finished index (manifest of N rows, 90%
train, 1-3 of 80 tags each), export_cams half done (its `_plan.json` and a shard record per finished
unit), and the parts of a finished evaluate (per unit of 32 images: a confusion matrix .npz, the
per-image records .json made by the real `image_quality`, and ~200-byte gallery rows .html). Then,
each in a fresh process (seconds, peak RSS of that process = the driver's):

- `labelgen run full --dry-run` (planning: every stage's key, state and pre-start checks);
- `labelgen status`;
- `Manifest.load` (what every stage's plan and finalize does), and cutting export_cams into its
  per-shard dask tasks (`shard_units`; the number of tasks and the pickled size sent to the scheduler);
- the evaluate reduce (`reduce_parts`: matrices summed, records streamed, ranking sorted);
- report paging (`write_html`: report.html plus report_gallery/page-*.js).

Writes benchmarks/results/scale_simulation.json and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, RESULTS, print_table, use_shared_weights, write_result

SHARD = 32  # images per unit: the shipped recipes' export_cams / pseudo_labels / predict / evaluate shard_size
CLASSES = 80
TRAIN_SHARE = 0.9


def build_run(folder: Path, n: int, evaluate: bool) -> dict:
    """A run folder of the demo recipe whose index, export_cams (half) and evaluate parts are written
    directly; returns what was made (files per stage)."""
    sys.path.insert(0, str(REPO))

    from labelgen.config import load_recipe, recipe_path
    from labelgen.data.manifest import write_manifest
    from labelgen.pipeline.runner import plan_run, record_run
    from labelgen.store.artifact import PLAN_FILE, write_json_atomic

    recipe = load_recipe(recipe_path("demo"), ())
    run_dir = folder / "run"
    plan = {p.stage.name: p for p in plan_run(recipe, run_dir, "full")}
    record_run(run_dir, recipe, "full", list(plan.values()))
    rng = random.Random(0)
    classes = ("background", *(f"class{c:02d}" for c in range(1, CLASSES + 1)))
    n_train = int(n * TRAIN_SHARE)

    def rows():
        for i in range(n):
            split = "train" if i < n_train else "val"
            tags = tuple(sorted(rng.sample(range(1, CLASSES + 1), rng.randint(1, 3))))
            yield {"id": f"{i:09d}", "image": f"/data/openimages/{split}/{i:09d}.jpg", "width": 640, "height": 480,
                   "tags": list(tags), "mask": None, "split": split, "sha256": f"{i:064x}", "orientation": 1,
                   "source_id": None}  # fmt: skip

    index = plan["index"].artifact
    index.path.mkdir(parents=True)
    write_manifest(index.path / "manifest.json", "demo", classes, None, rows())
    (index.path / "problems.json").write_text("[]")
    outputs = {"outputs": {"manifest": ["manifest.json"], "problems": ["problems.json"]}}
    index.write_success(plan["index"].key_params, {}, {"images": n, **outputs})

    export = plan["export_cams"].artifact
    units = -(-n_train // SHARD)
    export.path.mkdir(parents=True)
    write_json_atomic(export.path / PLAN_FILE, {"units": units, "labels": [f"shard {u}" for u in range(units)]})
    for u in range(units // 2):  # half done; a record per unit, as run_unit writes it (files: none, see docstring)
        export.write_shard_record(u, [], {"label": f"shard {u}", "seconds": 1.0, "images": SHARD})

    jobs = 0
    if not evaluate:
        return {"run_dir": str(run_dir), "export_units": units, "export_records": units // 2, "evaluate_units": 0}
    parts = plan["evaluate"].artifact.path / "parts"
    parts.mkdir(parents=True)
    for split, first, stop in (("train", 0, n_train), ("val", n_train, n)):  # the units of evaluate's _jobs
        for start in range(first, stop, SHARD):
            jobs += write_part(parts / f"{jobs:06d}", split, range(start, min(start + SHARD, stop)))
    return {"run_dir": str(run_dir), "export_units": units, "export_records": units // 2, "evaluate_units": jobs}


@functools.cache
def _template(split: str, tag: int) -> dict:
    """The record `evaluate_image` writes for an image with one tag, made by the real `image_quality`."""
    import numpy as np

    from labelgen.data.manifest import ImageRecord
    from labelgen.numerics.quality import image_quality, rank_key

    r = ImageRecord("", "", 640, 480, (tag,), None, split, "")
    rec = image_quality(r, split, {"pseudo_labels": np.full((4, 4), tag, np.uint8)}, CLASSES + 1, [0.5], {})
    rec["score"], rec["rank"] = rank_key(rec)
    return rec


def write_part(out: Path, split: str, images: range) -> int:
    """One evaluate unit's parts, as evaluate_shard writes them; returns 1."""
    import numpy as np

    num = CLASSES + 1
    row_html = "<div class=row>" + "x" * 180 + "</div>"
    records = []
    for k, i in enumerate(images):
        rank = (i * 7919 % 1000) / 1000  # a spread of ranks to sort
        rec = {**_template(split, 1 + i % CLASSES), "id": f"{i:09d}", "score": rank, "rank": rank}
        records.append({**rec, "offset": k * len(row_html), "length": len(row_html)})
    np.savez(out.with_suffix(".npz"), agreement=np.zeros((num, num), np.int64),
             pseudo_labels=np.zeros((1, num, num), np.int64))  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(records))
    out.with_suffix(".html").write_text(row_html * len(records))
    return 1


MEASURE = """
import json, sys, time
sys.path.insert(0, {repo!r})
started = time.perf_counter()
{body}
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the parent's peak
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("RESULT", json.dumps({{"seconds": time.perf_counter() - started, "cpu_s": time.process_time(),
                            "peak_mb": hwm / 1024, **extra}}))
"""

CLI = """
from labelgen.cli import main
try:
    main({args!r})
except SystemExit as e:
    assert not e.code, e.code
extra = {{}}
"""

LOAD_AND_CUT = """
import pickle
from pathlib import Path
from labelgen.data.manifest import Manifest
from labelgen.pipeline.stage import shard_units
from labelgen.store.sharded import StoreLayout
manifest = Manifest.load(next(Path({run!r}).glob("index/*/manifest.json")))
loaded = time.process_time()
train = manifest.split("train")
layout = StoreLayout(tuple(r.id for r in train), tuple((r.height, r.width) for r in train), {shard})
units = shard_units(print, None, Path("/data"), train, layout, Path("/store"), 0)
extra = {{"load_s": loaded, "tasks": len(units), "pickled_mb": len(pickle.dumps(units)) / 1e6}}
"""

REDUCE = """
from pathlib import Path
from labelgen.data.manifest import Manifest
from labelgen.report.html import write_html
from labelgen.stages.evaluate import ShardJob, reduce_parts
run = Path({run!r})
parts = next(run.glob("evaluate/*/parts"))
manifest = Manifest.load(next(run.glob("index/*/manifest.json")))
jobs = []
for split in ("train", "val"):
    records = manifest.split(split)
    for start in range(0, len(records), {shard}):
        chunk = tuple(records[start:start + {shard}])
        jobs.append(ShardJob(split, chunk, start, {{"pseudo_labels": Path()}}, None, None, 0, manifest.classes,
                             (), 0.5, 64, {{}}, 0, parts / f"{{len(jobs):06d}}"))
planned = time.process_time()
reduced = reduce_parts(jobs, manifest.num_labels)
reduce_s = time.process_time() - planned
paged = time.process_time()
write_html(parts.parent / "report.html", run, [], manifest.classes, reduced.ranking, parts, 50, 500)
gallery = list((parts.parent / "report_gallery").glob("*.js"))
extra = {{"plan_s": planned, "reduce_s": reduce_s, "paging_s": time.process_time() - paged,
          "gallery_files": len(gallery), "report_html_mb": (parts.parent / "report.html").stat().st_size / 1e6,
          "gallery_mb": sum(p.stat().st_size for p in gallery) / 1e6}}
"""


def measure(body: str) -> dict:
    code = MEASURE.format(repo=str(REPO), body=body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if out.returncode or "RESULT" not in out.stdout:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.split("RESULT", 1)[1])


def one_size(n: int, folder: Path, evaluate: bool) -> list[dict]:
    started = time.perf_counter()
    made = build_run(folder, n, evaluate)
    build_s = time.perf_counter() - started
    run = made["run_dir"]
    manifest_mb = next(Path(run).glob("index/*/manifest.json")).stat().st_size / 1e6
    print(f"N={n}: run folder built in {build_s:.0f}s (manifest {manifest_mb:.0f} MB)", file=sys.stderr)
    dry = measure(CLI.format(args=["run", "full", "--dataset", "demo", "--run-dir", run, "--dry-run"]))
    status = measure(CLI.format(args=["status", "--run-dir", run]))
    cut = measure(LOAD_AND_CUT.format(run=run, shard=SHARD))
    base = {"images": n}
    rows = [
        {**base, "what": "run full --dry-run", **timing(dry)},
        {**base, "what": "status (export_cams half done)", **timing(status), "files": made["export_records"]},
        {**base, "what": "Manifest.load", "cpu_s": cut["load_s"], "files": 1, "file_mb": round(manifest_mb, 1)},
        {**base, "what": "load + cut export_cams into tasks", **timing(cut), "tasks": cut["tasks"],
         "pickled_mb": round(cut["pickled_mb"], 1)},
    ]  # fmt: skip
    if not evaluate:
        return rows
    reduce = measure(REDUCE.format(run=run, shard=SHARD))
    return rows + [
        {**base, "what": "evaluate: imports, load, jobs", "cpu_s": reduce["plan_s"], "tasks": made["evaluate_units"],
         "files": 3 * made["evaluate_units"]},
        {**base, "what": "evaluate reduce", "cpu_s": reduce["reduce_s"]},
        {**base, "what": "report paging (write_html)", "cpu_s": reduce["paging_s"],
         "files": reduce["gallery_files"] + 1, "file_mb": round(reduce["report_html_mb"] + reduce["gallery_mb"], 1)},
        {**base, "what": "evaluate finalize process in all", **timing(reduce)},
    ]  # fmt: skip


def timing(m: dict) -> dict:
    """A whole process's wall and CPU seconds and peak RSS (wall time on a shared machine says little)."""
    return {"wall_s": round(m["seconds"], 2), "cpu_s": round(m["cpu_s"], 2), "peak_mb": round(m["peak_mb"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--keep", type=Path, help="Build the run folders here and keep them.")
    parser.add_argument(
        "--evaluate-sizes", type=int, nargs="*", help="Sizes to simulate evaluate at [default: every size]"
    )
    args = parser.parse_args()
    evaluate_sizes = args.sizes if args.evaluate_sizes is None else args.evaluate_sizes
    use_shared_weights()  # the dry-run's pre-start checks look for the recipe's weights
    rows = []
    for n in args.sizes:
        folder = (args.keep / str(n)) if args.keep else Path(tempfile.mkdtemp(prefix=f"scale{n}-"))
        try:
            rows += one_size(n, folder, n in evaluate_sizes)
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        print_table(rows)
        print(save(rows))


def save(rows: list[dict]) -> Path:
    """Write the rows, keeping the rows of other sizes from an earlier run of the script."""
    path = RESULTS / "scale_simulation.json"
    sizes = {r["images"] for r in rows}
    kept = [r for r in json.loads(path.read_text())["rows"] if r["images"] not in sizes] if path.is_file() else []
    return write_result("scale_simulation", kept + rows, {"shard_size": SHARD, "classes": CLASSES})


if __name__ == "__main__":
    main()
