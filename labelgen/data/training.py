"""torch Datasets over manifest rows, and the normalisation a backbone expects."""

from __future__ import annotations

import random

import numpy as np
import timm
import torch
from PIL import Image
from torch.utils.data import Dataset

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


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from its torch seed, so augmentations repeat."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    seed_augmentations(seed)
