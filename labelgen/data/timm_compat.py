"""Two adjustments to timm's training transforms, applied on import, each for a stated reason.

1. Reproducibility inside dask workers. timm's RandAugment, RandomErasing and RandomResizedCrop draw
   from Python's global `random` module, which the dask worker's own threads (event loop, heartbeats,
   work stealing) draw from too, so a seeded epoch would not repeat. Those three timm modules get a
   stand-in whose state is per thread; `seed_augmentations` seeds the calling thread's generator.
2. Pillow >= 11 refuses 0-bit posterize, which RandAugment `inc1` asks for at magnitude 10; older
   Pillow (the reference's) returned a black image, and so do we.
"""

from __future__ import annotations

import random
import threading

import timm.data.auto_augment
import timm.data.random_erasing
import timm.data.transforms
from PIL import Image, ImageOps


class _PerThreadRandom:
    """Looks like the `random` module; each thread has its own `random.Random`."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _generator(self) -> random.Random:
        rng = getattr(self._local, "rng", None)
        if rng is None:
            rng = self._local.rng = random.Random()
        return rng

    def __getattr__(self, name: str):
        return getattr(self._generator(), name)


AUGMENTATION_RANDOM = _PerThreadRandom()
for _module in (timm.data.auto_augment, timm.data.random_erasing, timm.data.transforms):
    _module.random = AUGMENTATION_RANDOM


def seed_augmentations(seed: int) -> None:
    AUGMENTATION_RANDOM.seed(seed)


def augmentation_state() -> object:
    return AUGMENTATION_RANDOM.getstate()


def set_augmentation_state(state: object) -> None:
    AUGMENTATION_RANDOM.setstate(state)


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, bits_to_keep)


for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
    timm.data.auto_augment.NAME_TO_OP[_name] = _posterize
