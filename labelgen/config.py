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
from typing import Any

from labelgen.errors import ConfigError


def _not_in_key(default: Any, doc: str = "") -> Any:
    """A field that does not change the stage's output, so it is left out of the cache key."""
    return field(default=default, metadata={"key": False, "doc": doc})


LOADER_PROCESSES = "training loader processes: a count, or auto (one per core the trainer leaves, at most 16)"


@dataclass(frozen=True)
class DatasetParams:
    name: str = "demo"  # one of voc, coco, folder, demo
    root: str = ""  # data root; empty for demo means "<run-dir>/data/demo"
    train_split: str = "train"  # split used to train and to make pseudo-labels
    val_split: str = "val"  # held-out split for predictions; "" for none
    coco_label_space: str = "contiguous"  # coco: "contiguous" (80 classes) or "original" (ids 1..90)
    voc_tags_from: str = "masks"  # voc: image tags from "masks" or "xml" (Annotations/*.xml)
    tags_file: str = "tags.csv"  # folder: CSV (image,tags) or JSON lines, relative to root
    classes_file: str = "classes.txt"  # folder: one class name a line, relative to root
    max_image_pixels: int = 40_000_000  # larger images are refused (decompression bombs)
    index_slice: int = _not_in_key(256, "images per index task")
    # demo only: a procedural data set generated from `demo_seed`
    demo_train_images: int = 160
    demo_val_images: int = 40
    demo_image_size: int = 192  # pixels, square
    demo_seed: int = 0


@dataclass(frozen=True)
class TrainCamParams:
    backbone: str = "deit_small_patch16_224"  # timm model name (weaktr-method.md §1.1)
    weights: str = "hub:deit_small_patch16_224.fb_in1k"  # "hub:<timm name>", a file path, or "none"
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
    fusion: str = "aaf"  # "aaf" (adaptive attention fusion) or "mean" (ablation)
    aaf_reduction: int = 8  # SE bottleneck over head-layers: K -> K // reduction
    aaf_feat_reduction: int = 8  # per-head feature squeeze: head_dim -> head_dim // reduction
    precision: str = "auto"  # "bf16" autocast, "fp32", or "auto": bf16 where native (CUDA, AVX512-BF16/AMX CPUs)
    seed: int = 504
    selection: str = "last"  # "last" epoch, or "gt_miou" (uses pixel GT of a labelled subset)
    selection_subset: int = 64  # images of the train split used by gt_miou selection
    num_workers: str = _not_in_key("auto", LOADER_PROCESSES)


@dataclass(frozen=True)
class ExportCamsParams:
    cam: str = "fine"  # "fine" (AAF + patch affinity), "fused" (no affinity step), "coarse"
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
    precision: str = "auto"  # "auto", "bf16" or "fp32" (see train_cam.precision)
    batch_size: int = _not_in_key(8, "views (images of one size and their flips) per forward pass; 1 on CPU")
    attention_cache_mb: int = _not_in_key(
        1024,
        "MiB of attention maps a forward pass may keep between its two passes instead of recomputing "
        "them (WeakTr.cams); the CAMs are the same. 0: least memory, about 1.6× the time of keeping all "
        "(a DeiT-S view of 768×576 keeps all 12 layers in 0.94 GB)",
    )
    device: str = _not_in_key("auto", "auto, cpu or cuda")


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
    backbone: str = "deit_small_patch16_224"
    weights: str = "hub:deit_small_patch16_224.fb_in1k"
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
    decoder_dropout: float = 0.1
    resize_short: int = 520  # mmseg img_scale short side before the random ratio
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    gradient_clipping: bool = True
    clip_window: int = 120  # pixels, local window of the clamp (weaktr-method.md §3.2)
    clip_start: float = 1.2  # clipping is on once the global mean loss is below this
    precision: str = "auto"  # "auto", "bf16" or "fp32" (see train_cam.precision)
    seed: int = 0
    num_workers: str = _not_in_key("auto", LOADER_PROCESSES)


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
    precision: str = "auto"  # "auto", "bf16" or "fp32" (see train_cam.precision)
    device: str = _not_in_key("auto", "auto, cpu or cuda")


@dataclass(frozen=True)
class EvaluateParams:
    sweep_thresholds: tuple[float, ...] = (0.30, 0.35, 0.40, 0.43, 0.45, 0.50, 0.55)
    overlays: int = 8  # images in the overlay grid of the report


STAGE_PARAMS: dict[str, type] = {
    "dataset": DatasetParams,
    "train_cam": TrainCamParams,
    "export_cams": ExportCamsParams,
    "pseudo_labels": PseudoLabelsParams,
    "train_decoder": TrainDecoderParams,
    "predict": PredictParams,
    "evaluate": EvaluateParams,
}


@dataclass(frozen=True)
class Recipe:
    """Resolved parameters of every section, plus where they came from."""

    sections: dict[str, Any]
    source: str

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
    """Read a TOML recipe, apply `section.key=value` overrides, and type-check everything."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"recipe {path} not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {path} is not valid TOML: {e}") from e
    for override in overrides:
        section, key, value = _parse_override(override)
        raw.setdefault(section, {})[key] = value
    sections = {}
    for name, cls in STAGE_PARAMS.items():
        sections[name] = build_params(cls, raw.pop(name, {}), where=f"{path} [{name}]")
    if raw:
        unknown = next(iter(raw))
        raise ConfigError(_unknown_message(f"section [{unknown}] in {path}", unknown, STAGE_PARAMS))
    return Recipe(sections=sections, source=str(path))


def build_params(cls: type, values: dict[str, Any], where: str) -> Any:
    """Make `cls` from a mapping, with clear errors for unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(_unknown_message(f"unknown setting {key!r} in {where}", key, hints))
        kwargs[key] = _coerce(value, hints[key], f"{where} {key}")
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
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        item_type = typing.get_args(hint)[0]
        return tuple(_coerce(v, item_type, where) for v in value)
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
