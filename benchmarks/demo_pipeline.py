"""The demo pipeline end to end: wall time and peak RSS (driver + workers) per stage.

Runs `labelgen run full --dataset demo` in a fresh run folder, samples the RSS of the whole process
tree every 0.5 s, and attributes each sample to the stage then running.

    python benchmarks/demo_pipeline.py
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _common import REPO, print_table, use_shared_weights, write_result

STAGES = ("index", "train_cam", "export_cams", "pseudo_labels", "train_decoder", "predict", "evaluate")


def running_stage(run_dir: Path) -> str | None:
    for stage in reversed(STAGES):
        for art in run_dir.glob(f"{stage}/*"):
            if art.is_dir() and not (art / "_SUCCESS.json").exists():
                return stage
    return None


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def main() -> None:
    use_shared_weights()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "labelgen.cli", "run", "full", "--dataset", "demo", "--run-dir", str(run_dir)]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
        ps = psutil.Process(proc.pid)
        peaks: dict[str, int] = {}
        while proc.poll() is None:
            stage = running_stage(run_dir) or "startup"
            peaks[stage] = max(peaks.get(stage, 0), tree_rss(ps))
            time.sleep(0.5)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"labelgen exited with {proc.returncode}")
        rows = []
        for stage in STAGES:
            success = json.loads(next(run_dir.glob(f"{stage}/*/_SUCCESS.json")).read_text())
            rows.append(
                {"stage": stage, "seconds": success["seconds"], "peak_rss_mb": round(peaks.get(stage, 0) / 2**20)}
            )
        metrics = json.loads(next(run_dir.glob("evaluate/*/metrics.json")).read_text())
    print_table(rows)
    print(f"total wall time {wall:.0f}s")
    miou = {k: round(v["miou"], 4) for k, v in metrics.items() if isinstance(v, dict) and "miou" in v}
    print(f"mIoU {miou}")
    write_result("demo_pipeline", rows, {"wall_seconds": round(wall, 1), "miou": miou})


if __name__ == "__main__":
    main()
