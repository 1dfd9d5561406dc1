"""Per-image arrays in zarr v3 with sharding: `masks.zarr` and `cams.zarr` (design.md, Storage).

Chunk = one image, padded to the largest image of the store; shard = `shard_size` consecutive
images, written whole by one task. A `shape` array holds each image's true (stored) size and, for
CAMs, a `classes` array the label of each stored map (-1 = padding). Readers crop the padding away,
so nobody else knows about it. The driver creates the arrays (metadata) once; workers only write
their own shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from labelgen.data.masks import IGNORE_INDEX


@dataclass(frozen=True)
class StoreLayout:
    ids: tuple[str, ...]
    sizes: tuple[tuple[int, int], ...]  # stored (height, width) of each image
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-len(self.ids) // self.shard_size)

    def shard_range(self, shard: int) -> range:
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, len(self.ids)))

    @property
    def max_size(self) -> tuple[int, int]:
        return max(h for h, _ in self.sizes), max(w for _, w in self.sizes)


def _shard_files(root: Path, name: str, shard: int, ndim: int) -> list[Path]:
    """The files one shard owns: the shard of `name` and the aligned `shape` (and `classes`) chunk."""
    files = [root / name / "c" / str(shard) / Path(*["0"] * (ndim - 1)), root / "shape" / "c" / str(shard) / "0"]
    if name == "cams":
        files.append(root / "classes" / "c" / str(shard) / "0")
    return files


def _clear(files: list[Path]) -> None:
    """Remove a shard's old files before rewriting it: zarr's sharding codec reads an existing shard
    before writing (read-modify-write), so a torn file from a killed run would make the rewrite fail."""
    for f in files:
        f.unlink(missing_ok=True)


def _written(files: list[Path]) -> list[Path]:
    return [f for f in files if f.is_file()]  # zarr writes no file for an all-fill chunk


def create_mask_store(path: Path, layout: StoreLayout, attrs: dict) -> None:
    h, w = layout.max_size
    group = zarr.open_group(path, mode="w", attributes={"ids": list(layout.ids), "kind": "masks", **attrs})
    group.create_array(
        "masks",
        shape=(len(layout.ids), h, w),
        chunks=(1, h, w),
        shards=(layout.shard_size, h, w),
        dtype="uint8",
        fill_value=IGNORE_INDEX,
    )
    _create_shape(group, layout)


def create_cam_store(path: Path, layout: StoreLayout, max_classes: int, attrs: dict) -> None:
    h, w = layout.max_size
    k = max(max_classes, 1)
    group = zarr.open_group(path, mode="w", attributes={"ids": list(layout.ids), "kind": "cams", **attrs})
    group.create_array(
        "cams",
        shape=(len(layout.ids), k, h, w),
        chunks=(1, k, h, w),
        shards=(layout.shard_size, k, h, w),
        dtype="float16",
        fill_value=0.0,
    )
    group.create_array(
        "classes", shape=(len(layout.ids), k), chunks=(layout.shard_size, k), dtype="int16", fill_value=-1
    )
    _create_shape(group, layout)


def _create_shape(group: zarr.Group, layout: StoreLayout) -> None:
    group.create_array("shape", shape=(len(layout.ids), 2), chunks=(layout.shard_size, 2), dtype="int32", fill_value=0)


def write_mask_shard(path: Path, layout: StoreLayout, shard: int, masks: Sequence[np.ndarray]) -> list[Path]:
    """Write one whole shard of masks (H×W uint8 each, in shard order); return the files written."""
    rows = layout.shard_range(shard)
    assert len(masks) == len(rows), "a shard is written whole"
    files = _shard_files(path, "masks", shard, 3)
    _clear(files)
    group = zarr.open_group(path, mode="r+")
    block = np.full((len(rows), *group["masks"].shape[1:]), IGNORE_INDEX, np.uint8)
    for j, m in enumerate(masks):
        block[j, : m.shape[0], : m.shape[1]] = m
    group["masks"][rows.start : rows.stop] = block
    group["shape"][rows.start : rows.stop] = np.array([m.shape for m in masks], np.int32)
    return _written(files)


def write_cam_shard(
    path: Path, layout: StoreLayout, shard: int, cams: Sequence[tuple[np.ndarray, Sequence[int]]]
) -> list[Path]:
    """Write one whole shard of CAMs: per image a (k, H, W) float array and the k class labels."""
    rows = layout.shard_range(shard)
    assert len(cams) == len(rows), "a shard is written whole"
    files = _shard_files(path, "cams", shard, 4)
    _clear(files)
    group = zarr.open_group(path, mode="r+")
    _, k_max, h_max, w_max = group["cams"].shape
    block = np.zeros((len(rows), k_max, h_max, w_max), np.float16)
    classes = np.full((len(rows), k_max), -1, np.int16)
    shapes = np.zeros((len(rows), 2), np.int32)
    for j, (maps, labels) in enumerate(cams):
        k, h, w = maps.shape
        block[j, :k, :h, :w] = maps
        classes[j, :k] = labels
        shapes[j] = (h, w)
    group["cams"][rows.start : rows.stop] = block
    group["classes"][rows.start : rows.stop] = classes
    group["shape"][rows.start : rows.stop] = shapes
    return _written(files)


class ImageArrays:
    """Read per-image arrays of a masks.zarr or cams.zarr, cropped to their true size.

    Reads go through `rows(...)`, which fetches a run of images with one zarr call per array (one
    shard read instead of one per image); `mask(i)` and `cam(i)` are the single-image forms.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        group = zarr.open_group(self.path, mode="r")
        self.attrs = dict(group.attrs)
        self.ids: list[str] = list(self.attrs["ids"])
        self.kind: str = self.attrs["kind"]
        self._shapes = group["shape"][:]
        self._data = group[self.kind]  # array handles opened once: each lookup re-reads metadata
        self._classes = group["classes"][:] if self.kind == "cams" else None

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, start: int, stop: int) -> list:
        """Images start..stop-1: masks (H, W) uint8, or CAMs as ((k, H, W) float32, (k,) labels)."""
        block = self._data[start:stop]
        out = []
        for j, i in enumerate(range(start, stop)):
            h, w = self._shapes[i]
            if self._classes is None:
                out.append(block[j, :h, :w])
            else:
                labels = self._classes[i]
                k = int((labels >= 0).sum())
                out.append((block[j, :k, :h, :w].astype(np.float32), labels[:k].astype(np.int64)))
        return out

    def mask(self, i: int) -> np.ndarray:
        return self.rows(i, i + 1)[0]

    def cam(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(k, H, W) float32 maps and their k labels."""
        return self.rows(i, i + 1)[0]
