"""train_cam: train the WeakTr CAM network on image-level tags (weaktr-method.md §1.5–§1.6).

Output: `model.pt` (selected weights + config), `last.pt` (resume state, replaced atomically at every
epoch end and every few steps or minutes), `log.jsonl` (one line per epoch). The training itself is
`labelgen.training.loop` configured with `CamTraining`: a run killed at any point and resumed from
`last.pt` ends with exactly the weights of an uninterrupted run (on CPU).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import timm.data
import torch
import torchvision
from timm.scheduler import CosineLRScheduler

from labelgen.config import DatasetParams, TrainCamParams
from labelgen.data.images import read_image
from labelgen.data.manifest import Manifest
from labelgen.data.masks import gt_mask
from labelgen.data.training import TaggedImages
from labelgen.errors import DataError
from labelgen.models.cam_inference import multiscale_cams, save_cam_model
from labelgen.models.pixels import ToPixels
from labelgen.models.precision import autocast
from labelgen.models.weaktr import WeakTr, WeakTrConfig, weaktr_loss
from labelgen.models.weights import check_weights
from labelgen.numerics.metrics import SELECTION_THRESHOLDS, cam_threshold_sweep, scores
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult
from labelgen.store.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from labelgen.training.loop import LAST, LOG, LoopSettings, train
from labelgen.training.ranks import Ranks, check_devices, run_ranks

log = logging.getLogger(__name__)

MODEL = "model.pt"


class CamTraining:
    """train_cam's pieces of the training loop (`labelgen.training.loop.StageTraining`)."""

    def __init__(self, params: TrainCamParams, dataset: DatasetParams, manifest: Manifest, out: Path):
        self.params, self.dataset, self.manifest, self.out = params, dataset, manifest, out
        self.records = manifest.split(dataset.train_split)
        self.subset = [r for r in self.records if r.mask][: params.selection_subset]

    def build(self, device: torch.device) -> TrainingState:
        """A fresh training: model, AdamW, cosine schedule; `best` is the gt_miou selection's
        {"epoch", "miou", "threshold"} once there is one."""
        p = self.params
        config = WeakTrConfig(
            p.backbone,
            self.manifest.num_fg_classes,
            p.fusion,
            p.aaf_reduction,
            p.aaf_feat_reduction,
            p.drop_path,
            head_init=p.head_init,
            pos_embed_resample=p.pos_embed_resample,
            patch_size=p.patch_size,
            normalisation=p.normalisation,
        )
        model = WeakTr(config, p.weights).to(device)
        # the reference's linear scaling rule, with labelgen's global batch (README "Training on many GPUs")
        peak_lr = p.base_lr * p.batch_size / 512
        # uniform weight decay on every parameter, as the reference (timm 0.5.4 given model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=p.weight_decay, eps=1e-8)
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=p.epochs,
            lr_min=p.min_lr,
            warmup_lr_init=p.warmup_lr,
            warmup_t=p.warmup_epochs,
            t_in_epochs=True,
        )
        return TrainingState(model, optimizer, scheduler)

    def data(self, state: TrainingState) -> TaggedImages:
        transform = training_transform(self.params, *state.model.normalisation)
        return TaggedImages(self.records, self.manifest.num_fg_classes, transform, self.dataset.max_image_pixels)

    def loss(self, model: WeakTr, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward under `precision`, the three losses in float32; untagged images (all-zero targets)
        are counted as negatives."""
        images, targets = (t.to(device, non_blocking=True) for t in batch)
        with autocast(images.device, self.params.precision):
            out = model(images)
        loss, parts = weaktr_loss(out._replace(**{k: v.float() for k, v in out._asdict().items()}), targets)
        return loss, {**parts, "negatives": float((targets.sum(dim=1) == 0).sum())}

    def set_lr(self, state: TrainingState, epoch: int, step: int, steps_per_epoch: int) -> None:
        """The cosine schedule moves per epoch (`end_epoch`)."""

    def end_epoch(
        self, state: TrainingState, epoch: int, sums: dict[str, float], micro_batches: int, writer: bool
    ) -> dict[str, Any]:
        lr = state.optimizer.param_groups[0]["lr"]
        # The reference steps the scheduler with the finished epoch's index (so epoch e+1 runs at lr(e)).
        state.scheduler.step(epoch)
        entry = {
            "lr": lr,
            **{f"loss_{k}": sums[k] / micro_batches for k in ("cls", "coarse", "fine")},
            "negatives": int(sums["negatives"]),
        }
        if self.params.selection == "gt_miou" and writer:  # rank 0 alone: it holds the weights every rank has
            p = self.params
            miou, threshold = gt_miou(state.model, self.subset, self.dataset, self.manifest.num_labels, p.precision)
            entry.update(gt_miou=miou, gt_threshold=threshold)
            if state.best is None or miou > state.best["miou"]:
                state.best = {"epoch": epoch, "miou": miou, "threshold": threshold}
                save_cam_model(self.out / "best.pt", state.model, epoch=epoch)
        return entry

    def log_line(self, entry: dict[str, Any], epochs: int) -> str:
        return (
            f"train_cam: epoch {entry['epoch'] + 1}/{epochs} loss cls {entry['loss_cls']:.4f} coarse "
            f"{entry['loss_coarse']:.4f} fine {entry['loss_fine']:.4f} lr {entry['lr']:.2e} "
            f"{entry['images_per_s']:.1f} img/s"
            + (f" gt mIoU {entry['gt_miou']:.3f}" if "gt_miou" in entry else "")
            + (f" negatives {entry['negatives']}" if entry.get("negatives") else "")
        )


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
    """The dask task: train (or resume) on `params.devices` ranks and write model.pt."""
    manifest = Manifest.load(manifest_path)
    records = manifest.split(dataset.train_split)
    if len(records) < params.batch_size:
        raise DataError(
            f"train split {dataset.train_split!r} has {len(records)} images, fewer than "
            f"train_cam.batch_size={params.batch_size}; lower the batch size"
        )
    if params.selection == "gt_miou" and not any(r.mask for r in records):
        raise DataError("train_cam.selection='gt_miou' needs GT masks in the train split; use selection='last'")
    args = (params, dataset, manifest_path, out)
    return run_ranks(
        "train_cam", _train_rank, args, params.devices, params.batch_size, params.collective_timeout_s, out / LAST
    )


def _train_rank(
    params: TrainCamParams, dataset: DatasetParams, manifest_path: Path, out: Path, ranks: Ranks
) -> UnitResult | None:
    """One rank of the training; rank 0 writes model.pt and returns the unit's result."""
    stage = CamTraining(params, dataset, Manifest.load(manifest_path), out)
    state = train(stage, LoopSettings.of("train_cam", params), out, ranks)
    if not ranks.writer:
        return None
    if params.selection == "gt_miou":
        note = (
            f"epoch {state.best['epoch'] + 1} of {params.epochs} selected by CAM mIoU {state.best['miou']:.4f} "
            f"against pixel GT of {len(stage.subset)} train images (not weakly supervised)"
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


def _check_devices(recipe, out: Path, client) -> None:
    p = recipe["train_cam"]
    check_devices("train_cam", p.devices, p.batch_size, client, out / LAST)


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
    cluster_checks=(_check_devices,),
)
