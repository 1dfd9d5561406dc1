"""A real single-class data set: coco128 photos tagged `person` where COCO has a person, untagged
(negatives) elsewhere, GT masks from the instances JSON (person = 1, crowd = 255). Reports the
foreground (person) IoU against GT of the CAMs, the pseudo-labels and the retrained decoder, beside
two baselines measured in the same run: the all-foreground mask on tagged images, and the coarse
CAM (the conv head alone, `export_cams.cam=coarse`, same training). And the same without the
negatives (`dataset.untagged=leave_out`), to measure what they add.

    python benchmarks/single_class.py                   # ~30 min on 2 cores

Writes benchmarks/results/single_class.json and prints a table. Scores are over the tagged images'
GT (the negatives' GT is all background: scored too for the masks, so a method that paints
person everywhere pays for it).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from _common import REPO, SHARED, print_table, use_shared_weights, write_result

from labelgen.config import load_recipe
from labelgen.data.coco_gt import check_coco, rasterise
from labelgen.data.masks import read_mask, write_mask
from labelgen.metrics import confusion_matrix, scores
from labelgen.pipeline.cluster import open_client
from labelgen.pipeline.runner import run_pipeline
from labelgen.stages.index import load_manifest

COCO128 = SHARED / "data" / "coco128"
RECIPE = REPO / "benchmarks" / "recipes" / "single_class_cpu.toml"
PERSON = 1  # COCO category id of person


def build_folder(root: Path) -> dict[str, int]:
    """The folder data set under `root`; returns counts of tagged and untagged images."""
    data = json.loads((COCO128 / "annotations" / "instances_train2017.json").read_text())
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    (root / "classes.txt").write_text("person\n")
    rows, counts = ["image,tags"], {"tagged": 0, "untagged": 0}
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        people = tuple({**a, "label": 1, "name": "person"} for a in anns if a["category_id"] == PERSON)
        shapes = check_coco(people, img["height"], img["width"]).shapes
        gt = rasterise(shapes, img["height"], img["width"])  # crowds of people: 255
        source = COCO128 / "images" / "train2017" / img["file_name"]
        link = root / "images" / img["file_name"]
        if not link.exists():
            link.symlink_to(source)
        write_mask(root / "masks" / f"{Path(img['file_name']).stem}.png", gt)
        tagged = bool(people)
        rows.append(f"images/{img['file_name']},{'person' if tagged else ''}")
        counts["tagged" if tagged else "untagged"] += 1
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return counts


def all_foreground_iou(manifest) -> float:
    """Foreground IoU of painting every pixel of every tagged image person (and negatives background)."""
    cm = np.zeros((2, 2), np.int64)
    for r in manifest.records:
        if r.mask is None:
            continue
        gt = read_mask(r.mask)
        cm += confusion_matrix(gt, np.full(gt.shape, 1 if r.tags else 0, np.uint8), 2)
    return scores(cm)["iou"][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "single_class")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    use_shared_weights()
    root = args.run_dir / "data"
    counts = build_folder(root)
    base = [f"dataset.root={json.dumps(str(root))}"]
    variants = [
        ("with negatives", "full", []),
        ("with negatives, coarse CAM", "pseudo_labels", ["export_cams.cam=coarse"]),
        ("positives only", "full", ['dataset.untagged="leave_out"']),
    ]
    rows = []
    with open_client(None, None) as client:
        for name, target, overrides in variants:
            started = time.perf_counter()
            arts = run_pipeline(load_recipe(RECIPE, [*base, *overrides]), args.run_dir, target, client)
            metrics = json.loads((arts["evaluate"].path / "metrics.json").read_text())
            manifest = load_manifest(arts["index"])
            row = {
                "variant": name,
                "train_images": len(manifest.records),
                "all_foreground_fg_iou": all_foreground_iou(manifest),
                "cam_fg_iou": metrics["cams"]["iou"][1],
                "pseudo_label_fg_iou": metrics["pseudo_labels"]["iou"][1],
            }
            if "predict_train" in metrics:
                row["decoder_fg_iou"] = metrics["predict_train"]["iou"][1]
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print_table(rows)
    path = write_result("single_class", rows, {"recipe": str(RECIPE), "images": counts})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
