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


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch of one rank; rank 0's is the single-process training's."""
    if rank == 0:
        return seed * 1000 + epoch
    return int(np.random.SeedSequence((seed, epoch, rank)).generate_state(1, np.uint64)[0] >> 1)


def rng_states() -> dict[str, object]:
    """Every generator state this process draws from (python, numpy, torch CPU and CUDA, timm's
    augmentations), in types a `weights_only` checkpoint can hold."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "augmentation": augmentation_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, object]) -> None:
    """Put back what `rng_states` returned."""
    name, keys, pos, has_gauss, gauss = states["numpy"]
    random.setstate(_tuples(states["python"]))
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    set_augmentation_state(_tuples(states["augmentation"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _tuples(state):
    """random.setstate needs tuples where a checkpoint round trip may give lists."""
    return tuple(_tuples(x) for x in state) if isinstance(state, list | tuple) else state


class EpochOrder(Sampler):
    """One rank's share of an epoch's shuffled order, as (sample seed, index) keys for `SeededSamples`.

    Order and seeds depend on (seed, epoch) only. Step s of an epoch trains on the global batch
    `order[s·B : (s+1)·B]` (B = `global_batch`), cut into `shards` micro-batches of B/shards images;
    this rank yields its micro-batches (`mine`: shard numbers, e.g. r, r+world, ...) step after step,
    from step `first_step` on. So a step sees the same images for any number of ranks, a training
    resumed mid-epoch starts at the next image, and a trailing part of fewer than B images is dropped
    (one process, one shard: `drop_last` over the shuffled order, as before ranks existed)."""

    def __init__(self, size: int, seed: int, global_batch: int, shards: int = 1, mine: tuple[int, ...] = (0,)):
        if global_batch % shards:
            raise ValueError(f"a global batch of {global_batch} does not split into {shards} equal shards")
        self.size, self.seed, self.global_batch, self.shards, self.mine = size, seed, global_batch, shards, mine
        self.micro_batch = global_batch // shards
        self.steps = size // global_batch
        self.epoch, self.first_step = 0, 0

    def set_epoch(self, epoch: int, first_step: int = 0) -> None:
        self.epoch, self.first_step = epoch, first_step

    def __len__(self) -> int:
        return (self.steps - self.first_step) * len(self.mine) * self.micro_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = epoch_seed(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()
        sample_seeds = np.random.SeedSequence(seed).generate_state(self.size, np.uint64)
        for step in range(self.first_step, self.steps):
            for shard in self.mine:
                start = step * self.global_batch + shard * self.micro_batch
                for i in order[start : start + self.micro_batch]:
                    yield int(sample_seeds[i] >> 1), i  # >> 1: torch seeds are signed 64-bit


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


def training_loader(data: Dataset, order: EpochOrder, num_workers: str, device: torch.device) -> DataLoader:
    """A loader of `order`'s micro-batches over every epoch of a training: call `start_epoch` before
    each. Its loader processes live as long as the loader."""
    workers = loader_workers(num_workers)
    log.info("training data: %d loader process(es) (num_workers=%s)", workers, num_workers)
    return DataLoader(
        SeededSamples(data),
        batch_size=order.micro_batch,
        sampler=order,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(order.seed),  # its draws (loader seeds) stay off the global stream
    )


def start_epoch(loader: DataLoader, epoch: int, first_step: int = 0, rank: int = 0) -> None:
    """Point the loader at `epoch` from `first_step` on and seed this process's generators (dropout,
    drop-path) from (seed, epoch, rank); a resumed step then puts back the states it saved."""
    loader.sampler.set_epoch(epoch, first_step)
    seed_everything(epoch_seed(loader.sampler.seed, epoch, rank))
