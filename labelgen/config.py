"""Typed parameters for every stage, recipes, and `--set` overrides.

Every default lives once, here, in a frozen dataclass per stage. A recipe in `pipelines/` overrides
some of them (each override cites its source); `--set section.key=value` overrides last. Unknown
sections or keys are errors with a suggestion. Fields whose metadata says ``key=False`` do not change
a stage's output (batch size of inference, worker counts) and stay out of the cache key.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from labelgen.errors import ConfigError


def _not_in_key(default: Any, doc: str = "") -> Any:
    """A field that does not change the stage's output, so it is left out of the cache key."""
    return field(default=default, metadata={"key": False, "doc": doc})


LOADER_PROCESSES = "training loader processes: a count, or auto (one per core the trainer leaves, at most 16)"
# Training on many workers and its checkpoints (labelgen/training/, README "Training on many GPUs").
# None of them changes what a training computes beyond float rounding, so they stay out of the key
# (a rerun on fewer workers resumes the same artifact).
DEVICES = (
    'ranks of a data-parallel training: a count, or "all" (every GPU worker; on CPU, every worker), '
    "one per dask worker; batch_size is the global batch, cut into equal shares"
)
CHECKPOINT_STEPS = "steps between two checkpoints inside an epoch; 0: only the minutes rule"
# 10 minutes: a preempted COCO training loses at most that (a COCO decoder epoch is 82,081 crops,
# hours on one GPU); writing a DeiT-S state (model + optimizer, ~260 MB) takes about a second
CHECKPOINT_MINUTES = "minutes between two checkpoints inside an epoch; 0: only the steps rule"
# 600 s: longer than any pause between two collectives (an epoch end's gt_miou selection runs on rank 0
# alone; building a model and loading weights before the first step); a lost rank is seen sooner by
# the unit watching the ranks' workers (labelgen/training/ranks.py)
COLLECTIVE_TIMEOUT = "seconds a rank waits in a collective for the others before it fails (torch.distributed timeout)"
DatasetName = Literal["voc", "coco", "folder", "demo"]
Precision = Literal["auto", "bf16", "fp32"]
# how patch position embeddings are resampled to an input's grid (labelgen/models/vit.py): "dino" is the
# reference stage 1's bicubic by scale factor (g + 0.1)/14 (models.py:WeakTr.interpolate_pos_encoding),
# "bilinear" the reference stage 2's (segm/model/utils.py:resize_pos_embed), "timm" timm's antialiased
# bicubic to the target size (resample_abs_pos_embed; labelgen before)
PosEmbedResample = Literal["dino", "bilinear", "timm"]
# the pixel statistics a backbone normalises with (labelgen/models/pixels.py): "from_weights" is the
# pretrained config of the weights named (a hub tag's; a file's or "none": the architecture's default
# tag), or a named set: "imagenet" (DeiT, DINOv2), "inception" (0.5/0.5: AugReg ViT), "clip" (CLIP, EVA-02)
Normalisation = Literal["from_weights", "imagenet", "inception", "clip"]
CamKind = Literal["fine", "fused", "coarse"]  # AAF + patch affinity, no affinity step, conv head only
Fusion = Literal["aaf", "mean"]  # adaptive attention fusion, or a plain mean of the attention maps (ablation)
HeadInit = Literal["pytorch_default", "trunc_normal"]  # the CAM head's initial weights: see train_cam.head_init


@dataclass(frozen=True)
class DatasetParams:
    name: DatasetName = "demo"
    root: str = ""  # data root; empty for demo means "<run-dir>/data/demo"
    train_split: str = "train"  # split used to train and to make pseudo-labels
    val_split: str = "val"  # held-out split for predictions; "" for none
    coco_label_space: Literal["contiguous", "original"] = "contiguous"  # coco: labels 1..K, or the category ids
    voc_tags_from: Literal["masks", "xml"] = "masks"  # voc: image tags from the masks or Annotations/*.xml
    tags_file: str = "tags.csv"  # folder: CSV (image,tags) or JSON lines, relative to root
    classes_file: str = "classes.txt"  # folder: one class name a line, relative to root
    max_image_pixels: int = 40_000_000  # larger images are refused (decompression bombs)
    # images without tags: "keep" them as negatives (all-zero training targets; their pseudo-label and
    # prediction are all background, no CAM is computed for them), or "leave_out" (VOC/COCO reference:
    # COCO images without annotations are not in its 82,081-image list). A folder set keeps them
    # (DATASET_DEFAULTS).
    untagged: Literal["keep", "leave_out"] = "leave_out"
    index_slice: int = _not_in_key(256, "images per index task")
    # demo only: a procedural data set generated from `demo_seed`
    demo_train_images: int = 160
    demo_val_images: int = 40
    demo_image_size: int = 192  # pixels, square
    demo_seed: int = 0


# A data set's own defaults, where they differ from the dataclass's: they belong to the data set, so
# every recipe that names it gets them (the shipped one and a user's own `[dataset] name = "folder"`)
# unless the recipe or a --set gives the key; the resolved recipe (--dry-run, <run>/recipe.json)
# records the value. Settings a shipped recipe changes for its benchmark (VOC's train_aug split, COCO's
# train2014/val2014, base_lr, bg_threshold and CRF weights) are recipe choices, not the layout's.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "folder": {
        # untagged rows are the set's negatives: without them a single-class set gives the classifier
        # nothing to contrast (a real single-class set: pseudo-label mIoU 84 with them, 70 without)
        "untagged": "keep",
        # a tags file's rows without a split are train; a val split exists only where the user names one
        "val_split": "",
    },
}

# dataset settings that only some layouts read. `--dry-run` leaves them out of its list of changed
# settings for the others; they stay in the index's cache key all the same (taking them out would
# change every existing index key, and so redo every finished run once, for no change of output).
LAYOUT_ONLY: dict[str, tuple[str, ...]] = {
    "coco_label_space": ("coco",),
    "voc_tags_from": ("voc",),
    "tags_file": ("folder", "demo"),  # the demo generator writes a tags file, read as a folder's
    "classes_file": ("folder",),
    "demo_train_images": ("demo",),
    "demo_val_images": ("demo",),
    "demo_image_size": ("demo",),
    "demo_seed": ("demo",),
}


def read_by_layout(params: DatasetParams, key: str) -> bool:
    """Whether the data set layout `params.name` reads the dataset setting `key`."""
    return params.name in LAYOUT_ONLY.get(key, (params.name,))


@dataclass(frozen=True)
class TrainCamParams:
    # timm model name of a supported family (vit: DeiT/AugReg/CLIP/ViT, dinov2, eva02; README
    # "Backbones"); weaktr-method.md §1.1
    backbone: str = "deit_small_patch16_224"
    # "hub:<timm name[.tag]>", a file path (.safetensors/.pth/.pt timm, DINOv2 or original EVA-02
    # layout; .npz AugReg), or "none" (random)
    weights: str = "hub:deit_small_patch16_224.fb_in1k"
    # pixels; 0 keeps the architecture's own patch (16 DeiT/ViT, 14 DINOv2/EVA-02); another size
    # resizes the pretrained kernel bicubically, as the reference does 14 -> 16 for DINOv2 and EVA-02
    # (OnlineRetraining/segm/model/utils.py:checkpoint_filter_fn)
    patch_size: int = 0
    normalisation: Normalisation = "from_weights"
    input_size: int = 224  # training crop, pixels
    epochs: int = 60
    batch_size: int = 64
    base_lr: float = 6e-4  # scaled by batch_size/512 (weaktr-method.md §1.6)
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 5
    weight_decay: float = 0.03  # uniform on every parameter, as the reference
    drop_path: float = 0.1
    auto_augment: str = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec; "" for none
    random_erasing: float = 0.25
    min_crop_scale: float = 0.08  # RandomResizedCrop lower scale bound
    fusion: Fusion = "aaf"  # adaptive attention fusion, or a plain mean (ablation)
    aaf_reduction: int = 8  # SE bottleneck over head-layers: K -> K // reduction
    aaf_feat_reduction: int = 8  # per-head feature squeeze: head_dim -> head_dim // reduction
    # the 3×3 conv CAM head's initial weights: "pytorch_default" (reference: models.py:WeakTr._init_weights
    # touches only Linear and LayerNorm, so nn.Conv2d's own init: weight std ≈ 0.014, a small non-zero
    # bias) or "trunc_normal" (std 0.02, zero bias)
    head_init: HeadInit = "pytorch_default"
    # patch position resampling, in training (input_size ≠ 224) and in export_cams/evaluate, which use
    # the trained model's setting; reference "dino" (models.py:WeakTr.interpolate_pos_encoding)
    pos_embed_resample: PosEmbedResample = "dino"
    precision: Precision = "auto"  # "bf16" autocast, "fp32", or "auto": bf16 where native (CUDA, AVX512-BF16/AMX CPUs)
    seed: int = 504
    selection: Literal["last", "gt_miou"] = "last"  # last epoch, or by CAM mIoU on the pixel GT of a subset
    selection_subset: int = 64  # images of the train split used by gt_miou selection
    num_workers: str = _not_in_key("auto", LOADER_PROCESSES)
    devices: str = _not_in_key("1", DEVICES)
    checkpoint_every_steps: int = _not_in_key(0, CHECKPOINT_STEPS)
    checkpoint_every_minutes: float = _not_in_key(10.0, CHECKPOINT_MINUTES)
    collective_timeout_s: float = _not_in_key(600.0, COLLECTIVE_TIMEOUT)


@dataclass(frozen=True)
class ExportCamsParams:
    cam: CamKind = "fine"  # AAF + patch affinity, no affinity step, conv head only
    scales: tuple[float, ...] = (1.0, 1.2)  # first must be 1.0 (weaktr-method.md §1.7)
    flip: bool = True
    stride: int = 1  # stored resolution = full size // stride (rounded up), long side capped at max_side
    # pixels: the longest side of any view the model sees. Views are the image resized by each scale;
    # when max(scales) × the image's long side exceeds max_side, every view is shrunk by the same
    # factor max_side / (max(scales) × long side), so all scales keep their ratios and the largest
    # view's long side is max_side; a view under one patch on a side is upsampled to one patch
    # (`view_sizes`). Stored CAMs are also capped at max_side on their long side
    # (pseudo_labels upsamples them to the image). 1024 keeps VOC (≤ 500 px × 1.2) and COCO (≤ 640 px
    # × 1.2 = 768) exact; a DeiT-S/80-class view of 1024×1024 (the worst aspect) adds 1.25 GB
    # (1280×1280: 2.44 GB), so 8 views a pass plus the attention cache fit a 16 GB GPU
    # (benchmarks/inference_memory.py).
    max_side: int = 1024
    shard_size: int = 32  # images per zarr shard and per dask task
    precision: Precision = "auto"  # see train_cam.precision
    batch_size: int = _not_in_key(8, "views (images of one size and their flips) per forward pass; 1 on CPU")
    attention_cache_mb: int = _not_in_key(
        1024,
        "MiB of attention maps a forward pass may keep between its two passes instead of recomputing "
        "them (WeakTr.cams); the CAMs are the same. 0: least memory, about 1.6× the time of keeping all "
        "(a DeiT-S view of 768×576 keeps all 12 layers in 0.94 GB)",
    )
    device: Literal["auto", "cpu", "cuda"] = _not_in_key("auto", "auto, cpu or cuda")


@dataclass(frozen=True)
class PseudoLabelsParams:
    bg_threshold: float = 0.43  # constant background score (weaktr-method.md §1.8)
    crf: bool = True
    crf_gt_prob: float = 0.7
    crf_gauss_sxy: float = 4.0
    crf_gauss_compat: float = 3.0
    crf_bilateral_sxy: float = 83.0
    crf_bilateral_srgb: float = 5.0
    crf_bilateral_compat: float = 3.0
    crf_iterations: int = 10


@dataclass(frozen=True)
class TrainDecoderParams:
    backbone: str = "deit_small_patch16_224"  # as train_cam.backbone (weaktr-method.md §3.1)
    weights: str = "hub:deit_small_patch16_224.fb_in1k"  # as train_cam.weights
    patch_size: int = 0  # as train_cam.patch_size; the reference's DINOv2-S/EVA-02-S recipes: 16
    normalisation: Normalisation = "from_weights"  # as train_cam.normalisation
    masks: str = "pseudo_labels"  # "pseudo_labels" artifact, or a folder of PNG masks named <id>.png
    crop_size: int = 480
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    min_lr: float = 1e-5
    poly_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 0.0
    encoder_lr_mult: float = 0.1
    drop_path: float = 0.1
    decoder_layers: int = 2
    decoder_dropout: float = 0.1  # on attention weights, attention output and MLP (segm/model/blocks.py)
    # eps of every Segmenter LayerNorm, encoder and decoder: reference 1e-5 (nn.LayerNorm's default in
    # segm/model/{vit,blocks,decoder}.py); 1e-6 is the pretrained DeiT/ViT's own
    layer_norm_eps: float = 1e-5
    # the encoder's position table lives at the crop_size grid (reference image_size, 30×30 for 480),
    # resampled from the pretrained grid once and to other grids per input: reference "bilinear"
    # (segm/model/utils.py:resize_pos_embed); see train_cam.pos_embed_resample for the others
    pos_embed_resample: PosEmbedResample = "bilinear"
    resize_short: int = 520  # mmseg img_scale short side before the random ratio
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    gradient_clipping: bool = True
    clip_window: int = 120  # pixels, local window of the clamp (weaktr-method.md §3.2)
    clip_start: float = 1.2  # clipping is on once the global mean loss is below this
    precision: Precision = "auto"  # see train_cam.precision
    seed: int = 0
    num_workers: str = _not_in_key("auto", LOADER_PROCESSES)
    devices: str = _not_in_key("1", DEVICES)
    checkpoint_every_steps: int = _not_in_key(0, CHECKPOINT_STEPS)
    checkpoint_every_minutes: float = _not_in_key(10.0, CHECKPOINT_MINUTES)
    collective_timeout_s: float = _not_in_key(600.0, COLLECTIVE_TIMEOUT)


@dataclass(frozen=True)
class PredictParams:
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    flip: bool = True
    resize_short: int = 520
    window: int = 480
    window_stride: int = 320
    depth_blend: float = 0.0  # reference's hidden 0.8 blend of decoder depths; 0 = off
    crf: bool = True
    crf_gauss_sxy: float = 3.0
    crf_gauss_compat: float = 3.0
    crf_bilateral_sxy: float = 83.0
    crf_bilateral_srgb: float = 5.0
    crf_bilateral_compat: float = 3.0
    crf_iterations: int = 10
    # pixels: the longest side of any image-sized array predict holds for all labels. A scale pass
    # (short side resize_short × ratio, at least window) whose long side would exceed it shrinks,
    # all passes by the same factor, so the largest pass's long side is max_side; probabilities are
    # summed at the image size capped to a long side of max_side, and upsampled to the full image
    # only for the argmax (a few labels at a time) and for the CRF (the labels present). 2048 keeps
    # every image up to 2048 px with an aspect ratio up to 2.25:1 exact (largest pass 910 × 2048);
    # a 4032×3024 photo with 81 labels (DeiT-S) adds 2.4 GB instead of an estimated 15 GB.
    max_side: int = 2048
    shard_size: int = 32
    precision: Precision = "auto"  # see train_cam.precision
    device: Literal["auto", "cpu", "cuda"] = _not_in_key("auto", "auto, cpu or cuda")
    # Which splits' masks never contradict their image's tags: every pixel of a class the tags exclude
    # gets the most probable allowed label (background or a tagged class). "train" (default): the
    # split the decoder trained on, whose tags labelgen trains with and whose masks people export
    # as the refined pseudo-masks; "all": every split (val too, where its tags are known); "none":
    # the raw predictions, as the paper's "pseudo-mask train mIoU". Where on, the raw predictions are
    # kept beside them and evaluate scores both.
    restrict_to_tags: Literal["train", "all", "none"] = "train"


@dataclass(frozen=True)
class EvaluateParams:
    sweep_thresholds: tuple[float, ...] = (0.30, 0.35, 0.40, 0.43, 0.45, 0.50, 0.55)
    overlays: int = 8  # worst images in the overlay grid of report.md
    shard_size: int = 32  # images per evaluate task (a split's images are cut into runs of this many)
    thumbnail: int = 128  # pixels, longer side of each picture in the report.html gallery
    gallery_page: int = 50  # gallery rows per page of report.html
    gallery_inline: int = 500  # images whose rows are inside report.html; later pages go to report_gallery/


@dataclass(frozen=True)
class CorrectionsParams:
    # Use the masks people corrected (`labelgen review pull` / `review import`, kept in
    # <run>/review/pulled/): they replace those images' pseudo-labels in train_decoder and are scored
    # as GT by evaluate. false: train and score as if none had been pulled (the run's keys are then
    # those of a run without corrections).
    use: bool = True


STAGE_PARAMS: dict[str, type] = {
    "dataset": DatasetParams,
    "train_cam": TrainCamParams,
    "export_cams": ExportCamsParams,
    "pseudo_labels": PseudoLabelsParams,
    "corrections": CorrectionsParams,
    "train_decoder": TrainDecoderParams,
    "predict": PredictParams,
    "evaluate": EvaluateParams,
}


@dataclass(frozen=True)
class Recipe:
    """Resolved parameters of every section, plus where they came from."""

    sections: dict[str, Any]
    source: str
    dataset_defaults: tuple[str, ...] = ()  # dataset keys set by the data set's own defaults, not the recipe

    def __getitem__(self, section: str) -> Any:
        return self.sections[section]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(p) for name, p in self.sections.items()}


def significant_params(params: Any) -> dict[str, Any]:
    """The fields that change a stage's output, as plain JSON-able values."""
    out = {}
    for f in dataclasses.fields(params):
        if f.metadata.get("key", True):
            value = getattr(params, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def recipe_path(dataset: str) -> Path:
    """The shipped recipe of a data set (`pipelines/<dataset>.toml`)."""
    path = Path(str(resources.files("labelgen.pipelines") / f"{dataset}.toml"))
    if not path.is_file():
        shipped = sorted(p.stem for p in Path(path.parent).glob("*.toml"))
        raise ConfigError(f"no recipe for dataset {dataset!r}; shipped recipes: {', '.join(shipped)}")
    return path


def load_recipe(path: Path | str, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a TOML recipe, apply `section.key=value` overrides, and check everything: types, allowed
    values, tuple lengths, ranges and the rules between settings. Raises `ConfigError` with one line
    per wrong setting, naming the `--set` argument or the recipe file it came from."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"recipe {path} not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {path} is not valid TOML: {e}") from e
    origin: dict[tuple[str, str], str] = {}  # (section, key) -> the --set argument that gave it
    for override in overrides:
        section, key, value = _parse_override(override)
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(f"--set {override!r}: [{section}] is not a table in {path}")
        raw[section][key] = value
        origin[section, key] = f"--set {override}"
    from_dataset = _apply_dataset_defaults(raw)
    wrong: list[str] = []  # every wrong setting, one line each, all reported at once
    for section in raw:
        if section not in STAGE_PARAMS:
            where = next((o for (sec, _), o in origin.items() if sec == section), f"section [{section}] in {path}")
            wrong.append(_unknown_message(f"{where}: unknown section [{section}]", section, STAGE_PARAMS))
    sections, wrong_keys = {}, set()
    for name, cls in STAGE_PARAMS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            wrong.append(f"{path} [{name}]: expected a table of settings, got {values!r}")
            values = {}
        good = {}
        for key, value in values.items():
            try:  # each setting on its own, so that every wrong one is reported, not only the first
                build_params(cls, {key: value}, where=f"{path} [{name}]", origin=origin, section=name)
                good[key] = value
            except ConfigError as e:
                wrong.append(str(e))
                wrong_keys.add(f"{name}.{key}")
        sections[name] = build_params(cls, good, f"{path} [{name}]")
    # The rules between settings run on the settings that parsed (a wrong one at its default); a rule
    # about a setting already named wrong is left out, as it would only repeat it.
    recipe = Recipe(sections=sections, source=str(path), dataset_defaults=from_dataset)
    rules = [e for e in recipe_errors(recipe) if e.key not in wrong_keys]
    bad = wrong_keys | {e.key for e in rules}
    # nor one that only follows from another wrong setting ("warmup_epochs 0 must be 0..epochs=-1")
    rules = [e for e in rules if not bad & set(e.depends_on)]
    wrong += [f"{_origin(origin, e.key, path)}: {e.why}" for e in rules]
    if wrong:
        raise ConfigError("\n".join(wrong))
    return recipe


def _apply_dataset_defaults(raw: dict[str, Any]) -> tuple[str, ...]:
    """Fill in the named data set's own defaults (`DATASET_DEFAULTS`) that the recipe and the
    overrides leave unset; returns the keys filled in."""
    dataset = raw.get("dataset")
    if not isinstance(dataset, dict):
        return ()
    name = dataset.get("name", DatasetParams.name)
    own = DATASET_DEFAULTS.get(name, {}) if isinstance(name, str) else {}  # a wrong name: the loader names it
    filled = tuple(key for key in own if key not in dataset)
    dataset.update({key: own[key] for key in filled})
    return filled


def _origin(origin: dict[tuple[str, str], str], key: str, path: Path) -> str:
    section, _, name = key.partition(".")
    return origin.get((section, name), f"{path} [{section}] {name}")


def build_params(
    cls: type, values: dict[str, Any], where: str, origin: dict[tuple[str, str], str] | None = None, section: str = ""
) -> Any:
    """Make `cls` from a mapping, with clear errors for unknown keys, wrong types and values outside
    an allowed set (`Literal`) or a tuple's length. A key given by `--set` is named by that argument."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        at = (origin or {}).get((section, key), f"{where} {key}")
        if key not in hints:
            raise ConfigError(
                _unknown_message(f"{at}: unknown setting {key!r} in [{section or cls.__name__}]", key, hints)
            )
        kwargs[key] = _coerce(value, hints[key], at)
    return cls(**kwargs)


def _unknown_message(what: str, name: str, allowed: typing.Iterable[str]) -> str:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{what}{hint} Allowed: {', '.join(allowed)}"


def _parse_override(text: str) -> tuple[str, str, Any]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train_cam.epochs=3")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:  # a TOML literal (3, 0.5, true, [1.0, 1.2], "x"); otherwise the bare text is a string
        value = tomllib.loads(f"v = {rhs}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs
    return section, key, value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value in allowed:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r} ({len(value)})")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        return value if isinstance(value, str) else str(value)
    elif isinstance(hint, types.UnionType):
        raise AssertionError(f"union types are not used in params: {where}")
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {name}, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class SettingError:
    key: str  # "section.name" of the wrong setting
    why: str  # its value and what is wrong with it
    depends_on: tuple[str, ...] = ()  # the other settings a rule between settings reads


def recipe_errors(recipe: Recipe) -> list[SettingError]:
    """Every setting outside its range and every broken rule between settings; empty when the
    recipe can run. Checked when a recipe is loaded, before any work."""
    errors: list[SettingError] = []

    def need(ok: bool, key: str, why: str, depends_on: tuple[str, ...] = ()) -> None:
        if not ok:
            section, _, name = key.partition(".")
            errors.append(SettingError(key, f"{getattr(recipe[section], name)!r}: {why}", depends_on))

    d, cam, exp, pl = recipe["dataset"], recipe["train_cam"], recipe["export_cams"], recipe["pseudo_labels"]
    dec, pred = recipe["train_decoder"], recipe["predict"]
    need(
        d.val_split != d.train_split,
        "dataset.val_split",
        "must differ from dataset.train_split (or be empty)",
        ("dataset.train_split",),
    )
    need(d.max_image_pixels > 0, "dataset.max_image_pixels", "must be > 0")
    need(d.index_slice > 0, "dataset.index_slice", "must be > 0")
    for key in ("train_cam.epochs", "train_cam.batch_size", "train_cam.input_size", "export_cams.shard_size",
                "export_cams.stride", "export_cams.batch_size", "train_decoder.epochs", "train_decoder.batch_size",
                "train_decoder.crop_size", "train_decoder.clip_window", "train_decoder.resize_short",
                "train_decoder.decoder_layers", "predict.shard_size", "predict.resize_short", "predict.window",
                "predict.window_stride", "train_cam.selection_subset", "export_cams.max_side",
                "predict.max_side"):  # fmt: skip
        section, _, name = key.partition(".")
        need(getattr(recipe[section], name) > 0, key, "must be > 0")
    need(
        0 <= cam.warmup_epochs <= cam.epochs,
        "train_cam.warmup_epochs",
        f"must be 0..train_cam.epochs={cam.epochs}",
        ("train_cam.epochs",),
    )
    for key in ("train_cam.patch_size", "train_decoder.patch_size"):
        section, _, name = key.partition(".")
        need(getattr(recipe[section], name) >= 0, key, "must be ≥ 0 pixels (0: the architecture's own)")
    need(0 < cam.min_crop_scale <= 1, "train_cam.min_crop_scale", "must be in (0, 1]")
    need(0 <= cam.random_erasing <= 1, "train_cam.random_erasing", "is a probability: 0..1")
    for key in ("train_cam.num_workers", "train_decoder.num_workers"):
        section, _, name = key.partition(".")
        value = getattr(recipe[section], name)
        need(value == "auto" or value.isdigit(), key, 'expected a count of loader processes (0 or more) or "auto"')
    for section in ("train_cam", "train_decoder"):
        p = recipe[section]
        need(p.devices == "all" or (p.devices.isdigit() and int(p.devices) > 0), f"{section}.devices",
             'expected a count of ranks (1 or more) or "all"')  # fmt: skip
        need(
            not p.devices.isdigit() or int(p.devices) == 0 or p.batch_size % int(p.devices) == 0,
            f"{section}.batch_size",
            f"the global batch must split into {section}.devices={p.devices} equal shares; use a multiple of it",
            (f"{section}.devices",),
        )
        need(p.checkpoint_every_steps >= 0, f"{section}.checkpoint_every_steps", "must be ≥ 0 (0: off)")
        need(p.checkpoint_every_minutes >= 0, f"{section}.checkpoint_every_minutes", "must be ≥ 0 (0: off)")
        need(p.collective_timeout_s > 0, f"{section}.collective_timeout_s", "must be > 0")
    need(
        bool(exp.scales) and exp.scales[0] == 1.0,
        "export_cams.scales",
        "the first scale must be 1.0 (it sets the output size)",
    )
    need(all(x > 0 for x in exp.scales), "export_cams.scales", "scales must be > 0")
    need(0 <= pl.bg_threshold <= 1, "pseudo_labels.bg_threshold", "CAMs are normalised to 0..1, so must be in 0..1")
    need(0 < pl.crf_gt_prob < 1, "pseudo_labels.crf_gt_prob", "is a probability: must be in (0, 1)")
    need(
        0 < dec.scale_range[0] <= dec.scale_range[1],
        "train_decoder.scale_range",
        "must be [low, high] with 0 < low ≤ high",
    )
    need(0 < dec.cat_max_ratio <= 1, "train_decoder.cat_max_ratio", "must be in (0, 1]")
    need(dec.layer_norm_eps > 0, "train_decoder.layer_norm_eps", "must be > 0")
    need(0 <= dec.decoder_dropout < 1, "train_decoder.decoder_dropout", "is a probability: must be in [0, 1)")
    need(dec.masks == "pseudo_labels" or Path(dec.masks).expanduser().is_dir(), "train_decoder.masks",
         'must be "pseudo_labels" or an existing folder of <image id>.png masks')  # fmt: skip
    need(bool(pred.scales) and all(x > 0 for x in pred.scales), "predict.scales", "must be one or more scales > 0")
    need(
        pred.window >= pred.window_stride,
        "predict.window_stride",
        f"must be ≤ predict.window={pred.window}",
        ("predict.window",),
    )
    need(pred.depth_blend >= 0, "predict.depth_blend", "must be ≥ 0")
    need(exp.attention_cache_mb >= 0, "export_cams.attention_cache_mb", "must be ≥ 0 MiB (0: keep no attention maps)")
    ev = recipe["evaluate"]
    need(all(0 <= t <= 1 for t in ev.sweep_thresholds), "evaluate.sweep_thresholds", "thresholds must be in 0..1")
    need(ev.shard_size > 0, "evaluate.shard_size", "must be > 0")
    need(ev.thumbnail >= 16, "evaluate.thumbnail", "must be ≥ 16 pixels (the gallery's pictures would be unreadable)")
    need(ev.gallery_page > 0, "evaluate.gallery_page", "must be > 0 rows")
    need(ev.gallery_inline >= 0, "evaluate.gallery_inline", "must be ≥ 0 images")
    need(ev.overlays >= 0, "evaluate.overlays", "must be ≥ 0 images")
    return errors


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Settings that are valid but most likely not what was meant, one line each."""
    out = []
    cam: TrainCamParams = recipe["train_cam"]
    peak = cam.base_lr * cam.batch_size / 512  # the linear scaling rule train_cam applies
    if peak < cam.min_lr:
        out.append(
            f"train_cam: peak lr base_lr·batch_size/512 = {peak:.3g} is below min_lr={cam.min_lr:g}, so the "
            f"cosine schedule rises towards min_lr instead of decaying; raise train_cam.base_lr (for batch_size="
            f"{cam.batch_size}, base_lr ≥ {cam.min_lr * 512 / cam.batch_size:.3g}) or lower train_cam.min_lr"
        )
    for section in ("train_cam", "train_decoder"):
        if recipe[section].weights == "none":
            out.append(
                f"{section}.weights = none: RANDOM initialisation; a ViT trained from scratch on a WSSS data set "
                "does not localise (useful for speed tests only); set hub:<timm name> or a weights file"
            )
    return out
