"""`--format yolo-seg`: do the polygons give the masks back? Measured through Ultralytics' own loader.

Runs (in --work, reused when there):
  demo GT          the tiny demo (tests/tiny_demo.toml: 24 train + 8 val images of 96 px), its GT masks
                   stored as predictions of both splits (as tests/test_export.py stores them)
  demo pipeline    the same demo through the real pipeline (train_cam .. predict, DeiT-Tiny, CPU):
                   CRF pseudo-labels and the Segmenter's predictions, with their specks and holes
  coco128 GT       all 128 coco128 photos indexed as a COCO source (its instances JSON; crowds = 255),
                   GT masks as pseudo_labels

Each is exported with `--format yolo-seg`, read by Ultralytics (`YOLODataset`, task segment, in a
child process, offline: tests/ultralytics_reader.py), every polygon rasterised by its `polygon2mask`
and compared with the 8-connected component of labelgen's mask it stands for: IoU per object
(`agreement`), and what the IoU would be with the outer border alone (holes filled).

    python benchmarks/yolo_seg_agreement.py [--work DIR]     # ~10 min on 2 busy cores

Writes benchmarks/results/yolo_seg_agreement.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, print_table, use_shared_weights, write_result

sys.path.insert(0, str(REPO))  # the test helpers: how runs with GT masks are made, and Ultralytics' reader

from labelgen.formats.source import export_source  # noqa: E402
from labelgen.formats.write import export_masks  # noqa: E402
from labelgen.formats.yolo_seg import MIN_OBJECT_PIXELS  # noqa: E402
from labelgen.pipeline.cluster import open_client  # noqa: E402
from labelgen.pipeline.runner import run_pipeline  # noqa: E402
from labelgen.store.sharded import ImageArrays  # noqa: E402
from tests.conftest import COCO128, tiny_recipe  # noqa: E402
from tests.test_export import gt_run  # noqa: E402
from tests.ultralytics_reader import agreement, run_reader  # noqa: E402

RESAMPLED = 1000  # Ultralytics resamples every polygon to this many points when it trains


def measure(name: str, run_dir: Path, what: str, work: Path, client) -> dict:
    """Export `what` of a run as yolo-seg, read it with Ultralytics, compare; one table row."""
    out = work / "exports" / name.replace(" ", "_")
    started = time.perf_counter()
    export_masks(run_dir, what, "yolo-seg", out, client)
    seconds = time.perf_counter() - started
    read = run_reader(work / "read" / name.replace(" ", "_"), "read", {"seg": (out / "data.yaml", "segment")})
    source = export_source(run_dir, what)
    rows, missing, images, fg_pixels, speck_pixels = [], 0, 0, 0, 0
    for split, store in source.stores.items():
        arrays = ImageArrays(store)
        role = "train" if split == source.train_split else "val"
        objects = read["seg"]["splits"][role]["objects"]
        for i, image_id in enumerate(arrays.ids):
            mask = arrays.mask(i)
            got, lost = agreement(mask, objects[image_id]["objects"], MIN_OBJECT_PIXELS)
            rows += got
            missing += lost
            images += 1
            fg = (mask > 0) & (mask < 255)
            fg_pixels += int(fg.sum())
            speck_pixels += int(fg.sum()) - sum(r["pixels"] for r in got)
    iou = np.array([r["iou"] for r in rows])
    filled = np.array([r["filled_iou"] for r in rows])
    points = np.array([r["points"] for r in rows])
    some = len(rows) > 0  # a run may paint no object at all (an undertrained decoder)
    return {
        "run": name,
        "images": images,
        "objects": len(rows),
        "min IoU": float(iou.min()) if some else None,
        "mean IoU": float(iou.mean()) if some else None,
        "objects < 0.98": int((iou < 0.98).sum()),
        "with holes": int((filled < 1).sum()),
        "min IoU outer only": float(filled.min()) if some else None,
        "objects < 0.98 outer only": int((filled < 0.98).sum()),
        "speck px %": 100 * speck_pixels / max(fg_pixels, 1),
        "missing": missing,
        "median points": int(np.median(points)) if some else None,
        "max points": int(points.max()) if some else None,
        f"> {RESAMPLED} points": int((points > RESAMPLED).sum()),
        "loader warnings": len(read["seg"]["warnings"]),
        "export s": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for runs and exports (default: a new temporary one)")
    args = parser.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="yolo_seg_agreement_"))).resolve()
    use_shared_weights()
    rows = []
    with open_client(None, 2) as client:
        runs = {"demo GT": (work / "demo_gt", "predictions"), "coco128 GT": (work / "coco128", "pseudo_labels")}
        if not (work / "demo_gt").exists():
            gt_run(work / "demo_gt", client, (), stage="predict")
        if not (work / "coco128").exists():
            overrides = ('dataset.name="coco"', f'dataset.root="{COCO128}"', 'dataset.train_split="train2017"')
            gt_run(work / "coco128", client, (*overrides, 'dataset.val_split=""'))
        run_pipeline(tiny_recipe(), work / "demo_pipeline", "predict", client)  # resumes a finished run at once
        runs |= {
            "demo pseudo_labels": (work / "demo_pipeline", "pseudo_labels"),
            "demo predictions": (work / "demo_pipeline", "predictions"),
        }
        for name, (run_dir, what) in runs.items():
            rows.append(measure(name, run_dir, what, work, client))
            print_table(rows[-1:])
    print_table(rows)
    print(f"written: {write_result('yolo_seg_agreement', rows, {'min_object_pixels': MIN_OBJECT_PIXELS})}")


if __name__ == "__main__":
    main()
