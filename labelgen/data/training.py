"""torch Datasets over manifest rows, and the normalisation a backbone expects."""

from __future__ import annotations

import multiprocessing
import random

import numpy as np
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord
from labelgen.data.timm_compat import seed_augmentations


def normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the backbone's pretraining: ImageNet statistics for DeiT, 0.5 for AugReg ViTs."""
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        return timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD
    return tuple(cfg.mean), tuple(cfg.std)


def multi_hot(tags: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """C-dim float target; tag t (1..C) sets index t-1."""
    target = torch.zeros(num_classes)
    target[[t - 1 for t in tags]] = 1.0
    return target


class TaggedImages(Dataset):
    """(transformed image, multi-hot tags) for CAM training."""

    def __init__(self, records: list[ImageRecord], num_classes: int, transform, max_pixels: int):
        self.records = records
        self.num_classes = num_classes
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.records[i]
        image = Image.fromarray(read_image(r.image, self.max_pixels))
        return self.transform(image), multi_hot(r.tags, self.num_classes)


def seed_everything(seed: int) -> None:
    """Seed every generator this process draws from (python, numpy, torch, timm's augmentations)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    seed_augmentations(seed)


def loader_workers(requested: int) -> int:
    """Daemonic processes (some dask workers) cannot start DataLoader workers: load in-process there."""
    return 0 if multiprocessing.current_process().daemon else requested


def epoch_loader(
    data: Dataset, batch_size: int, num_workers: int, seed: int, epoch: int, device: torch.device
) -> DataLoader:
    """A shuffled, drop-last loader whose every random draw depends on (seed, epoch) only, so a
    training resumed at an epoch boundary repeats the uninterrupted run exactly."""
    epoch_seed = seed * 1000 + epoch
    seed_everything(epoch_seed)
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=loader_workers(num_workers),
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(epoch_seed),
        pin_memory=device.type == "cuda",
    )


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from its torch seed, so augmentations repeat."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    seed_augmentations(seed)
