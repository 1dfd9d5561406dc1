"""train_decoder: online retraining of a Segmenter on the pseudo-masks with the gradient-clipping
loss (weaktr-method.md §3). Output: `model.pt`, `last.pt` (resume state), `log.jsonl`.

Masks come from the `pseudo_labels` artifact, or from any folder of `<image id>.png` masks the user
points `train_decoder.masks` at (retraining on one's own pseudo-labels).

Built from the same pieces as train_cam: `build_state`, `resume_training`, `train_epoch`,
`save_training_state`; a run killed at any point and resumed from `last.pt` ends with exactly the
weights of an uninterrupted run (on CPU).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from labelgen.config import DatasetParams, TrainDecoderParams
from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.masks import read_mask
from labelgen.data.seg_augment import pad_to, photometric_distortion, random_crop, random_resize
from labelgen.data.training import (
    seed_everything,
    start_epoch,
    training_loader,
)
from labelgen.devices import pick_device, use_every_core
from labelgen.errors import ConfigError, DataError
from labelgen.models.losses import ClipStats, GradientClippingLoss, clip_start_problem
from labelgen.models.precision import autocast
from labelgen.models.segmenter import Segmenter, SegmenterConfig, save_segmenter
from labelgen.models.weights import check_weights
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult
from labelgen.store.checkpoint import TrainingState, resume_training, save_training_state
from labelgen.store.sharded import ImageArrays

log = logging.getLogger(__name__)

MODEL = "model.pt"
LAST = "last.pt"  # resume state, rewritten every epoch; read by this stage alone
LOG = "log.jsonl"


def poly_lr(step: int, total: int, base: float, floor: float, power: float) -> float:
    """(base − floor)·(1 − step/total)^power + floor, the reference's per-iteration schedule."""
    return (base - floor) * (1 - step / total) ** power + floor


class PseudoMaskImages(Dataset):
    """(uint8 3×crop×crop image, uint8 crop×crop mask) pairs with the reference's augmentation. Both
    stay uint8 until they are on the training device (`Segmenter.preprocess`, `.long()`): a quarter of
    the image bytes and an eighth of the mask bytes through the loader processes' shared memory and
    the host-to-device copy."""

    def __init__(self, records: list[ImageRecord], masks: str, p: TrainDecoderParams, max_pixels: int):
        self.records, self.masks, self.p, self.max_pixels = records, masks, p, max_pixels
        self._store: ImageArrays | None = None  # opened lazily, once per loader process

    def __len__(self) -> int:
        return len(self.records)

    def _mask(self, i: int) -> np.ndarray:
        if Path(self.masks).suffix == ".zarr":
            if self._store is None:
                self._store = ImageArrays(Path(self.masks))
            return self._store.mask(i)
        return read_mask(Path(self.masks) / f"{self.records[i].id}.png")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(torch.randint(0, 2**63 - 1, ()).item())  # follows the seeded torch RNG
        image = read_image(self.records[i].image, self.max_pixels, self.records[i].orientation)
        mask = self._mask(i)
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask of {self.records[i].id} is {mask.shape}, its image {image.shape[:2]}")
        p = self.p
        image, mask = random_resize(image, mask, p.resize_short, p.scale_range, rng)
        image, mask = random_crop(image, mask, p.crop_size, p.cat_max_ratio, rng)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        image = photometric_distortion(np.ascontiguousarray(image), rng)
        image, mask = pad_to(image, np.ascontiguousarray(mask), p.crop_size)
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(np.ascontiguousarray(mask))


def _mask_source(p: TrainDecoderParams, ctx: StageContext, records: list[ImageRecord]) -> str:
    if p.masks == "pseudo_labels":
        store = ctx.input_path("pseudo_labels", "masks")
        ids = ImageArrays(store).ids
        if ids != [r.id for r in records]:
            raise DataError(f"{store} does not hold the train split's images in manifest order")
        return str(store)
    folder = Path(p.masks).expanduser().resolve()
    missing = [r.id for r in records if not (folder / f"{r.id}.png").is_file()]
    if missing:
        raise DataError(
            f"train_decoder.masks={folder}: no mask for {len(missing)} train images, e.g. "
            f"{folder / (missing[0] + '.png')}; name masks <image id>.png"
        )
    return str(folder)


def decoder_step(
    model: Segmenter, optimizer: torch.optim.Optimizer, criterion: GradientClippingLoss, images, targets, precision: str
) -> tuple[float, ClipStats]:
    """One optimizer step on a batch: forward under `precision`, clamp loss in float32, backward."""
    with autocast(images.device, precision):
        logits = model(images)[0]
    loss, stats = criterion(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), stats


def build_state(p: TrainDecoderParams, num_labels: int, device: torch.device) -> TrainingState:
    """A fresh training: the Segmenter and SGD (Nesterov) with the encoder's smaller learning rate;
    the learning rate itself is set every step (`poly_lr`)."""
    seed_everything(p.seed)
    config = SegmenterConfig(
        p.backbone,
        num_labels,
        p.decoder_layers,
        p.decoder_dropout,
        p.drop_path,
        layer_norm_eps=p.layer_norm_eps,
        pos_embed_resample=p.pos_embed_resample,
        image_size=p.crop_size,
        patch_size=p.patch_size,
        normalisation=p.normalisation,
    )
    model = Segmenter(config, p.weights).to(device)
    encoder, decoder = model.param_groups()
    optimizer = torch.optim.SGD(
        [{"params": encoder, "lr_mult": p.encoder_lr_mult}, {"params": decoder, "lr_mult": 1.0}],
        lr=p.lr,
        momentum=p.momentum,
        nesterov=True,
        weight_decay=p.weight_decay,
    )
    return TrainingState(model, optimizer)


def train_epoch(
    state: TrainingState, loader: DataLoader, criterion: GradientClippingLoss, p: TrainDecoderParams, epoch: int
) -> dict[str, float]:
    """One epoch of `len(loader)` steps at the poly schedule's learning rates; its log entry."""
    model, optimizer = state.model, state.optimizer
    device = next(model.parameters()).device
    steps_per_epoch = len(loader)
    total = steps_per_epoch * p.epochs
    model.train()
    started, losses, clipped = time.perf_counter(), [], []
    for i, (images, targets) in enumerate(
        tqdm(loader, desc=f"train_decoder epoch {epoch}", leave=False, mininterval=5)
    ):
        lr = poly_lr(epoch * steps_per_epoch + i, total, p.lr, p.min_lr, p.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        images = images.to(device, non_blocking=True)  # uint8: the model normalises them
        targets = targets.to(device, non_blocking=True).long()
        loss, stats = decoder_step(model, optimizer, criterion, images, targets, p.precision)
        losses.append(loss)
        clipped.append(stats.clipped_fraction if stats.clipping else 0.0)
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch,
        "lr": lr,
        "loss": float(np.mean(losses)),
        "clipped_fraction": float(np.mean(clipped)),
        "images_per_s": steps_per_epoch * p.batch_size / seconds,
        "seconds": seconds,
    }


def train_decoder(
    p: TrainDecoderParams, dataset: DatasetParams, manifest_path: Path, masks: str, out: Path
) -> UnitResult:
    """The dask task: train (or resume) the Segmenter and write model.pt."""
    use_every_core()
    manifest = Manifest.load(manifest_path)
    records = manifest.split(dataset.train_split)
    if len(records) < p.batch_size:
        raise DataError(f"{len(records)} train images, fewer than train_decoder.batch_size={p.batch_size}")
    device = pick_device("auto")
    state = build_state(p, manifest.num_labels, device)
    criterion = GradientClippingLoss(p.clip_window, p.clip_start, enabled=p.gradient_clipping)
    data = PseudoMaskImages(records, masks, p, dataset.max_image_pixels)
    resume_training(state, out / LAST, "train_decoder")
    loader = training_loader(data, p.batch_size, p.num_workers, p.seed, device)
    for epoch in range(state.next_epoch, p.epochs):
        start_epoch(loader, p.seed, epoch)
        entry = train_epoch(state, loader, criterion, p, epoch)
        state.history.append(entry)
        state.next_epoch = epoch + 1
        save_training_state(state, out / LAST)
        (out / LOG).write_text("".join(json.dumps(h) + "\n" for h in state.history))
        log.info(
            "train_decoder: epoch %d/%d loss %.4f clipped %.3f lr %.2e %.1f img/s",
            epoch + 1,
            p.epochs,
            entry["loss"],
            entry["clipped_fraction"],
            entry["lr"],
            entry["images_per_s"],
        )
    save_segmenter(out / MODEL, state.model, epoch=p.epochs - 1)
    last = state.history[-1]
    return [out / MODEL], {"final_loss": last["loss"], "images_per_s": last["images_per_s"]}


def _plan(ctx: StageContext) -> list[Unit]:
    dataset: DatasetParams = ctx.recipe["dataset"]
    manifest_path = ctx.input_path("index", "manifest")
    records = Manifest.load(manifest_path).split(dataset.train_split)
    masks = _mask_source(ctx.params, ctx, records)
    return [
        Unit(
            0,
            train_decoder,
            (ctx.params, dataset, manifest_path, masks, ctx.artifact.path),
            f"{ctx.params.epochs} epochs",
        )
    ]


def _finalize(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: records[0][k] for k in ("final_loss", "images_per_s")}


def _key_extra(recipe, run_dir: Path) -> dict[str, Any]:
    """A user's mask folder is identified by its path; the pseudo_labels artifact by its key (an input)."""
    masks = recipe["train_decoder"].masks
    return {} if masks == "pseudo_labels" else {"masks_folder": str(Path(masks).expanduser().resolve())}


def _used_inputs(recipe) -> tuple[str, ...]:
    """Retraining on a user's own mask folder needs no CAM stages at all."""
    return ("index", "pseudo_labels") if recipe["train_decoder"].masks == "pseudo_labels" else ("index",)


def _check_weights(recipe, run_dir: Path) -> None:
    p = recipe["train_decoder"]
    check_weights(p.backbone, p.weights, "train_decoder.weights")


def _check_clip_start(recipe, classes: tuple[str, ...]) -> None:
    p: TrainDecoderParams = recipe["train_decoder"]
    problem = clip_start_problem(p.clip_start, len(classes)) if p.gradient_clipping else None
    if problem:
        raise ConfigError(problem)


STAGE = Stage(
    name="train_decoder",
    version=2,
    section="train_decoder",
    inputs=("index", "pseudo_labels"),
    gpu=True,
    plan=_plan,
    finalize=_finalize,
    outputs=(
        Output("model", MODEL, "the trained Segmenter checkpoint (weights, config, normalisation)"),
        Output("log", LOG, "one JSON line per epoch"),
    ),
    key_extra=_key_extra,
    used_inputs=_used_inputs,
    checks=(_check_weights,),
    class_checks=(_check_clip_start,),
)
