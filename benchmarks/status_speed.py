"""`labelgen status` wall time and peak memory, as a user runs it (a fresh process each time), on a
finished demo-sized run folder; also the same with the model stack imported, which is what status
cost before it read only files (issue 13: 8–17 s and 876 MB).

    python benchmarks/status_speed.py [--run-dir runs/demo] [--repeats 5]

Without --run-dir it makes a run folder by indexing the tiny test demo (seconds).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, print_table, use_shared_weights, write_result

MEASURE = """
import resource, sys, time
started = time.perf_counter()
{imports}
from labelgen.cli import main
try:
    main(["status", "--run-dir", sys.argv[1]])
except SystemExit:
    pass
print("SECONDS", time.perf_counter() - started, "PEAK_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "TORCH", "torch" in sys.modules, file=sys.stderr)
"""


def one_run(run_dir: Path, imports: str) -> dict:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", MEASURE.format(imports=imports), str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    fields = out.stderr.split("SECONDS", 1)[1].split()
    return {"wall_s": wall, "in_process_s": float(fields[0]), "peak_mb": float(fields[2]), "torch": fields[4]}


def make_run(folder: Path) -> Path:
    use_shared_weights()
    run_dir = folder / "run"
    subprocess.run(
        [sys.executable, "-m", "labelgen.cli", "run", "index", "--dataset", "demo", "--recipe",
         str(REPO / "tests" / "tiny_demo.toml"), "--run-dir", str(run_dir), "--workers", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or make_run(Path(tmp))
        rows = []
        for name, imports in (("status", ""), ("status + torch/timm imported", "import torch, timm, distributed")):
            runs = [one_run(run_dir, imports) for _ in range(args.repeats)]
            rows.append(
                {
                    "what": name,
                    "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                    "max_wall_s": max(r["wall_s"] for r in runs),
                    "peak_mb": max(r["peak_mb"] for r in runs),
                    "imports_torch": runs[0]["torch"],
                }
            )
    print_table(rows)
    print(write_result("status_speed", rows, {"repeats": args.repeats}))


if __name__ == "__main__":
    main()
