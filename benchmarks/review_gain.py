"""Does review pay? With the GT standing in for the person: correct the K images the review queue
picks (lowest GT-free score, spread over classes; `labelgen review push` sends these) against K
images drawn at random from the train split, retrain the decoder on each, and report its mIoU gain
per corrected image.

    python benchmarks/review_gain.py     # the demo (benchmarks/recipes/review_gain_cpu.toml), K = 10 and 20

See the README (Review, "Does review pay?") for what ran and what it measured.

Every variant lives in one run folder: the base run (`labelgen run full`), then per variant one
pulled set of GT masks (`labelgen.review.pulled.save_pulled`, what `review pull` writes) and
`labelgen run full` again, which reruns only corrections, train_decoder, predict and evaluate. The
decoder's mIoU is measured on the val split, which no variant corrects, and on the train split
(where corrected images are scored against their correction, here their GT).

Writes benchmarks/results/review_gain.json and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from _common import REPO, print_table, use_shared_weights, write_result

from labelgen.config import load_recipe
from labelgen.data.manifest import Manifest
from labelgen.data.masks import gt_mask
from labelgen.pipeline.cluster import open_client
from labelgen.pipeline.runner import run_pipeline
from labelgen.review.pulled import PULLED, Correction, save_pulled
from labelgen.review.queue import review_queue


def decoder_miou(evaluate: Path) -> dict[str, float]:
    metrics = json.loads((evaluate / "metrics.json").read_text())
    return {split: metrics[f"predict_{split}"]["miou"] for split in ("train", "val")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--seed", type=int, default=0, help="of the random choice")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "review_gain")
    parser.add_argument("--recipe", type=Path, default=REPO / "benchmarks" / "recipes" / "review_gain_cpu.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    use_shared_weights()
    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = args.run_dir.resolve()
    shutil.rmtree(run_dir / PULLED, ignore_errors=True)  # the base run has no corrections
    rows = []
    extra = {"recipe": recipe.source, "overrides": args.overrides, "seed": args.seed}
    with open_client(None, args.workers) as client:
        base = run_pipeline(recipe, run_dir, "full", client)
        manifest = Manifest.load(base["index"].path / "manifest.json")
        train = manifest.split(recipe["dataset"].train_split)
        base_miou = decoder_miou(base["evaluate"].path)
        base_row = {"choice": "none (base run)", "K": 0, "val mIoU": base_miou["val"], "train mIoU": base_miou["train"]}
        rows.append(base_row)
        with (base["evaluate"].path / "per_image.csv").open(newline="") as f:
            per_image = list(csv.DictReader(f))
        rng = np.random.default_rng(args.seed)
        for k in args.ks:
            choices = {
                "worst (review queue)": [r["id"] for r in review_queue(per_image, recipe["dataset"].train_split, k)],
                f"random (seed {args.seed})": [train[i].id for i in rng.choice(len(train), k, replace=False)],
            }
            for choice, ids in choices.items():
                shutil.rmtree(run_dir / PULLED, ignore_errors=True)
                records = {r.id: r for r in train}
                corrections = [Correction(i, gt_mask(records[i]), "GT", "", "benchmark") for i in ids]
                save_pulled(run_dir, corrections, manifest, f"benchmark {choice} K={k}")
                arts = run_pipeline(recipe, run_dir, "full", client)
                miou = decoder_miou(arts["evaluate"].path)
                rows.append(
                    {
                        "choice": choice,
                        "K": k,
                        "val mIoU": miou["val"],
                        "train mIoU": miou["train"],
                        "val gain per image (points)": 100 * (miou["val"] - base_miou["val"]) / k,
                        "train gain per image (points)": 100 * (miou["train"] - base_miou["train"]) / k,
                        "images": ids,
                    }
                )
                print_table([{k2: v for k2, v in r.items() if k2 != "images"} for r in rows])
                write_result("review_gain", rows, extra)  # after each variant: a stopped run keeps what it measured
        shutil.rmtree(run_dir / PULLED, ignore_errors=True)
    path = write_result("review_gain", rows, extra)
    print_table([{k: v for k, v in r.items() if k != "images"} for r in rows])
    print(f"-> {path}")


if __name__ == "__main__":
    main()
