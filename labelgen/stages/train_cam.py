"""train_cam: train the WeakTr CAM network on image-level tags (weaktr-method.md §1.5–§1.6).

Output: `model.pt` (selected weights + config), `last.pt` (resume state, replaced atomically every
epoch), `log.jsonl` (one line per epoch). Every epoch seeds all RNGs from (seed, epoch) and the
checkpoint holds model, optimizer and scheduler, so a run killed at any point and resumed from
`last.pt` ends with exactly the weights of an uninterrupted run (on CPU). train_decoder is built from
the same pieces: `build_state`, `resume_training`, `train_epoch`, `save_training_state`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm.data
import torch
import torchvision
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader
from tqdm import tqdm

from labelgen.config import DatasetParams, TrainCamParams
from labelgen.data.images import read_image
from labelgen.data.manifest import Manifest
from labelgen.data.masks import gt_mask
from labelgen.data.training import (
    TaggedImages,
    seed_everything,
    start_epoch,
    training_loader,
)
from labelgen.devices import pick_device, use_every_core
from labelgen.errors import DataError
from labelgen.models.cam_inference import multiscale_cams, save_cam_model
from labelgen.models.pixels import ToPixels
from labelgen.models.precision import autocast
from labelgen.models.weaktr import WeakTr, WeakTrConfig, weaktr_loss
from labelgen.models.weights import check_weights
from labelgen.numerics.metrics import SELECTION_THRESHOLDS, cam_threshold_sweep, scores
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult
from labelgen.store.checkpoint import (
    TrainingState,
    load_checkpoint,
    resume_training,
    save_checkpoint,
    save_training_state,
)

log = logging.getLogger(__name__)

MODEL = "model.pt"
LAST = "last.pt"
LOG = "log.jsonl"


def build_state(params: TrainCamParams, num_fg_classes: int, device: torch.device) -> TrainingState:
    """A fresh training: model, AdamW, cosine schedule; `best` is the gt_miou selection's
    {"epoch", "miou", "threshold"} once there is one."""
    seed_everything(params.seed)
    config = WeakTrConfig(
        params.backbone,
        num_fg_classes,
        params.fusion,
        params.aaf_reduction,
        params.aaf_feat_reduction,
        params.drop_path,
        head_init=params.head_init,
        pos_embed_resample=params.pos_embed_resample,
        patch_size=params.patch_size,
        normalisation=params.normalisation,
    )
    model = WeakTr(config, params.weights).to(device)
    peak_lr = params.base_lr * params.batch_size / 512  # linear scaling rule of the reference
    # uniform weight decay on every parameter, as the reference (timm 0.5.4 given model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=params.weight_decay, eps=1e-8)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=params.epochs,
        lr_min=params.min_lr,
        warmup_lr_init=params.warmup_lr,
        warmup_t=params.warmup_epochs,
        t_in_epochs=True,
    )
    return TrainingState(model, optimizer, scheduler)


def cam_step(model: WeakTr, optimizer: torch.optim.Optimizer, images, targets, precision: str) -> dict[str, float]:
    """One optimizer step on a batch: forward under `precision`, the three losses in float32, backward."""
    with autocast(images.device, precision):
        out = model(images)
    loss, parts = weaktr_loss(out._replace(**{k: v.float() for k, v in out._asdict().items()}), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return parts


def train_epoch(
    state: TrainingState, loader: DataLoader, device: torch.device, precision: str, epoch: int
) -> dict[str, float]:
    state.model.train()
    sums: dict[str, float] = {}
    started = time.perf_counter()
    n_images = negatives = 0
    for images, targets in tqdm(loader, desc=f"train_cam epoch {epoch}", leave=False, mininterval=5):
        negatives += int((targets.sum(dim=1) == 0).sum())  # untagged images: all-zero targets in the loss
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        parts = cam_step(state.model, state.optimizer, images, targets, precision)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        n_images += images.shape[0]
    batches = max(len(loader), 1)
    seconds = time.perf_counter() - started
    return {
        **{f"loss_{k}": v / batches for k, v in sums.items()},
        "images_per_s": n_images / seconds,
        "seconds": seconds,
        "negatives": negatives,
    }


def gt_miou(model: WeakTr, records, dataset: DatasetParams, num_labels: int, precision: str) -> tuple[float, float]:
    """Best CAM mIoU (scale 1 + flip, no CRF) over background thresholds on labelled train images.
    This uses pixel labels, which weak supervision does not have; it runs only when asked."""
    model.eval()
    cms = np.zeros((len(SELECTION_THRESHOLDS), num_labels, num_labels), np.int64)
    for r in records:
        image = read_image(r.image, dataset.max_image_pixels, r.orientation)
        size = image.shape[:2]
        # Views at full size, as before max_side existed (a train_cam setting would change every
        # train_cam key); attention maps recomputed rather than kept: the training state is in memory.
        maps = multiscale_cams(
            model,
            [image],
            [r.tags],
            (1.0,),
            True,
            "fine",
            size,
            precision,
            2,
            max_side=max(size),
            cache_bytes=0,
        )[0]
        cms += cam_threshold_sweep(gt_mask(r), maps, np.array(r.tags), SELECTION_THRESHOLDS, num_labels)
    mious = [scores(cm)["miou"] for cm in cms]
    best = int(np.nanargmax(mious))
    return mious[best], float(SELECTION_THRESHOLDS[best])


def training_transform(params: TrainCamParams, mean, std):
    """The reference's DeiT training augmentation (weaktr-method.md §1.6) with the recipe's settings,
    ending in uint8 pixels (`ToPixels`: the model normalises its input itself)."""
    timm_transform = timm.data.create_transform(
        params.input_size,
        is_training=True,
        scale=(params.min_crop_scale, 1.0),
        hflip=0.5,
        auto_augment=params.auto_augment or None,
        re_prob=params.random_erasing,
        re_mode="pixel",
        re_count=1,
        interpolation="bicubic",
        mean=mean,
        std=std,
    )
    return torchvision.transforms.Compose([timm_transform, ToPixels(mean, std)])


def train_cam(params: TrainCamParams, dataset: DatasetParams, manifest_path: Path, out: Path) -> UnitResult:
    """The dask task: train (or resume) and write model.pt."""
    use_every_core()
    manifest = Manifest.load(manifest_path)
    records = manifest.split(dataset.train_split)
    if len(records) < params.batch_size:
        raise DataError(
            f"train split {dataset.train_split!r} has {len(records)} images, fewer than "
            f"train_cam.batch_size={params.batch_size}; lower the batch size"
        )
    device = pick_device("auto")
    state = build_state(params, manifest.num_fg_classes, device)
    resume_training(state, out / LAST, "train_cam")
    transform = training_transform(params, *state.model.normalisation)
    data = TaggedImages(records, manifest.num_fg_classes, transform, dataset.max_image_pixels)
    subset = [r for r in records if r.mask][: params.selection_subset]
    if params.selection == "gt_miou" and not subset:
        raise DataError("train_cam.selection='gt_miou' needs GT masks in the train split; use selection='last'")
    loader = training_loader(data, params.batch_size, params.num_workers, params.seed, device)
    for epoch in range(state.next_epoch, params.epochs):
        start_epoch(loader, params.seed, epoch)
        lr = state.optimizer.param_groups[0]["lr"]
        entry = {"epoch": epoch, "lr": lr, **train_epoch(state, loader, device, params.precision, epoch)}
        # The reference steps the scheduler with the finished epoch's index (so epoch e+1 runs at lr(e)).
        state.scheduler.step(epoch)
        if params.selection == "gt_miou":
            miou, threshold = gt_miou(state.model, subset, dataset, manifest.num_labels, params.precision)
            entry.update(gt_miou=miou, gt_threshold=threshold)
            if state.best is None or miou > state.best["miou"]:
                state.best = {"epoch": epoch, "miou": miou, "threshold": threshold}
                save_cam_model(out / "best.pt", state.model, epoch=epoch)
        state.history.append(entry)
        state.next_epoch = epoch + 1
        save_training_state(state, out / LAST)
        (out / LOG).write_text("".join(json.dumps(h) + "\n" for h in state.history))
        log.info(
            "train_cam: epoch %d/%d loss cls %.4f coarse %.4f fine %.4f lr %.2e %.1f img/s%s%s",
            epoch + 1,
            params.epochs,
            entry["loss_cls"],
            entry["loss_coarse"],
            entry["loss_fine"],
            lr,
            entry["images_per_s"],
            f" gt mIoU {entry['gt_miou']:.3f}" if "gt_miou" in entry else "",
            f" negatives {entry['negatives']}" if entry.get("negatives") else "",
        )
    if params.selection == "gt_miou":
        note = (
            f"epoch {state.best['epoch'] + 1} of {params.epochs} selected by CAM mIoU {state.best['miou']:.4f} "
            f"against pixel GT of {len(subset)} train images (not weakly supervised)"
        )
        save_checkpoint(out / MODEL, {**load_checkpoint(out / "best.pt"), "selection": note})  # best.pt, noted
    else:
        note = f"the last epoch ({params.epochs} of {params.epochs}); no pixel labels used"
        save_cam_model(out / MODEL, state.model, epoch=params.epochs - 1, selection=note)
    last = state.history[-1]
    return [out / MODEL], {
        "selection": note,
        "final_loss": {k: v for k, v in last.items() if k.startswith("loss_")},
        "images_per_s": last["images_per_s"],
    }


def warn_if_no_contrast(manifest: Manifest, split: str) -> None:
    """Warn loudly when every training image carries the same tag set: the multilabel loss is then
    met by predicting those tags everywhere, and the CAMs localise only what pretraining knew."""
    tag_sets = {r.tags for r in manifest.split(split)}
    if len(tag_sets) == 1:
        (tags,) = tag_sets
        names = ", ".join(manifest.classes[t] for t in tags) or "no tags"
        log.warning(
            "!!! train_cam: every image of split %r is tagged {%s}: the classifier has nothing to contrast them "
            "with. Add images without these objects as negatives (untagged rows, dataset.untagged=keep)",
            split,
            names,
        )


def _plan(ctx: StageContext) -> list[Unit]:
    manifest_path = ctx.input_path("index", "manifest")
    warn_if_no_contrast(Manifest.load(manifest_path), ctx.recipe["dataset"].train_split)
    args = (ctx.params, ctx.recipe["dataset"], manifest_path, ctx.artifact.path)
    return [Unit(0, train_cam, args, f"{ctx.params.epochs} epochs")]


def _finalize(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: records[0][k] for k in ("selection", "final_loss", "images_per_s")}


def _check_weights(recipe, run_dir: Path) -> None:
    p = recipe["train_cam"]
    check_weights(p.backbone, p.weights, "train_cam.weights")


STAGE = Stage(
    name="train_cam",
    version=2,
    section="train_cam",
    inputs=("index",),
    gpu=True,
    plan=_plan,
    finalize=_finalize,
    outputs=(
        Output("model", MODEL, "the selected CAM checkpoint (weights, normalisation, selection note)"),
        Output("log", LOG, "one JSON line per epoch"),
    ),
    checks=(_check_weights,),
)
