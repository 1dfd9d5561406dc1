"""WeakTr ablations on real COCO images (../shared/data/coco128) with DeiT-Tiny on CPU.

Stage 1: pseudo-label mIoU of coarse CAM, mean-fusion fine CAM and AAF fine CAM, each without CRF
(CAM argmax at the background threshold) and with CRF. Stage 2: pseudo-labels vs refined
pseudo-masks (Segmenter predictions on the train images), with and without gradient clipping.

    python benchmarks/coco128_ablation.py        # ~40 min on 2 cores; writes benchmarks/results/coco128_ablation.json
"""

from __future__ import annotations

import json
import logging
import time

from _common import REPO, SHARED, print_table, use_shared_weights, write_result

from labelgen.config import load_recipe
from labelgen.pipeline.cluster import open_client
from labelgen.pipeline.runner import run_pipeline

RECIPE = REPO / "benchmarks" / "recipes" / "coco128_cpu.toml"
ROOT = SHARED / "data" / "coco128"
RUN = REPO / "runs" / "coco128"

VARIANTS = [  # (name, target, overrides)
    ("AAF fine CAM", "pseudo_labels", ()),
    ("coarse CAM", "pseudo_labels", ("export_cams.cam=coarse",)),
    ("mean-fusion fine CAM", "pseudo_labels", ("train_cam.fusion=mean",)),
    ("stage 2, gradient clipping", "full", ()),
    ("stage 2, no clipping", "full", ("train_decoder.gradient_clipping=false",)),
]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    use_shared_weights()
    rows = []
    with open_client(None, None) as client:
        for name, target, overrides in VARIANTS:
            recipe = load_recipe(RECIPE, [f"dataset.root={json.dumps(str(ROOT))}", *overrides])
            started = time.perf_counter()
            arts = run_pipeline(recipe, RUN, target, client)
            metrics = json.loads((arts["evaluate"].path / "metrics.json").read_text())
            row = {
                "variant": name,
                "cam_miou_no_crf": metrics["cams"]["miou"],
                "pseudo_label_miou_crf": metrics["pseudo_labels"]["miou"],
            }
            if "predict_train" in metrics:
                row["refined_train_miou"] = metrics["predict_train"]["miou"]
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print_table(rows)
    path = write_result("coco128_ablation", rows, {"recipe": str(RECIPE.relative_to(REPO)), "images": 126})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
