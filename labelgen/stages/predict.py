"""predict: multi-scale + flip + sliding-window Segmenter inference, optional softmax CRF
(weaktr-method.md §3.4, §2) -> `masks_<split>.zarr` for the train split (refined pseudo-masks) and
the val split. One dask task per shard.

Images of any size the index accepts run within a bounded memory: no array over all labels is
longer than `predict.max_side` (`pass_size`, `working_size`); only the label map, the image and
the CRF's few present labels are full size."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelgen.config import PredictParams
from labelgen.data.images import read_image
from labelgen.data.index import dataset_splits
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.devices import pick_device
from labelgen.models.precision import autocast
from labelgen.models.segmenter import Segmenter, load_segmenter
from labelgen.numerics.crf import CrfParams, crf_on_probs
from labelgen.numerics.maps_to_labels import resize_maps, resized_argmax
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult, shard_units, summarise_shards
from labelgen.store.sharded import StoreLayout, create_mask_store, write_mask_shard

log = logging.getLogger(__name__)

MASKS = "masks_{split}.zarr"
UNRESTRICTED = "unrestricted_{split}.zarr"  # a restricted split's raw predictions (predict.restrict_to_tags)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, length); the last window is aligned to the border."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


@torch.no_grad()
def sliding_logits(model: Segmenter, x: torch.Tensor, window: int, stride: int, depth_blend: float) -> torch.Tensor:
    """x 1, 3, H, W -> probabilities 1, L, H, W, averaged over overlapping windows.

    With depth_blend > 0 the result is softmax(last depth) + depth_blend·softmax(previous depth),
    the reference's hidden default of 0.8, here an explicit option."""
    _, _, h, w = x.shape
    total, count = None, torch.zeros(1, 1, h, w, device=x.device)
    for y in window_starts(h, window, stride):
        for x0 in window_starts(w, window, stride):
            crop = x[..., y : y + window, x0 : x0 + window]
            outs = model(crop, all_depths=depth_blend > 0)
            probs = outs[-1].float().softmax(1)
            if depth_blend > 0:
                probs = probs + depth_blend * outs[-2].float().softmax(1)
            if total is None:
                total = torch.zeros(1, probs.shape[1], h, w, device=x.device)
            total[..., y : y + crop.shape[-2], x0 : x0 + crop.shape[-1]] += probs
            count[..., y : y + crop.shape[-2], x0 : x0 + crop.shape[-1]] += 1
    return total / count


def resize_pixels(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 B, 3, H, W resized bilinearly (align_corners False) to size (h, w), rounded back to uint8
    as the reference's mmseg resize of the uint8 photo does before normalising."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _pass_scale(h: int, w: int, ratio: float, p: PredictParams) -> float:
    return max(p.resize_short * ratio, p.window) / min(h, w)


def pass_fit(h: int, w: int, p: PredictParams) -> float:
    """The factor (≤ 1) applied to every scale pass of an h×w image so that the largest pass's long
    side is at most p.max_side pixels; 1.0 (exactly) when it already is."""
    largest = max(_pass_scale(h, w, ratio, p) for ratio in p.scales) * max(h, w)
    return min(1.0, p.max_side / largest)


def pass_size(h: int, w: int, ratio: float, p: PredictParams) -> tuple[int, int]:
    """The resized (h, w) in pixels of one scale pass: short side resize_short·ratio, keeping the
    aspect ratio; short sides below the window are upsampled to it; then every pass is shrunk by
    `pass_fit`, so the largest is at most max_side long (only very elongated images)."""
    scale = _pass_scale(h, w, ratio, p) * pass_fit(h, w, p)
    return max(1, round(h * scale)), max(1, round(w * scale))


def working_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(h, w) at which predict sums an h×w image's probabilities: its own size, or, when its long side
    exceeds max_side, its size scaled to a long side of max_side (each side at least 1)."""
    if max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


@torch.no_grad()
def predict_probs(model: Segmenter, image: np.ndarray, p: PredictParams) -> np.ndarray:
    """Class probabilities (L, h, w) float32, summing to 1 over the L labels at each pixel, averaged
    over scales × flips for one H×W×3 uint8 image, at (h, w) = `working_size(H, W, p.max_side)`:
    the image's size unless it is longer than max_side. `probs_to_mask` brings them to full size.

    Each pass's probabilities are resized bilinearly to (h, w), un-flipped and added in place, so
    memory holds about three L×h×w arrays and the pass's own, never L full-size arrays."""
    device = next(model.parameters()).device
    h, w = image.shape[:2]
    size = working_size(h, w, p.max_side)
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None]
    total = None
    for ratio in p.scales:
        scaled = resize_pixels(x, pass_size(h, w, ratio, p))
        for flip in (False, True) if p.flip else (False,):
            inp = scaled.flip(-1) if flip else scaled
            with autocast(device, p.precision):
                probs = sliding_logits(model, inp, p.window, p.window_stride, p.depth_blend)
            probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
            probs = probs.flip(-1) if flip else probs
            if total is None:
                total = probs
            else:
                total += probs
            del probs
    return (total[0] / total[0].sum(0, keepdim=True)).cpu().numpy()


def probs_to_mask(image: np.ndarray, probs: np.ndarray, p: PredictParams) -> np.ndarray:
    """H×W uint8 labels of an H×W×3 uint8 image from its probabilities (L, h, w) at any size
    (`predict_probs`): the argmax of the probabilities resized bilinearly to H×W (`resized_argmax`,
    a few labels at a time), refined by a CRF at full size over the labels present in the argmax
    (their probabilities resized, not renormalised, as the reference)."""
    size = image.shape[:2]
    labels = resized_argmax(probs, size)
    if not p.crf:
        return labels.astype(np.uint8)
    present = np.unique(labels)
    refined = crf_on_probs(image, resize_maps(probs[present], size), CrfParams.of(p))
    return present[refined.argmax(0)].astype(np.uint8)


def _log_resizing(record: ImageRecord, p: PredictParams) -> None:
    """Say (INFO) when an image is beyond predict.max_side: passes shrunk, or probabilities summed
    below full size."""
    h, w = record.height, record.width
    fit, size = pass_fit(h, w, p), working_size(h, w, p.max_side)
    if fit < 1.0 or size != (h, w):
        log.info(
            "predict: image %s is %d×%d px; passes shrunk by a factor %.4g, probabilities summed at %d×%d "
            "(predict.max_side=%d)",
            record.id,
            w,
            h,
            fit,
            size[1],
            size[0],
            p.max_side,
        )


def restricted_splits(p: PredictParams, train_split: str, splits: list[str]) -> list[str]:
    """The splits whose masks `predict.restrict_to_tags` keeps within their tags."""
    return {"all": list(splits), "train": [s for s in splits if s == train_split], "none": []}[p.restrict_to_tags]


def within_tags(probs: np.ndarray, tags: tuple[int, ...]) -> np.ndarray:
    """Probabilities (L, h, w) with every label the tags exclude (not background, not tagged) set to
    0, so that the argmax (and the CRF, which runs over the labels the argmax holds) picks the most
    probable allowed label at each pixel. A copy; `probs` is not changed."""
    out = np.zeros_like(probs)
    allowed = [0, *tags]
    out[allowed] = probs[allowed]
    return out


def predict_shard(
    p: PredictParams,
    model_path: Path,
    records: list[ImageRecord],
    layout: StoreLayout,
    shard: int,
    store: Path,
    max_pixels: int,
    unrestricted: Path | None = None,
) -> UnitResult:
    """One shard's masks into `store`; with `unrestricted` (a restricted split) the masks keep to
    each image's tags (`within_tags`) and the raw predictions go to `unrestricted`."""
    device = pick_device(p.device)
    model = load_segmenter(model_path, device)
    masks, raw, changed = [], [], 0
    for r in records:
        _log_resizing(r, p)
        image = read_image(r.image, max_pixels, r.orientation)
        probs = predict_probs(model, image, p)
        mask = probs_to_mask(image, probs, p)
        if unrestricted is not None:
            raw.append(mask)
            if np.isin(mask, [0, *r.tags], invert=True).any():  # a class the tags exclude: predict again within them
                mask = probs_to_mask(image, within_tags(probs, r.tags), p)
                changed += 1
        masks.append(mask)
    written = write_mask_shard(store, layout, shard, masks)
    if unrestricted is not None:
        written += write_mask_shard(unrestricted, layout, shard, raw)
    return written, {"images": len(records), "restricted_to_tags": changed}


def _plan(ctx: StageContext) -> list[Unit]:
    p: PredictParams = ctx.params
    manifest = Manifest.load(ctx.input_path("index", "manifest"))
    model = ctx.input_path("train_decoder", "model")
    max_pixels = ctx.recipe["dataset"].max_image_pixels
    units = []
    splits = dataset_splits(ctx.recipe["dataset"])
    restricted = restricted_splits(p, ctx.recipe["dataset"].train_split, splits)
    for split in splits:
        records = manifest.split(split)
        layout = StoreLayout(tuple(r.id for r in records), tuple((r.height, r.width) for r in records), p.shard_size)
        store = ctx.output_path("masks", split=split)
        raw = ctx.output_path("unrestricted", split=split) if split in restricted else None
        for path in (store, raw):
            if path is not None and not (path / "zarr.json").is_file():
                create_mask_store(path, layout, {"classes": list(manifest.classes), "split": split})
        units += shard_units(
            predict_shard, p, model, records, layout, store, max_pixels, len(units), f"{split} ", (raw,)
        )
    return units


def _finalize(ctx: StageContext, records: list[dict]) -> dict:
    info = summarise_shards(ctx, records)
    info["restricted_to_tags"] = sum(r.get("restricted_to_tags", 0) for r in records)
    if ctx.params.restrict_to_tags != "none":
        log.info(
            "predict: %d image(s) held a class their tags exclude: their masks keep within the tags "
            "(predict.restrict_to_tags=%s; the raw masks are unrestricted_<split>.zarr, scored too)",
            info["restricted_to_tags"],
            ctx.params.restrict_to_tags,
        )
    return info


STAGE = Stage(
    name="predict",
    version=2,  # 2: restrict_to_tags (masks within each image's tags), the raw masks kept beside them
    section="predict",
    inputs=("index", "train_decoder"),
    gpu=True,
    plan=_plan,
    finalize=_finalize,
    outputs=(
        Output("masks", MASKS, "one split's refined masks, one zarr row per image"),
        Output(
            "unrestricted",
            UNRESTRICTED,
            "a split's masks before predict.restrict_to_tags kept them within the tags (restricted splits only)",
            optional=True,
        ),
    ),
)
