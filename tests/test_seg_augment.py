"""Stage-2 augmentation: the lookup-table photometric distortion equals its per-pixel float32
definition (mmseg PhotoMetricDistortion), and images are normalised on the training device."""

import numpy as np
import torch
from PIL import Image

from labelgen.data.images import read_image
from labelgen.data.masks import IGNORE_INDEX
from labelgen.data.seg_augment import photometric_distortion, random_crop
from labelgen.models.pixels import PixelNormalised
from tests.conftest import COCO128


def per_pixel_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The definition, written out pixel-wise in float32 (the same draws in the same order)."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img = img + rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        img = img * rng.uniform(0.5, 1.5)
    img = np.clip(img, 0, 255).astype(np.uint8).astype(np.float32)  # uint8, as PIL's HSV needs
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = rng.uniform(-18, 18) * 256 / 180 if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        hsv = np.asarray(Image.fromarray(img.astype(np.uint8)).convert("HSV")).astype(np.float32)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if hue is not None:
            hsv[..., 0] = np.clip((hsv[..., 0] + hue) % 256, 0, 255)
        img = np.asarray(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        img = img * rng.uniform(0.5, 1.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_photometric_distortion_equals_its_per_pixel_definition():
    image = read_image(sorted((COCO128 / "images" / "train2017").glob("*.jpg"))[3])[:160, :200]
    changed = 0
    for seed in range(64):  # covers every combination of the five coin flips
        fast = photometric_distortion(image, np.random.default_rng(seed))
        slow = per_pixel_distortion(image, np.random.default_rng(seed))
        assert fast.dtype == np.uint8 and np.array_equal(fast, slow), f"seed {seed}"
        changed += not np.array_equal(fast, image)
    assert changed > 50


def test_normalise_is_the_float32_normalisation_of_timm():
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (images.numpy().transpose(0, 2, 3, 1).astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    model = PixelNormalised()
    model.set_normalisation(mean, std)
    got = model.normalise(images)
    assert got.dtype == torch.float32
    assert np.array_equal(got.numpy(), expected.transpose(0, 3, 1, 2))


def test_random_crop_keeps_mmsegs_category_ratio_rule():
    """The window is the first of the draws in which no class covers cat_max_ratio of the labelled
    pixels (ignore excluded), as mmseg's RandomCrop, which counts with np.unique."""
    rng = np.random.default_rng(0)
    mask = np.zeros((300, 400), np.uint8)
    mask[40:140, 60:200], mask[150:290, 250:390], mask[:20] = 3, 7, IGNORE_INDEX
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for seed in range(40):
        crop_image, crop_mask = random_crop(image, mask, 160, 0.75, np.random.default_rng(seed))
        draws = np.random.default_rng(seed)
        for _ in range(10):
            y, x = int(draws.integers(0, 141)), int(draws.integers(0, 241))
            window = mask[y : y + 160, x : x + 160]
            _, counts = np.unique(window[window != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < 0.75:
                break
        assert np.array_equal(crop_mask, window) and np.array_equal(crop_image, image[y : y + 160, x : x + 160])
