"""train_decoder: online retraining of a Segmenter on the pseudo-masks with the gradient-clipping
loss (weaktr-method.md §3). Output: `model.pt`, `last.pt` (resume state), `log.jsonl`.

Masks come from the `pseudo_labels` artifact, or from any folder of `<image id>.png` masks the user
points `train_decoder.masks` at (retraining on one's own pseudo-labels); an image people corrected
(the `corrections` input, where the run has one) trains on its correction instead.

The training itself is `labelgen.training.loop` configured with `DecoderTraining`, as train_cam's; a
run killed at any point and resumed from `last.pt` ends with exactly the weights of an uninterrupted
run (on CPU).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from labelgen.config import DatasetParams, TrainDecoderParams
from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.masks import read_mask
from labelgen.data.seg_augment import pad_to, photometric_distortion, random_crop, random_resize
from labelgen.errors import ConfigError, DataError
from labelgen.models.losses import GradientClippingLoss, clip_start_problem
from labelgen.models.precision import autocast
from labelgen.models.segmenter import Segmenter, SegmenterConfig, save_segmenter
from labelgen.models.weights import check_weights
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult
from labelgen.review.pulled import corrected_masks
from labelgen.store.checkpoint import TrainingState
from labelgen.store.sharded import ImageArrays
from labelgen.training.loop import LAST, LOG, LoopSettings, train
from labelgen.training.ranks import Ranks, check_devices, run_ranks

log = logging.getLogger(__name__)

MODEL = "model.pt"


def poly_lr(step: int, total: int, base: float, floor: float, power: float) -> float:
    """(base − floor)·(1 − step/total)^power + floor, the reference's per-iteration schedule."""
    return (base - floor) * (1 - step / total) ** power + floor


class PseudoMaskImages(Dataset):
    """(uint8 3×crop×crop image, uint8 crop×crop mask) pairs with the reference's augmentation. Both
    stay uint8 until they are on the training device (the model normalises, `.long()`): a quarter of
    the image bytes and an eighth of the mask bytes through the loader processes' shared memory and
    the host-to-device copy."""

    def __init__(
        self,
        records: list[ImageRecord],
        masks: str,
        p: TrainDecoderParams,
        max_pixels: int,
        corrected: dict[str, str] | None = None,
    ):
        self.records, self.masks, self.p, self.max_pixels = records, masks, p, max_pixels
        self.corrected = corrected or {}  # image id -> a person's corrected mask (PNG), used instead
        self._store: ImageArrays | None = None  # opened lazily, once per loader process

    def __len__(self) -> int:
        return len(self.records)

    def _mask(self, i: int) -> np.ndarray:
        """The H×W uint8 mask image i trains on: its correction where a person made one."""
        if self.records[i].id in self.corrected:
            return read_mask(self.corrected[self.records[i].id])
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


class DecoderTraining:
    """train_decoder's pieces of the training loop (`labelgen.training.loop.StageTraining`)."""

    def __init__(
        self, p: TrainDecoderParams, dataset: DatasetParams, manifest: Manifest, masks: str, corrected: dict[str, str]
    ):
        self.p, self.dataset, self.manifest, self.masks = p, dataset, manifest, masks
        self.corrected = corrected  # image id -> a person's corrected mask (PNG), trained on instead
        self.criterion = GradientClippingLoss(p.clip_window, p.clip_start, enabled=p.gradient_clipping)

    def build(self, device: torch.device) -> TrainingState:
        """A fresh training: the Segmenter and SGD (Nesterov) with the encoder's smaller learning rate;
        the learning rate itself is set every step (`set_lr`)."""
        p = self.p
        shared = ("backbone", "decoder_layers", "decoder_dropout", "drop_path", "layer_norm_eps", "pos_embed_resample",
                  "patch_size", "normalisation")  # fmt: skip
        config = SegmenterConfig(
            num_labels=self.manifest.num_labels, image_size=p.crop_size, **{k: getattr(p, k) for k in shared}
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

    def data(self, state: TrainingState) -> PseudoMaskImages:
        records = self.manifest.split(self.dataset.train_split)
        return PseudoMaskImages(records, self.masks, self.p, self.dataset.max_image_pixels, self.corrected)

    def loss(self, model: Segmenter, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward under `precision`, the clamp loss in float32 (clipping statistics per micro-batch,
        as the reference's per GPU)."""
        images, targets = batch
        images = images.to(device, non_blocking=True)  # uint8: the model normalises them
        targets = targets.to(device, non_blocking=True).long()
        with autocast(images.device, self.p.precision):
            logits = model(images)[0]
        loss, stats = self.criterion(logits.float(), targets)
        return loss, {"loss": float(loss.detach()), "clipped": stats.clipped_fraction if stats.clipping else 0.0}

    def set_lr(self, state: TrainingState, epoch: int, step: int, steps_per_epoch: int) -> None:
        """The poly schedule of the reference, per iteration; the encoder at `encoder_lr_mult` of it."""
        p = self.p
        lr = poly_lr(epoch * steps_per_epoch + step, steps_per_epoch * p.epochs, p.lr, p.min_lr, p.poly_power)
        for group in state.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]

    def end_epoch(
        self, state: TrainingState, epoch: int, sums: dict[str, float], micro_batches: int, writer: bool
    ) -> dict[str, Any]:
        return {
            "lr": state.optimizer.param_groups[-1]["lr"],  # the decoder's (lr_mult 1): the schedule's value
            "loss": sums["loss"] / micro_batches,
            "clipped_fraction": sums["clipped"] / micro_batches,
        }

    def log_line(self, entry: dict[str, Any], epochs: int) -> str:
        return (
            f"train_decoder: epoch {entry['epoch'] + 1}/{epochs} loss {entry['loss']:.4f} clipped "
            f"{entry['clipped_fraction']:.3f} lr {entry['lr']:.2e} {entry['images_per_s']:.1f} img/s"
        )


def train_decoder(
    p: TrainDecoderParams,
    dataset: DatasetParams,
    manifest_path: Path,
    masks: str,
    out: Path,
    corrected: dict[str, str] | None = None,
) -> UnitResult:
    """The dask task: train (or resume) the Segmenter on `p.devices` ranks and write model.pt."""
    records = Manifest.load(manifest_path).split(dataset.train_split)
    if len(records) < p.batch_size:
        raise DataError(f"{len(records)} train images, fewer than train_decoder.batch_size={p.batch_size}")
    args = (p, dataset, manifest_path, masks, out, corrected or {})
    return run_ranks("train_decoder", _train_rank, args, p.devices, p.batch_size, p.collective_timeout_s, out / LAST)


def _train_rank(
    p: TrainDecoderParams,
    dataset: DatasetParams,
    manifest_path: Path,
    masks: str,
    out: Path,
    corrected: dict[str, str],
    ranks: Ranks,
) -> UnitResult | None:
    """One rank of the training; rank 0 writes model.pt and returns the unit's result."""
    stage = DecoderTraining(p, dataset, Manifest.load(manifest_path), masks, corrected)
    state = train(stage, LoopSettings.of("train_decoder", p), out, ranks)
    if not ranks.writer:
        return None
    save_segmenter(out / MODEL, state.model, epoch=p.epochs - 1)
    last = state.history[-1]
    info = {"final_loss": last["loss"], "images_per_s": last["images_per_s"], "corrected_images": len(corrected)}
    return [out / MODEL], info


def _plan(ctx: StageContext) -> list[Unit]:
    dataset: DatasetParams = ctx.recipe["dataset"]
    manifest_path = ctx.input_path("index", "manifest")
    records = Manifest.load(manifest_path).split(dataset.train_split)
    masks = _mask_source(ctx.params, ctx, records)
    train_ids = {r.id for r in records}
    corrected = {i: str(path) for i, path in corrected_masks(ctx).items() if i in train_ids}
    if corrected:
        log.info("train_decoder: %d of %d train images train on a person's correction", len(corrected), len(records))
    return [
        Unit(
            0,
            train_decoder,
            (ctx.params, dataset, manifest_path, masks, ctx.artifact.path, corrected),
            f"{ctx.params.epochs} epochs",
        )
    ]


def _finalize(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: records[0][k] for k in ("final_loss", "images_per_s", "corrected_images") if k in records[0]}


def _key_extra(recipe, run_dir: Path) -> dict[str, Any]:
    """A user's mask folder is identified by its path; the pseudo_labels artifact by its key (an input)."""
    masks = recipe["train_decoder"].masks
    return {} if masks == "pseudo_labels" else {"masks_folder": str(Path(masks).expanduser().resolve())}


def _used_inputs(recipe) -> tuple[str, ...]:
    """Retraining on a user's own mask folder needs no CAM stages at all; corrections, where the run
    has them, replace either's masks."""
    own = recipe["train_decoder"].masks != "pseudo_labels"
    return ("index", "corrections") if own else ("index", "pseudo_labels", "corrections")


def _check_weights(recipe, run_dir: Path) -> None:
    p = recipe["train_decoder"]
    check_weights(p.backbone, p.weights, "train_decoder.weights")


def _check_devices(recipe, out: Path, client) -> None:
    p = recipe["train_decoder"]
    check_devices("train_decoder", p.devices, p.batch_size, client, out / LAST)


def _check_clip_start(recipe, classes: tuple[str, ...]) -> None:
    p: TrainDecoderParams = recipe["train_decoder"]
    problem = clip_start_problem(p.clip_start, len(classes)) if p.gradient_clipping else None
    if problem:
        raise ConfigError(problem)


STAGE = Stage(
    name="train_decoder",
    version=2,
    section="train_decoder",
    inputs=("index", "pseudo_labels", "corrections"),
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
    cluster_checks=(_check_devices,),
    class_checks=(_check_clip_start,),
)
