"""Where CAM export and training time goes on a CPU: the figures behind export_cams' design choices.

One WeakTr view (fresh DeiT-Tiny, 20 classes, a 640×480 image) on one torch thread, each case in
its own process:
- fp32 vs bf16 autocast, one view a pass vs two (an image and its flip batched);
- bf16 with dask's MALLOC_TRIM_THRESHOLD_=65536 in the environment, without and with labelgen's
  worker set-up (`labelgen/pipeline/worker_process.py`);
- the share of a view's time spent in the traced ViT forward and in the attention fusion.
And a train_cam step (16 images at 224 px, 80 classes, every core): fp32 vs bf16.

    python benchmarks/cpu_forward.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _common import print_table, seconds_per_call, write_result

CASES = {
    "fp32, 1 view a pass": {"precision": "fp32", "views": 1},
    "fp32, 2 views a pass": {"precision": "fp32", "views": 2},
    "bf16, 1 view a pass": {"precision": "bf16", "views": 1},
    "bf16, 1 view, MALLOC_TRIM_THRESHOLD_=65536": {"precision": "bf16", "views": 1, "trim": True},
    "bf16, 1 view, that variable + worker set-up": {"precision": "bf16", "views": 1, "trim": True, "prepare": True},
}
REPEATS = 6


def probe(case: dict) -> dict:
    """Runs in a fresh process: seconds per view, and the backbone and fusion shares."""
    import torch

    from labelgen.config import ExportCamsParams
    from labelgen.models.precision import autocast
    from labelgen.models.weaktr import WeakTr, WeakTrConfig, fuse_attention
    from labelgen.pipeline.worker_process import prepare_worker_process

    if case.get("prepare"):
        prepare_worker_process()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = WeakTr(WeakTrConfig("deit_tiny_patch16_224", 20), None).eval()
    x = torch.randint(0, 256, (case["views"], 3, 480, 640), dtype=torch.uint8)
    cpu = torch.device("cpu")

    with torch.no_grad(), autocast(cpu, case["precision"]):
        cache = ExportCamsParams().attention_cache_mb * 2**20  # as export_cams runs by default
        total = seconds_per_call(lambda: model.cams(x, "fine", cache), REPEATS)
        normalised = model.normalise(x)
        backbone = seconds_per_call(lambda: model.backbone.forward_features(normalised, trace=True), REPEATS)
        maps = model.backbone.forward_features(normalised, trace=True).attn_maps
        fusion = seconds_per_call(lambda: fuse_attention(maps, None), REPEATS)
    return {"s_per_view": total / case["views"], "vit_share": backbone / total, "fusion_share": fusion / total}


def train_step(precision: str) -> float:
    """Seconds per train_cam step of 16 images at 224 px, 80 classes, every core."""
    import torch

    from labelgen.models.weaktr import WeakTr, WeakTrConfig
    from labelgen.stages.train_cam import cam_step

    torch.manual_seed(0)
    model = WeakTr(WeakTrConfig("deit_tiny_patch16_224", 80), None).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x, y = torch.randint(0, 256, (16, 3, 224, 224), dtype=torch.uint8), (torch.rand(16, 80) < 0.04).float()
    return seconds_per_call(lambda: cam_step(model, optimizer, x, y, precision), 3)


def in_subprocess(kind: str, arg: dict | str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    if isinstance(arg, dict) and arg.get("trim"):
        env["MALLOC_TRIM_THRESHOLD_"] = "65536"
    cmd = [sys.executable, __file__, "--probe", kind, json.dumps(arg)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        arg = json.loads(sys.argv[3])
        print(json.dumps(probe(arg) if sys.argv[2] == "view" else {"s_per_step": train_step(arg)}))
        return
    rows = [{"case": name, **in_subprocess("view", case)} for name, case in CASES.items()]
    print_table(rows)
    steps = [{"train_cam step": p, **in_subprocess("step", p)} for p in ("fp32", "bf16")]
    print_table(steps)
    path = write_result("cpu_forward", rows, {"train_cam_steps": steps, "image": "640x480", "threads": 1})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
