"""Ultralytics reading and training on a labelgen export, in a subprocess of its own.

Ultralytics (AGPL-3.0, a dev dependency: tests and benchmarks only, never imported by labelgen/)
changes process-wide state on import (its logging set-up, OpenCV and torch thread counts) and reads
its settings once, so it runs in a child process with its own settings and no network:
`YOLO_OFFLINE=1` (its online check answers no), `YOLO_CONFIG_DIR` a fresh folder, the fonts its
dataset check would download (`check_font` looks in that folder first) copied there, settings
`sync=False` (no analytics events), and every socket connection or name look-up refused and
recorded: the result's `network` lists them (empty when Ultralytics worked offline).

    python tests/ultralytics_reader.py OUT_DIR read  NAME=DATA_YAML:TASK ...   # TASK: semantic | segment
    python tests/ultralytics_reader.py OUT_DIR train NAME=DATA_YAML:TASK MODEL_YAML

`read` builds the loader Ultralytics trains with (`build_yolo_dataset`, evaluation mode) for each
YAML's train and val folders and writes OUT_DIR/read.json, per NAME: the warnings Ultralytics logged,
and per folder the images it kept; for `semantic` the label maps its `load_mask` yields
(`<NAME>_<role>_masks.npz`, by image stem), for `segment` each image's objects, each polygon
rasterised by Ultralytics' own `polygon2mask` at the image's size (a COCO RLE). `train` runs one CPU
epoch of a model built from MODEL_YAML (no weights) and writes OUT_DIR/train.json.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # what check_font looks for in the config folder


def run_reader(out_dir: Path, command: str, jobs: dict[str, tuple[Path, str]], *extra: str, timeout: int = 900) -> dict:
    """Run this script in a child process with Ultralytics offline on `jobs` (name -> (data YAML,
    task)); return its JSON result. Raises AssertionError with the child's output when it fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(out_dir / "ultralytics_config"),
        "MPLBACKEND": "Agg",
    }
    specs = [f"{name}={data}:{task}" for name, (data, task) in jobs.items()]
    cmd = [sys.executable, __file__, str(out_dir), command, *specs, *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    return json.loads((out_dir / f"{command}.json").read_text())


def components(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Every 8-connected component of every foreground label of an H×W label mask: (label, H×W bool),
    found without labelgen's code."""
    found = []
    for label in sorted(set(np.unique(mask).tolist()) - {0, 255}):
        count, parts = cv2.connectedComponents((mask == label).astype(np.uint8), connectivity=8)
        found += [(label, parts == c) for c in range(1, count)]
    return found


def agreement(mask: np.ndarray, objects: list[dict], min_pixels: int) -> tuple[list[dict], int]:
    """Each object Ultralytics yields for an image (`read` result: cls, points, rle) matched to the
    component of `mask` with label cls + 1 it overlaps most (each component once). Per object: its
    label, the component's pixels, `iou` of the rasterised polygon with the component, `filled_iou`
    (what the IoU would be had the polygon been the outer border alone: the component with its holes
    filled), `points`. Also how many components of >= `min_pixels` pixels have no object."""
    unmatched = [(label, c) for label, c in components(mask) if c.sum() >= min_pixels]
    rows = []
    for obj in objects:
        raster = coco_mask.decode(obj["rle"]).astype(bool)
        candidates = [k for k in unmatched if k[0] == obj["cls"] + 1]
        label, component = max(candidates, key=lambda k: (k[1] & raster).sum()) if candidates else (None, None)
        if component is None:
            rows.append({"label": obj["cls"] + 1, "pixels": 0, "iou": 0.0, "filled_iou": 0.0, "points": obj["points"]})
            continue
        unmatched = [k for k in unmatched if k[1] is not component]
        outer, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        filled = cv2.fillPoly(np.zeros(component.shape, np.uint8), outer, 1).astype(bool)
        rows.append(
            {
                "label": label,
                "pixels": int(component.sum()),
                "iou": float((raster & component).sum() / (raster | component).sum()),
                "filled_iou": float(component.sum() / filled.sum()),
                "points": obj["points"],
            }
        )
    return rows, len(unmatched)


def _refuse_network(attempts: list[str]) -> None:
    """Every socket connection and name look-up of this process fails at once and is recorded."""

    def connect(self, address):
        attempts.append(f"connect {address}")
        raise OSError(f"no network in this test ({address})")

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(f"getaddrinfo {host}")
        raise socket.gaierror(f"no network in this test ({host})")

    socket.socket.connect = connect
    socket.socket.connect_ex = connect
    socket.getaddrinfo = getaddrinfo


def _offline_fonts() -> None:
    """The fonts Ultralytics' dataset check downloads when its config folder lacks them (matplotlib's
    DejaVu Sans under both names): plots are off here, the check only needs the files."""
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in FONTS:
        shutil.copyfile(font, USER_CONFIG_DIR / name)


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _read(data_yaml: str, task: str, out_dir: Path, name: str) -> dict:
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset, polygon2mask

    caught = _Warnings()
    logging.getLogger("ultralytics").addHandler(caught)
    with warnings.catch_warnings(record=True) as python_warnings:
        warnings.simplefilter("always")
        data = check_det_dataset(data_yaml, autodownload=False)
        cfg = get_cfg(overrides={"task": task, "data": data_yaml})
        result = {"names": {int(k): v for k, v in data["names"].items()}, "splits": {}}
        for role in ("train", "val"):
            dataset = build_yolo_dataset(cfg, data[role], batch=1, data=data, mode="val")
            stems = [Path(f).stem for f in dataset.im_files]
            split = {"dataset": type(dataset).__name__, "images": stems, "folder": str(data[role])}
            if task == "semantic":
                masks = {stem: dataset.load_mask(i) for i, stem in enumerate(stems)}
                np.savez_compressed(out_dir / f"{name}_{role}_masks.npz", **masks)
                split["shapes"] = {stem: list(dataset.labels[i]["shape"]) for i, stem in enumerate(stems)}
            else:
                objects = {}
                for i, stem in enumerate(stems):
                    label = dataset.labels[i]
                    h, w = label["shape"]
                    found = []
                    for cls, segment in zip(label["cls"].reshape(-1), label["segments"], strict=True):
                        raster = polygon2mask((h, w), [(segment * np.array([w, h], dtype=np.float32)).reshape(-1)])
                        rle = coco_mask.encode(np.asfortranarray(raster.astype(np.uint8)))
                        rle["counts"] = rle["counts"].decode("ascii")
                        found.append({"cls": int(cls), "points": len(segment), "rle": rle})
                    objects[stem] = {"shape": [h, w], "objects": found}
                split["objects"] = objects
            result["splits"][role] = split
    result["warnings"] = caught.messages + [f"{w.category.__name__}: {w.message}" for w in python_warnings]
    return result


def _train(data_yaml: str, task: str, out_dir: Path, model_yaml: str) -> dict:
    from ultralytics import YOLO

    model = YOLO(model_yaml, task=task)
    model.train(
        data=data_yaml,
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        amp=False,
        plots=False,
        project=str(out_dir),
        name="train",
        exist_ok=True,
        seed=0,
        deterministic=False,
    )
    trainer = model.trainer
    rows = (Path(trainer.save_dir) / "results.csv").read_text().splitlines()
    return {
        "task": model.task,
        "epochs_done": trainer.epoch + 1,
        "results_rows": len(rows) - 1,
        "last_weights": Path(trainer.last).is_file(),
        "nc": trainer.data["nc"],
        "metrics": {k: float(v) for k, v in (trainer.metrics or {}).items()},
    }


def main(argv: list[str]) -> None:
    out, command = Path(argv[0]), argv[1]
    jobs = [a.partition("=")[::2] for a in argv[2:] if "=" in a]
    attempts: list[str] = []
    _refuse_network(attempts)
    from ultralytics.utils import SETTINGS

    SETTINGS.update(sync=False)  # no analytics events
    _offline_fonts()
    result = {}
    for name, spec in jobs:
        data_yaml, _, task = spec.rpartition(":")
        if command == "read":
            result[name] = _read(data_yaml, task, out, name)
        else:
            result[name] = _train(data_yaml, task, out / name, argv[-1])
    result["network"] = attempts
    (out / f"{command}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
