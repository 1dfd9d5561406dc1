"""WeakTr ablations, as the paper's, on CPU-sized data with DeiT-Tiny.

Stage 1 (`--part cams`): pseudo-label mIoU of coarse CAM, mean-fusion fine CAM and AAF fine CAM, each
without CRF (CAM argmax at the recipe's background threshold) and with CRF.
Stage 2 (`--part decoder`): pseudo-labels vs refined pseudo-masks (Segmenter predictions on the train
images) and val predictions, with and without gradient clipping.

    python benchmarks/ablation.py --dataset demo --part cams decoder      # ~15 min on 2 cores
    python benchmarks/ablation.py --dataset coco128 --part decoder        # ~40 min on 2 cores

Writes benchmarks/results/ablation_<dataset>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from _common import REPO, SHARED, print_table, use_shared_weights, write_result

from labelgen.config import load_recipe, recipe_path
from labelgen.pipeline.cluster import open_client
from labelgen.pipeline.runner import run_pipeline

DATASETS = {
    "demo": (recipe_path("demo"), []),
    "coco128": (
        REPO / "benchmarks" / "recipes" / "coco128_cpu.toml",
        [f"dataset.root={json.dumps(str(SHARED / 'data' / 'coco128'))}"],
    ),
}
PARTS = {
    "cams": [
        ("AAF fine CAM", "pseudo_labels", ()),
        ("coarse CAM", "pseudo_labels", ("export_cams.cam=coarse",)),
        ("mean-fusion fine CAM", "pseudo_labels", ("train_cam.fusion=mean",)),
    ],
    "decoder": [
        ("decoder, gradient clipping", "full", ()),
        ("decoder, no clipping", "full", ("train_decoder.gradient_clipping=false",)),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="demo")
    parser.add_argument("--part", choices=sorted(PARTS), nargs="+", default=["cams", "decoder"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    use_shared_weights()
    recipe_file, base = DATASETS[args.dataset]
    run_dir = REPO / "runs" / f"ablation_{args.dataset}"
    rows = []
    with open_client(None, None) as client:
        for part in args.part:
            for name, target, overrides in PARTS[part]:
                recipe = load_recipe(recipe_file, [*base, *overrides])
                started = time.perf_counter()
                arts = run_pipeline(recipe, run_dir, target, client)
                metrics = json.loads((arts["evaluate"].path / "metrics.json").read_text())
                row = {
                    "variant": name,
                    "cam_no_crf": metrics["cams"]["miou"],
                    "pseudo_label_crf": metrics["pseudo_labels"]["miou"],
                }
                for split in ("train", "val"):
                    if f"predict_{split}" in metrics:
                        row[f"decoder_{split}"] = metrics[f"predict_{split}"]["miou"]
                row["seconds"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                print_table(rows)
    path = write_result(f"ablation_{args.dataset}", rows, {"recipe": str(recipe_file), "run_dir": str(run_dir)})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
