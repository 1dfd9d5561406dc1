"""Ultralytics layouts: `images/<split>/` beside one label folder per split, and `data.yaml`.

`--format yolo` is Ultralytics' semantic-segmentation data set (its `SemanticDataset`, task
`semantic`): `masks/<split>/<id>.png`, single-channel 8-bit PNGs whose grey level is labelgen's
label (0 background, 1..C the classes, 255 ignore), found through the YAML's `masks_dir`. The
instance format (`--format yolo-seg`, polygons in `labels/`) is in `yolo_seg.py`; both share the
image folder, the YAML and the way work is split here.

Images are written as `--format mmseg` writes them (`export_image`): one suffix, in labelgen's frame,
without an EXIF orientation tag. Ultralytics applies EXIF orientation when it decodes an image and
when it checks its size against the mask (`exif_size`), so a tagged file would be turned against its
mask or refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from distributed import Client
from PIL import Image

from labelgen.formats.images import masks_and_images, write_with_images
from labelgen.formats.source import ExportSource
from labelgen.store.workfolder import WorkFolder

log = logging.getLogger(__name__)

DATA_YAML = "data.yaml"
IMAGES = "images"  # Ultralytics finds a label file by replacing the last `images` folder of its image's path
MASKS = "masks"  # the semantic data set's `masks_dir`


def write_grey_png(path: Path, mask: np.ndarray) -> None:
    """An H×W uint8 mask as an 8-bit grey PNG (mode L): grey level = label."""
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(path)


def yolo_roles(source: ExportSource) -> dict[str, str]:
    """The data YAML's `train` and `val` splits: the train split, and the other split of the export;
    an export of one split (pseudo_labels) names it for both, since Ultralytics requires a `val`."""
    others = [s for s in source.stores if s != source.train_split]
    train = source.train_split if source.train_split in source.stores else others[0]
    return {"train": train, "val": others[0] if others else train}


def split_folder(out: Path, kind: str) -> Callable[[str], Path]:
    """A split's folder of one kind (images, masks, labels): `<out>/<kind>/<split>`, where Ultralytics
    looks for it."""
    return lambda split: out / kind / split


def data_yaml_text(out: Path, roles: dict[str, str], names: list[str], header: list[str], extra: dict[str, str]) -> str:
    """An Ultralytics data YAML: `path` (the export folder), `train`/`val` image folders, `extra` keys,
    `names` (id: name, ids from 0). Strings are written as JSON strings, which YAML reads as they are."""
    lines = [f"# {h}" for h in header]
    lines.append(f"path: {json.dumps(str(out))}  # moving the folder: edit this")
    lines += [f"{role}: {IMAGES}/{split}" for role, split in roles.items()]
    if roles["val"] == roles["train"]:
        lines.append("# val names the train images: this export holds one split, and Ultralytics requires a val key")
    lines += [f"{key}: {value}" for key, value in extra.items()]
    lines.append("names:")
    lines += [f"  {k}: {json.dumps(name)}" for k, name in enumerate(names)]
    return "\n".join(lines) + "\n"


def export_yolo(source: ExportSource, what: str, folder: WorkFolder, client: Client, choice: str) -> dict[str, int]:
    """Ultralytics' semantic-segmentation layout: `images/<split>/<id>.<fmt>`, `masks/<split>/<id>.png`
    (grey level = labelgen's label: 0 background, 1..C the classes, 255 ignore) and `data.yaml` with
    `masks_dir: masks` and `names` 0..C (0 = background, a class the model learns)."""
    out = folder.path
    masks, images = split_folder(out, MASKS), split_folder(out, IMAGES)
    _, counts = write_with_images(source, what, folder, masks, images, choice, client, masks_and_images, write_grey_png)
    header = [
        "Ultralytics semantic-segmentation data set, written by `labelgen export --format yolo`.",
        f"masks/<split>/<id>.png: grey level = class id below (0 = background), 255 = ignore. Train: yolo semantic "
        f"train data={out / DATA_YAML} model=yolo26n-sem.yaml",
    ]
    text = data_yaml_text(out, yolo_roles(source), list(source.manifest.classes), header, {"masks_dir": MASKS})
    (out / DATA_YAML).write_text(text)
    log.info("export: Ultralytics data YAML (task semantic) -> %s", out / DATA_YAML)
    return {split: c["images"] for split, c in counts.items()}
