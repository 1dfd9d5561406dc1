"""predict.restrict_to_tags: the train split's masks with and without the tag constraint.

Runs the whole pipeline of a recipe once (the default, restrict_to_tags = "train", keeps the raw
masks beside the restricted ones) and reports, for the train split: the mIoU against GT of both
(evaluate's `predict_train` and `predict_train_unrestricted`), the share of pixels painted with a
class the image's tags exclude, and the share of the negatives' (untagged images') pixels painted
with any class.

    python benchmarks/restrict_to_tags.py                                # tests/tiny_demo.toml, ~5 min on 2 cores
    python benchmarks/restrict_to_tags.py --recipe pipelines/demo.toml   # the demo recipe
    python benchmarks/restrict_to_tags.py --single-class                 # coco128 person + negatives, ~30 min

Writes benchmarks/results/restrict_to_tags_<recipe stem>.json (`_single_class` with --single-class) and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from _common import REPO, print_table, use_shared_weights, write_result

from labelgen.config import load_recipe
from labelgen.pipeline.cluster import open_client
from labelgen.pipeline.dag import STAGES
from labelgen.pipeline.indexing import load_manifest
from labelgen.pipeline.runner import run_pipeline
from labelgen.pipeline.stage import output_path
from labelgen.store.sharded import ImageArrays


def painted_shares(store: Path, records) -> tuple[float, float | None]:
    """(percent of all pixels holding a class their image's tags exclude, percent of the negatives'
    pixels holding any class; None without negatives) of a split's mask store."""
    arrays = ImageArrays(store)
    excluded = pixels = negative_fg = negative_pixels = 0
    for n, r in enumerate(records):
        mask = arrays.mask(n)
        outside = ~np.isin(mask, [0, 255, *r.tags])
        excluded += int(outside.sum())
        pixels += mask.size
        if not r.tags:
            negative_fg += int(outside.sum())
            negative_pixels += mask.size
    return 100 * excluded / pixels, (100 * negative_fg / negative_pixels if negative_pixels else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "tests" / "tiny_demo.toml")
    parser.add_argument("--single-class", action="store_true", help="single_class.py's coco128 set and recipe")
    parser.add_argument("--run-dir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    use_shared_weights()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="restrict_to_tags_"))
    recipe_path, overrides = args.recipe, []
    if args.single_class:
        from single_class import RECIPE, build_folder

        root = run_dir / "data"
        build_folder(root)
        recipe_path, overrides = RECIPE, [f"dataset.root={json.dumps(str(root))}"]
    recipe = load_recipe(recipe_path, [*overrides, 'predict.restrict_to_tags="train"'])
    with open_client(None, 2) as client:
        arts = run_pipeline(recipe, run_dir, "full", client)
    train = recipe["dataset"].train_split
    records = load_manifest(arts["index"]).split(train)
    metrics = json.loads(output_path(STAGES["evaluate"], arts["evaluate"], "metrics").read_text())
    rows = []
    for name, output in (("without (paper)", "unrestricted"), ("with restrict_to_tags", "masks")):
        store = output_path(STAGES["predict"], arts["predict"], output, split=train)
        excluded, negatives = painted_shares(store, records)
        source = f"predict_{train}" + ("_unrestricted" if output == "unrestricted" else "")
        rows.append(
            {
                "train masks": name,
                "mIoU %": round(100 * metrics[source]["miou"], 2) if metrics[source]["miou"] is not None else None,
                "excluded-class pixels %": round(excluded, 3),
                "negatives painted %": None if negatives is None else round(negatives, 3),
            }
        )
    print_table(rows)
    changed = arts["predict"].success().get("restricted_to_tags")
    extra = {
        "recipe": str(recipe_path.relative_to(REPO)),
        "train_images": len(records),
        "negatives": sum(not r.tags for r in records),
        "images_restricted": changed,
    }
    name = "restrict_to_tags_single_class" if args.single_class else f"restrict_to_tags_{recipe_path.stem}"
    print(f"-> {write_result(name, rows, extra)}")


if __name__ == "__main__":
    main()
