"""Speed and peak memory of export_cams and predict per backbone family, on the CPU, random weights
(speed and memory do not depend on weight values): DeiT-S (vit), DINOv2-S with 4 registers at
patch 16 (dinov2), EVA-02-S at patch 16 (eva02).

Each cell runs in a fresh process (one torch thread: a dask worker's set-up, `prepare_worker_process`)
and reports images/s of wall time, the CPU seconds the process spent on the image (on a shared
machine the steadier figure), and the process's peak RSS, with in brackets what the image added beyond the
process before it (imports, model, the photo):
- export: `multiscale_cams` as the export_cams stage calls it: 20 classes, 2 tags, scales 1.0 and
  1.2 with flips, fine CAMs, one view a pass, export_cams.max_side and attention_cache_mb defaults,
  CAMs stored at `stored_size`;
- predict: `predict_probs` + `probs_to_mask` without the CRF, 21 labels, one scale (1.0) without
  flips (the recipe's 6 scales × flips take 12× the passes), default windows and predict.max_side.

Sizes: 500×375 (a VOC photo), 853×640 (export only: its largest view is 1024 px, export_cams.max_side)
and 4000×3000 (a 12 Mpx phone photo). The bound holds when the 12 Mpx photo's peak exceeds the 853×640
one's by little more than the photo itself (36 MB) and its stored CAMs.

    nice -n 10 python benchmarks/backbones.py            # ~10 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import peak_rss_mb, print_table, write_result

FAMILIES = {  # family -> (architecture, patch size)
    "vit (DeiT-S)": ("deit_small_patch16_224", 0),
    "dinov2 (DINOv2-S reg4, p16)": ("vit_small_patch14_reg4_dinov2", 16),
    "eva02 (EVA-02-S, p16)": ("eva02_small_patch14_224", 16),
}
SIZES = {"export": [(375, 500), (640, 853), (3000, 4000)], "predict": [(375, 500), (3000, 4000)]}  # (h, w)


def measure(case: dict) -> dict:
    """One cell, in this process: seconds and peak RSS of one image through one stage."""
    import numpy as np
    import torch

    from labelgen.config import ExportCamsParams, PredictParams
    from labelgen.models.cam_inference import multiscale_cams
    from labelgen.models.segmenter import Segmenter, SegmenterConfig
    from labelgen.models.weaktr import WeakTr, WeakTrConfig
    from labelgen.pipeline.worker_process import prepare_worker_process
    from labelgen.stages.export_cams import stored_size
    from labelgen.stages.predict import predict_probs, probs_to_mask

    prepare_worker_process()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    h, w = case["size"]
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if case["stage"] == "export":
        p = ExportCamsParams()
        model = WeakTr(WeakTrConfig(case["arch"], 20, patch_size=case["patch"]), None).eval()
        with torch.no_grad():
            model.head.weight.normal_(0, 0.05)  # CAMs that are not all zero

        class Record:  # what stored_size reads
            height, width = h, w

        out = stored_size(Record, p.stride, p.max_side)

        def run():
            return multiscale_cams(
                model, [image], [(3, 7)], p.scales, p.flip, p.cam, out, "fp32", 1,
                max_side=p.max_side, cache_bytes=p.attention_cache_mb * 2**20,
            )  # fmt: skip
    else:
        p = PredictParams(scales=(1.0,), flip=False, crf=False)
        model = Segmenter(SegmenterConfig(case["arch"], 21, image_size=480, patch_size=case["patch"]), None).eval()

        def run():
            return probs_to_mask(image, predict_probs(model, image, p), p)

    before = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    run()
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "peak_mb": peak_rss_mb(),
        "before_mb": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one cell, in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(json.loads(args.case))))
        return
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    rows = []
    for family, (arch, patch) in FAMILIES.items():
        for stage in ("export", "predict"):
            row = {"family": family, "stage": stage}
            for h, w in SIZES[stage]:
                case = json.dumps({"arch": arch, "patch": patch, "stage": stage, "size": [h, w]})
                done = subprocess.run(
                    [sys.executable, __file__, "--case", case], env=env, capture_output=True, text=True
                )
                if done.returncode:
                    raise SystemExit(done.stderr[-3000:])
                r = json.loads(done.stdout.strip().splitlines()[-1])
                row[f"{w}x{h} img/s (CPU s)"] = f"{1 / r['seconds']:.3g} ({r['cpu_seconds']:.3g})"
                row[f"{w}x{h} peak MB (+image)"] = f"{r['peak_mb']:.0f} (+{r['peak_mb'] - r['before_mb']:.0f})"
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows)
    path = write_result(
        "backbones",
        rows,
        {
            "notes": "CPU, 1 torch thread per process, random weights, fp32; export: scales 1.0+1.2 with flips, "
            "20 classes, 2 tags; predict: one scale without flips, no CRF, 21 labels"
        },  # fmt: skip
    )
    print(f"-> {path}")


if __name__ == "__main__":
    main()
