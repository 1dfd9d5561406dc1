"""Does review pay? With the GT standing in for the person: correct the K images the review queue
picks (lowest GT-free score, spread over classes; `labelgen review push` sends these) against K
images drawn at random from the train split, retrain the decoder on each, and report its mIoU gain
per corrected image.

    python benchmarks/review_gain.py --recipe pipelines/demo.toml --run-dir /tmp/rg_demo   # the demo, ~12 min
    python benchmarks/review_gain.py --single-class --run-dir /tmp/rg_single   # real photos, ~40 min
    python benchmarks/review_gain.py     # a smaller demo (benchmarks/recipes/review_gain_cpu.toml)

See the README (Review, "Does review pay?") for what ran and what it measured.

Every variant lives in one run folder: the base run (`labelgen run full`), then per variant one
pulled set of GT masks (`labelgen.review.pulled.save_pulled`, what `review pull` writes) and
`labelgen run full` again, which reruns only corrections, train_decoder, predict and evaluate. The
decoder's mIoU is measured on the val split (where there is one), which no variant corrects, on the
train split (where corrected images are scored against their correction, here their GT), and on
the train images no variant corrects ("held-out train": the decoder's own, unrestricted masks
against GT, the one fair train figure: a corrected image scores well for being corrected).
`--single-class` is the real set of benchmarks/single_class.py: coco128 photos tagged `person` or
untagged negatives, GT from COCO's instances, no val split.

Writes benchmarks/results/review_gain_<recipe stem>.json (`review_gain_single_class.json` with
--single-class) and prints a table.
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
from labelgen.numerics.metrics import confusion_matrix, scores
from labelgen.pipeline.cluster import open_client
from labelgen.pipeline.dag import STAGES
from labelgen.pipeline.runner import run_pipeline
from labelgen.pipeline.stage import output_path, output_paths
from labelgen.review.pulled import PULLED, Correction, save_pulled
from labelgen.review.queue import review_queue
from labelgen.store.artifact import Artifact
from labelgen.store.sharded import ImageArrays


def decoder_miou(evaluate: Path) -> dict[str, float | None]:
    metrics = json.loads((evaluate / "metrics.json").read_text())
    return {split: metrics.get(f"predict_{split}", {}).get("miou") for split in ("train", "val")}


def held_out_miou(predict: Artifact, records: list, num_labels: int, train_split: str) -> float:
    """mIoU of the decoder's unrestricted train masks against GT over `records`."""
    unrestricted = train_split in output_paths(STAGES["predict"], predict, "unrestricted")
    name = "unrestricted" if unrestricted else "masks"  # without predict.restrict_to_tags the masks are raw
    store = ImageArrays(output_path(STAGES["predict"], predict, name, split=train_split))
    by_id = {r.id: r for r in records}
    cm = np.zeros((num_labels, num_labels), np.int64)
    for n, image_id in enumerate(store.ids):
        if image_id in by_id:
            cm += confusion_matrix(gt_mask(by_id[image_id]), store.mask(n), num_labels)
    return float(scores(cm)["miou"])


def gain(after: float | None, before: float | None, k: int) -> float | None:
    """Points of mIoU gained per corrected image."""
    return None if after is None or before is None else 100 * (after - before) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--seed", type=int, default=0, help="of the random choice")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "review_gain")
    parser.add_argument("--recipe", type=Path, default=REPO / "benchmarks" / "recipes" / "review_gain_cpu.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--single-class", action="store_true", help="single_class.py's real coco128 set and recipe")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    use_shared_weights()
    run_dir = args.run_dir.resolve()
    recipe_path, overrides = args.recipe, list(args.overrides)
    if args.single_class:
        from single_class import RECIPE, build_folder

        build_folder(run_dir / "data")
        recipe_path = RECIPE
        overrides = [f"dataset.root={json.dumps(str(run_dir / 'data'))}", *overrides]
    recipe = load_recipe(recipe_path, overrides)
    train_split = recipe["dataset"].train_split
    shutil.rmtree(run_dir / PULLED, ignore_errors=True)  # the base run has no corrections
    rows = []
    extra = {"recipe": recipe.source, "overrides": overrides, "seed": args.seed}
    with open_client(None, args.workers) as client:
        base = run_pipeline(recipe, run_dir, "full", client)
        manifest = Manifest.load(base["index"].path / "manifest.json")
        train = manifest.split(train_split)
        with (base["evaluate"].path / "per_image.csv").open(newline="") as f:
            per_image = list(csv.DictReader(f))
        rng = np.random.default_rng(args.seed)
        variants = []  # (choice, K, image ids), all chosen from the base run before any retraining
        for k in args.ks:
            variants.append(("worst (review queue)", k, [r["id"] for r in review_queue(per_image, train_split, k)]))
            random_ids = [train[i].id for i in rng.choice(len(train), k, replace=False)]
            variants.append((f"random (seed {args.seed})", k, random_ids))
        corrected_anywhere = {i for _, _, ids in variants for i in ids}
        held_out = [r for r in train if r.mask and r.id not in corrected_anywhere]
        num_labels = len(manifest.classes)
        extra["held_out_train_images"] = len(held_out)

        def measure(arts) -> dict[str, float | None]:
            miou = decoder_miou(arts["evaluate"].path)
            return {**miou, "held_out": held_out_miou(arts["predict"], held_out, num_labels, train_split)}

        before = measure(base)
        rows.append({"choice": "none (base run)", "K": 0, **_cells(before)})
        for choice, k, ids in variants:
            shutil.rmtree(run_dir / PULLED, ignore_errors=True)
            records = {r.id: r for r in train}
            corrections = [Correction(i, gt_mask(records[i]), "GT", "", "benchmark") for i in ids]
            save_pulled(run_dir, corrections, manifest, f"benchmark {choice} K={k}")
            after = measure(run_pipeline(recipe, run_dir, "full", client))
            row = {"choice": choice, "K": k, **_cells(after)}
            for what in ("val", "train", "held_out"):
                g = gain(after[what], before[what], k)
                row[f"{_NAMES[what]} gain per image (points)"] = None if g is None else round(g, 3)
            rows.append({**row, "images": ids})
            print_table([{k2: v for k2, v in r.items() if k2 != "images"} for r in rows])
            write_result(_result_name(args), rows, extra)  # after each variant: a stopped run keeps what it measured
        shutil.rmtree(run_dir / PULLED, ignore_errors=True)
    path = write_result(_result_name(args), rows, extra)
    print_table([{k: v for k, v in r.items() if k != "images"} for r in rows])
    print(f"-> {path}")


_NAMES = {"val": "val", "train": "train", "held_out": "held-out train"}


def _cells(miou: dict[str, float | None]) -> dict[str, float | None]:
    return {f"{_NAMES[k]} mIoU %": None if v is None else round(100 * v, 2) for k, v in miou.items()}


def _result_name(args: argparse.Namespace) -> str:
    return "review_gain_single_class" if args.single_class else f"review_gain_{args.recipe.stem}"


if __name__ == "__main__":
    main()
