"""Stage throughput against the model's pure throughput, and the projected wall time of the full VOC
and COCO recipes. Made for a GPU machine (`--device cuda`, the defaults); runs on a CPU with small
settings to check the script.

VOC-sized images (500×375 JPEGs of random content; throughput does not depend on content) in a
`folder` data set, DeiT-S without pretrained weights (nor does it depend on weights), the VOC
recipe with epochs cut to 2. Two measurements per stage:

- stage: the real stage through `run_pipeline` on a LocalCluster (data loading, resizing,
  upsampling, zarr writing included). Training stages: images/s of the last epoch from their logs;
  sharded stages: images / stage wall time.
- pure: the model alone on device-resident random tensors with the same batch, input size and
  precision: forward (CAM export, predict) or forward + backward + optimizer step (training).

The projection multiplies the stage throughputs by each recipe's work: epochs × train images,
views per image, CRF on the cluster's cores, predict on train + val images.

    python benchmarks/stage_throughput.py                           # GPU: DeiT-S, 512 images
    python benchmarks/stage_throughput.py --device cpu --backbone deit_tiny_patch16_224 \\
        --train-images 16 --val-images 4 --size 160x120 --cam-batch 8 --decoder-crop 160   # CPU check
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import print_table, seconds_per_call, write_result
from PIL import Image

from labelgen.config import load_recipe, recipe_path
from labelgen.data.classes import voc_classes
from labelgen.devices import available_cores
from labelgen.models.losses import GradientClippingLoss
from labelgen.models.precision import autocast
from labelgen.models.segmenter import Segmenter, SegmenterConfig
from labelgen.models.weaktr import WeakTr, WeakTrConfig
from labelgen.pipeline.cluster import open_client
from labelgen.pipeline.runner import run_pipeline
from labelgen.stages.predict import pass_size, window_starts
from labelgen.stages.train_cam import cam_step
from labelgen.stages.train_decoder import decoder_step

# full data sets of the shipped recipes (weaktr-method.md §1.6, §4.1)
FULL = {
    "voc": {"train": 10_582, "val": 1_449},
    "coco": {"train": 82_081, "val": 40_137},
}


def make_folder_dataset(root: Path, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = voc_classes()[1:]
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    lines = ["image,tags,split"]
    for i in range(n_train + n_val):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i:05d}.jpg", quality=90)
        tags = rng.choice(names, size=int(rng.integers(1, 4)), replace=False)
        lines.append(f"images/{i:05d}.jpg,{';'.join(tags)},{'train' if i < n_train else 'val'}")
    (root / "tags.csv").write_text("\n".join(lines) + "\n")


def timed(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Seconds per call of `step`, after one warm-up call, with the device's queue drained."""
    return seconds_per_call(step, repeats, torch.cuda.synchronize if device.type == "cuda" else lambda: None)


def pure_cam_export(args, device, recipe) -> float:
    """Images/s of WeakTr forwards alone: the recipe's scales, with flip, `cam_batch` views a pass."""
    model = WeakTr(WeakTrConfig(args.backbone, 20), None).to(device).eval()
    w, h = args.size
    seconds = 0.0
    cache = recipe["export_cams"].attention_cache_mb * 2**20
    for scale in recipe["export_cams"].scales:
        x = torch.randint(
            0, 256, (args.cam_batch, 3, round(h * scale), round(w * scale)), dtype=torch.uint8, device=device
        )
        with torch.no_grad(), autocast(device, args.precision):
            per_pass = timed(lambda x=x: model.cams(x, "fine", cache), device, args.repeats)
        seconds += 2 * per_pass / args.cam_batch  # the image and its flip
    return 1 / seconds


def pure_cam_training(args, device) -> float:
    model = WeakTr(WeakTrConfig(args.backbone, 20), None).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.randint(0, 256, (args.cam_train_batch, 3, 224, 224), dtype=torch.uint8, device=device)
    y = (torch.rand(args.cam_train_batch, 20, device=device) < 0.1).float()

    step = lambda: cam_step(model, optimizer, x, y, args.precision)  # noqa: E731  the stage's own step
    return args.cam_train_batch / timed(step, device, args.repeats)


def pure_decoder_training(args, device) -> float:
    model = Segmenter(SegmenterConfig(args.backbone, 21), None).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    criterion = GradientClippingLoss(args.decoder_crop // 4, 1.2)
    crop = args.decoder_crop
    x = torch.randint(0, 256, (4, 3, crop, crop), dtype=torch.uint8, device=device)
    y = torch.randint(0, 21, (4, crop, crop), device=device)

    step = lambda: decoder_step(model, optimizer, criterion, x, y, args.precision)  # noqa: E731
    return 4 / timed(step, device, args.repeats)


def pure_predict(args, device, recipe) -> float:
    """Images/s of the Segmenter's window forwards alone for the recipe's scales, flips and windows."""
    p = recipe["predict"]
    model = Segmenter(SegmenterConfig(args.backbone, 21), None).to(device).eval()
    x = torch.randint(0, 256, (1, 3, p.window, p.window), dtype=torch.uint8, device=device)
    with torch.no_grad(), autocast(device, args.precision):
        per_window = timed(lambda: model(x), device, args.repeats)
    w, h = args.size
    windows = 0
    for ratio in p.scales:
        sh, sw = pass_size(h, w, ratio, p)
        windows += len(window_starts(sh, p.window, p.window_stride)) * len(window_starts(sw, p.window, p.window_stride))
    return 1 / (per_window * windows * (2 if p.flip else 1))


def stage_throughputs(args, recipe, run_dir: Path) -> dict[str, float]:
    with open_client(None, args.workers, args.cluster) as client:
        arts = run_pipeline(recipe, run_dir, "predict", client)
    out = {}
    for stage in ("train_cam", "train_decoder"):
        last = (arts[stage].path / "log.jsonl").read_text().splitlines()[-1]
        out[stage] = json.loads(last)["images_per_s"]
    for stage in ("export_cams", "pseudo_labels", "predict"):
        success = json.loads((arts[stage].path / "_SUCCESS.json").read_text())
        out[stage] = success["images"] / success["seconds"]
    return out


def project(
    stage: dict[str, float], measured_scales: tuple[float, ...], workers: int, project_cores: int
) -> dict[str, dict[str, float]]:
    """Hours per stage of the shipped full recipes. Export is scaled from the measured scales to each
    recipe's by Σscale² (the cost of a view grows about with its pixels); pseudo_labels scales with
    CPU workers (measured on `workers`, projected to `project_cores`)."""
    out = {}
    for name, full in FULL.items():
        recipe = load_recipe(recipe_path(name))
        cam, dec = recipe["train_cam"], recipe["train_decoder"]
        view_cost = sum(s * s for s in recipe["export_cams"].scales) / sum(s * s for s in measured_scales)
        seconds = {
            "train_cam": cam.epochs * full["train"] / stage["train_cam"],
            "export_cams": full["train"] * view_cost / stage["export_cams"],
            "pseudo_labels": full["train"] / stage["pseudo_labels"] * workers / project_cores,
            "train_decoder": dec.epochs * full["train"] / stage["train_decoder"],
            "predict": (full["train"] + full["val"]) / stage["predict"],
        }
        out[name] = {k: round(v / 3600, 2) for k, v in seconds.items()} | {
            "total": round(sum(seconds.values()) / 3600, 2)
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="deit_small_patch16_224")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--val-images", type=int, default=64)
    parser.add_argument("--size", default="500x375", help="W×H of the images")
    parser.add_argument("--cam-batch", type=int, default=16, help="export_cams views per pass")
    parser.add_argument("--cam-train-batch", type=int, default=64)
    parser.add_argument("--decoder-crop", type=int, default=480)
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: one per core)")
    parser.add_argument("--cluster", default="local", choices=("local", "local-cuda"))
    parser.add_argument("--project-cores", type=int, default=16, help="CPU cores assumed for the CRF projection")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    device = torch.device(args.device)
    workers = args.workers or available_cores()  # the LocalCluster default
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_folder_dataset(root, args.train_images, args.val_images, args.size, seed=0)
        overrides = [
            f"dataset.root={json.dumps(str(root))}",
            'dataset.val_split="val"',
            *(f'{s}.backbone="{args.backbone}"' for s in ("train_cam", "train_decoder")),
            *(f'{s}.weights="none"' for s in ("train_cam", "train_decoder")),
            *(f'{s}.precision="{args.precision}"' for s in ("train_cam", "export_cams", "train_decoder", "predict")),
            "train_cam.epochs=2",
            "train_cam.warmup_epochs=1",
            f"train_cam.batch_size={args.cam_train_batch}",
            "train_decoder.epochs=2",
            f"train_decoder.crop_size={args.decoder_crop}",
            f"train_decoder.clip_window={args.decoder_crop // 4}",
            f"export_cams.batch_size={args.cam_batch}",
            f'export_cams.device="{args.device}"',
            f'predict.device="{args.device}"',
        ]
        if args.decoder_crop < 480:  # CPU check: predict windows shrink with the crop
            stride = args.decoder_crop * 2 // 3
            overrides += [
                f"predict.window={args.decoder_crop}",
                f"predict.window_stride={stride}",
                "predict.scales=[1.0]",
            ]
            overrides += [f"predict.resize_short={args.decoder_crop}"]
        recipe = load_recipe(recipe_path("folder"), overrides)
        stage = stage_throughputs(args, recipe, Path(tmp) / "run")
    pure = {
        "train_cam": pure_cam_training(args, device),
        "export_cams": pure_cam_export(args, device, recipe),
        "train_decoder": pure_decoder_training(args, device),
        "predict": pure_predict(args, device, recipe),
    }
    rows = [
        {
            "stage": name,
            "stage_images_per_s": stage[name],
            "pure_images_per_s": pure.get(name),
            "fraction_of_pure": stage[name] / pure[name] if name in pure else None,
        }
        for name in ("train_cam", "export_cams", "pseudo_labels", "train_decoder", "predict")
    ]
    print_table(rows)
    projection = project(stage, recipe["export_cams"].scales, workers, args.project_cores)
    print_table([{"recipe": name, **hours} for name, hours in projection.items()])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    path = write_result(
        "stage_throughput",
        rows,
        {
            "device": device_name,
            "args": vars(args),
            "projection_hours": projection,
            "projection_note": "export scaled by Σscale² of each recipe's scales; CRF scaled to --project-cores",
        },
    )
    print(f"-> {path}")


if __name__ == "__main__":
    main()
