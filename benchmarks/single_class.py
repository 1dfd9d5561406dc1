"""A real single-class data set: coco128 photos tagged `person` where COCO has a person, untagged
(negatives) elsewhere, GT masks from the instances JSON (person = 1, crowd = 255). Reports the
foreground (person) IoU against GT of the CAMs, the pseudo-labels and the retrained decoder, beside
two baselines measured in the same run: the all-foreground mask on tagged images, and the coarse
CAM (the conv head alone, `export_cams.cam=coarse`, same training). And the same without the
negatives (`dataset.untagged=leave_out`), to measure what they add, and the decoder trained without
the gradient clipping.

    python benchmarks/single_class.py                   # ~30 min on 2 idle cores

Writes benchmarks/results/single_class.json and prints a table. Every variant and baseline is
scored on the same images, the tagged ones (person IoU against the GT, crowds ignored); what the
decoder trained with negatives paints on the negatives is reported as its own column, the share of
their pixels called person.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from _common import REPO, SHARED, print_table, use_shared_weights, write_result

from labelgen.config import load_recipe
from labelgen.data.coco_gt import check_coco, rasterise
from labelgen.data.masks import gt_mask, write_mask
from labelgen.numerics.metrics import confusion_matrix, scores
from labelgen.pipeline.cluster import open_client
from labelgen.pipeline.dag import STAGES
from labelgen.pipeline.indexing import load_manifest
from labelgen.pipeline.runner import run_pipeline
from labelgen.pipeline.stage import output_path
from labelgen.stages.evaluate import label_maps as evaluate_label_maps
from labelgen.store.sharded import ImageArrays

COCO128 = SHARED / "data" / "coco128"
RECIPE = REPO / "benchmarks" / "recipes" / "single_class_cpu.toml"
PERSON = 1  # COCO category id of person


def build_folder(root: Path) -> dict[str, int]:
    """The folder data set under `root`; returns counts of tagged and untagged images."""
    data = json.loads((COCO128 / "annotations" / "instances_train2017.json").read_text())
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    if not (root / "classes.txt").exists():
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
        mask = root / "masks" / f"{Path(img['file_name']).stem}.png"
        if not mask.exists():  # rewriting it would change its mtime, the index key, and rerun every stage
            write_mask(mask, gt)
        tagged = bool(people)
        rows.append(f"images/{img['file_name']},{'person' if tagged else ''}")
        counts["tagged" if tagged else "untagged"] += 1
    tags = root / "tags.csv"
    if not tags.exists() or tags.read_text() != "\n".join(rows) + "\n":
        tags.write_text("\n".join(rows) + "\n")
    return counts


def fg_iou(masks: dict[str, np.ndarray], records) -> float:
    """Person IoU (%) of label maps against GT over `records` (GT 255 ignored)."""
    cm = np.zeros((2, 2), np.int64)
    for r in records:
        cm += confusion_matrix(gt_mask(r), masks[r.id], 2)
    return round(100 * scores(cm)["iou"][1], 1)


def baselines(records) -> dict[str, dict[str, np.ndarray]]:
    """Label maps that need no training: every pixel person, and a centred ellipse (half the width
    and height), on tagged images."""
    full, ellipse = {}, {}
    for r in records:
        h, w = gt_mask(r).shape
        full[r.id] = np.ones((h, w), np.uint8)
        y, x = np.ogrid[:h, :w]
        ellipse[r.id] = (((y - h / 2) / (h / 2)) ** 2 + ((x - w / 2) / (w / 2)) ** 2 <= 0.5).astype(np.uint8)
    return {"all_foreground": full, "centred_ellipse": ellipse}


def label_maps(store: Path, bg_threshold: float, records) -> dict[str, np.ndarray]:
    """Each image's label map from a mask store, or from a CAM store at the background threshold."""
    arrays = ImageArrays(store)
    sizes = {r.id: gt_mask(r).shape for r in records}
    out = {}
    for n, image_id in enumerate(arrays.ids):
        if image_id not in sizes:
            continue
        source = "cams" if arrays.kind == "cams" else "masks"  # evaluate's names: CAMs are thresholded
        stored = {source: arrays.cam(n) if source == "cams" else arrays.mask(n)}
        out[image_id] = evaluate_label_maps(stored, sizes[image_id], bg_threshold)[source]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "single_class")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra recipe overrides for every variant (e.g. a quick check with fewer epochs)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    use_shared_weights()
    root = args.run_dir / "data"
    counts = build_folder(root)
    base = [f"dataset.root={json.dumps(str(root))}", *args.overrides]
    variants = [
        ("with negatives", "full", []),
        ("with negatives, coarse CAM", "pseudo_labels", ["export_cams.cam=coarse"]),
        # what the negatives add, at the stages they act on (the classifier, hence CAMs and pseudo-labels)
        ("positives only", "pseudo_labels", ['dataset.untagged="leave_out"']),
        # the decoder on the same pseudo-labels without the gradient clipping
        ("with negatives, no clipping", "full", ["train_decoder.gradient_clipping=false"]),
    ]
    rows = []
    with open_client(None, None) as client:
        for name, target, overrides in variants:
            arts = run_pipeline(load_recipe(RECIPE, [*base, *overrides]), args.run_dir, target, client)
            manifest = load_manifest(arts["index"])
            tagged = [r for r in manifest.records if r.tags]  # every variant is scored on the same images
            bg = load_recipe(RECIPE, [*base, *overrides])["pseudo_labels"].bg_threshold
            row = {"variant": name, "train_images": len(manifest.records), "scored_images": len(tagged)}
            if not rows:
                row.update({f"{k}_fg_iou": fg_iou(m, tagged) for k, m in baselines(tagged).items()})
            stores = {
                "cam": output_path(STAGES["export_cams"], arts["export_cams"], "cams"),
                "pseudo_label": output_path(STAGES["pseudo_labels"], arts["pseudo_labels"], "masks"),
            }
            if "predict" in arts:
                stores["decoder"] = output_path(STAGES["predict"], arts["predict"], "masks", split="train")
            for source, store in stores.items():
                row[f"{source}_fg_iou"] = fg_iou(label_maps(store, bg, tagged), tagged)
            negatives = [r for r in manifest.records if not r.tags]
            if negatives and "predict" in arts:  # what the decoder paints on photos without a person
                predicted = label_maps(stores["decoder"], bg, negatives)
                row["decoder_person_share_on_negatives"] = round(
                    100 * float(np.mean([(predicted[r.id] == 1).mean() for r in negatives])), 2
                )
            # what the row costs from scratch: every stage behind it, as its artifact recorded it (a rerun of
            # this script finds them done, so its own wall time says nothing)
            row["compute_seconds"] = round(sum(a.success()["seconds"] for a in arts.values()), 1)
            rows.append(row)
            print_table(rows)
    path = write_result("single_class", rows, {"recipe": str(RECIPE.relative_to(REPO)), "images": counts})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
