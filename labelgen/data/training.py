"""torch Datasets over manifest rows, their loaders and the seeding that makes trainings resumable."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import random
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord
from labelgen.data.timm_compat import augmentation_state, seed_augmentations, set_augmentation_state
from labelgen.devices import available_cores

log = logging.getLogger(__name__)


def multi_hot(tags: tuple[int, ...], num_fg_classes: int) -> torch.Tensor:
    """C-dim float target; tag t (1..C) sets index t-1."""
    target = torch.zeros(num_fg_classes)
    target[[t - 1 for t in tags]] = 1.0
    return target


class TaggedImages(Dataset):
    """(transformed image, multi-hot tags) for CAM training."""

    def __init__(self, records: list[ImageRecord], num_fg_classes: int, transform, max_pixels: int):
        self.records = records
        self.num_fg_classes = num_fg_classes
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.records[i]
        image = Image.fromarray(read_image(r.image, self.max_pixels, r.orientation))
        return self.transform(image), multi_hot(r.tags, self.num_fg_classes)


def seed_everything(seed: int) -> None:
    """Seed every generator this process draws from (python, numpy, torch, timm's augmentations)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    seed_augmentations(seed)


@contextlib.contextmanager
def seeded_generators(seed: int) -> Iterator[None]:
    """Seed every generator for the body, then put their states back, so that drawing one sample in
    the training process (no loader processes) leaves the model's dropout stream untouched."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state(), augmentation_state()
    seed_everything(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        set_augmentation_state(saved[3])


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1000 + epoch


class EpochOrder(Sampler):
    """The shuffled order of one epoch as (sample seed, index) keys for `SeededSamples`. Order and
    seeds depend on (seed, epoch) only: a training resumed at an epoch boundary repeats the
    uninterrupted run, whatever the number of loader processes."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = epoch_seed(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()
        sample_seeds = np.random.SeedSequence(seed).generate_state(self.size, np.uint64)
        return ((int(sample_seeds[i] >> 1), i) for i in order)  # >> 1: torch seeds are signed 64-bit


class SeededSamples(Dataset):
    """`data[i]` drawn under its own seed, from an (seed, i) key of `EpochOrder`."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]):
        seed, i = key
        with seeded_generators(seed):
            return self.data[i]


def loader_workers(setting: str) -> int:
    """Loader processes for a `num_workers` setting: a count, or "auto", one per core the training
    process does not use, at most 16. Daemonic processes (some dask workers) cannot start loader
    processes: they load in-process."""
    if multiprocessing.current_process().daemon:
        return 0
    if setting == "auto":
        return max(0, min(available_cores() - 1, 16))
    return int(setting)


def training_loader(data: Dataset, batch_size: int, num_workers: str, seed: int, device: torch.device) -> DataLoader:
    """A shuffled, drop-last loader over every epoch of a training: call `loader.sampler.set_epoch`
    before each. Its loader processes live as long as the loader."""
    workers = loader_workers(num_workers)
    log.info("training data: %d loader process(es) (num_workers=%s)", workers, num_workers)
    return DataLoader(
        SeededSamples(data),
        batch_size=batch_size,
        sampler=EpochOrder(len(data), seed),
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),  # its draws (loader seeds) stay off the global stream
    )


def start_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Point the loader at `epoch` and seed this process's generators (dropout, drop-path) from it."""
    loader.sampler.set_epoch(epoch)
    seed_everything(epoch_seed(seed, epoch))
