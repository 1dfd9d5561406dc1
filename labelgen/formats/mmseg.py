"""mmsegmentation (>= 1.0) layout: `img_dir/`, `ann_dir/`, `splits/`, and the dataset settings
(`mmseg_dataset.py`, `classes.json`). Images are written in the masks' frame, without an EXIF
orientation tag, so that every decoder (PIL with or without `ImageOps.exif_transpose`, OpenCV,
mmcv) gives the pixels the mask lies on."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from distributed import Client

from labelgen.data.masks import IGNORE_INDEX, voc_palette, write_mask
from labelgen.formats.images import masks_and_images, write_with_images
from labelgen.formats.source import ExportSource
from labelgen.store.workfolder import WorkFolder

log = logging.getLogger(__name__)

SEG_MAP_SUFFIX = ".png"
MMSEG_CONFIG = "mmseg_dataset.py"


def export_mmseg(source: ExportSource, what: str, folder: WorkFolder, client: Client, choice: str) -> dict[str, int]:
    """mmsegmentation's BaseSegDataset layout: `img_dir/<split>/<id>.<fmt>` (one suffix),
    `ann_dir/<split>/<id>.png` (VOC palette), `splits/<split>.txt`, plus the dataset settings to use them."""
    out = folder.path
    mask_dir, image_dir = (lambda split: out / "ann_dir" / split), (lambda split: out / "img_dir" / split)
    fmt, counts = write_with_images(
        source, what, folder, mask_dir, image_dir, choice, client, masks_and_images, write_mask
    )
    (out / "splits").mkdir(exist_ok=True)
    for split in counts:
        (out / "splits" / f"{split}.txt").write_text("".join(f"{r.id}\n" for r in source.records(split)))
    settings = mmseg_settings(source, out, fmt)
    (out / "classes.json").write_text(json.dumps(settings["metainfo"] | _suffixes(fmt), indent=1))
    (out / MMSEG_CONFIG).write_text(mmseg_config_text(settings, out / MMSEG_CONFIG))
    log.info("export: mmsegmentation dataset settings -> %s", out / MMSEG_CONFIG)
    return {split: c["images"] for split, c in counts.items()}


def _suffixes(fmt: str) -> dict[str, Any]:
    """The settings that make mmseg find and read the files: one image suffix, labels as written."""
    return {
        "img_suffix": f".{fmt}",
        "seg_map_suffix": SEG_MAP_SUFFIX,
        "reduce_zero_label": False,
        "ignore_index": IGNORE_INDEX,
    }


def mmseg_settings(source: ExportSource, out: Path, fmt: str) -> dict[str, Any]:
    """The mmsegmentation (>= 1.0) dataset settings of an export: `metainfo` (classes, palette: the
    VOC colours of the palette PNGs) and one `BaseSegDataset` dict per split."""
    classes = list(source.manifest.classes)
    palette = voc_palette()
    metainfo = {"classes": classes, "palette": [list(palette[3 * k : 3 * k + 3]) for k in range(len(classes))]}
    datasets = {
        split: {
            "type": "BaseSegDataset",
            "data_root": str(out),
            "data_prefix": {"img_path": f"img_dir/{split}", "seg_map_path": f"ann_dir/{split}"},
            "ann_file": f"splits/{split}.txt",
            **_suffixes(fmt),
            "metainfo": metainfo,
        }
        for split in source.stores
    }
    return {"metainfo": metainfo, "datasets": datasets, "train_split": source.train_split}


def mmseg_config_text(settings: dict[str, Any], config: Path) -> str:
    """The text of the mmengine config file (Python) `config`: `metainfo`, `train_dataloader` (the
    train split) and, where the export holds another split, `val_dataloader`/`test_dataloader`, each
    with only its `dataset`; a user's config inherits it and adds pipelines, batch sizes, samplers."""
    datasets = settings["datasets"]
    train = settings["train_split"]
    others = [s for s in datasets if s != train]
    lines = [
        "# mmsegmentation >= 1.0 dataset settings, written by `labelgen export --format mmseg`.",
        f"# Inherit it in your config, _base_ = ['{config}'], and add pipeline, batch_size and sampler there.",
        "# Images and label maps share one frame: the images are written without EXIF orientation tags.",
        f"metainfo = {settings['metainfo']!r}",
    ]
    if train in datasets:
        lines.append(f"train_dataloader = dict(dataset={datasets[train]!r})")
    if others:
        lines.append(f"val_dataloader = dict(dataset={datasets[others[0]]!r})")
        lines.append("test_dataloader = val_dataloader")
    return "\n".join(lines) + "\n"
