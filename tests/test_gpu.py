"""Device paths. Every test runs on the CPU in CI and again on CUDA where a GPU is visible (the
`gpu`-marked copies are skipped without one), so the GPU tests' own code is exercised everywhere."""

import numpy as np
import pytest
import torch

from labelgen.data.training import start_epoch, training_loader
from labelgen.models.cam_inference import multiscale_cams
from labelgen.models.losses import GradientClippingLoss
from labelgen.models.pixels import PixelNormalised
from labelgen.models.segmenter import Segmenter, SegmenterConfig
from labelgen.models.weaktr import WeakTr, WeakTrConfig
from labelgen.stages.train_cam import cam_step
from labelgen.stages.train_decoder import decoder_step

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_cams_match_fp32(device):
    torch.manual_seed(0)
    model = WeakTr(WeakTrConfig("deit_tiny_patch16_224", 4), "hub:deit_tiny_patch16_224.fb_in1k").eval()
    images = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), dtype=np.uint8) for i in range(2)]
    args = (images, [(1, 2), (3,)], (1.0, 1.2), True, "fine", (120, 160))
    fp32 = multiscale_cams(model, *args, "fp32", 1, max_side=192, cache_bytes=0)
    bf16 = multiscale_cams(model.to(device), *args, "bf16", 4, max_side=192, cache_bytes=2**30)  # as on a GPU
    for a, b in zip(fp32, bf16, strict=True):
        assert a.shape == b.shape and np.abs(a - b).mean() < 0.02


@pytest.mark.parametrize("device", DEVICES)
def test_loader_batches_reach_the_device_normalised(device):
    data = [(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.uint8))] * 4
    loader = training_loader(data, 2, "0", 0, torch.device(device))
    start_epoch(loader, 0, 0)
    images, masks = next(iter(loader))
    assert images.is_pinned() == (device == "cuda")  # pinned host memory makes the copy asynchronous
    model = PixelNormalised()
    model.set_normalisation(MEAN, STD)
    on_device = model.to(device).normalise(images.to(device, non_blocking=True))
    assert on_device.device.type == device
    assert torch.allclose(on_device.cpu(), model.cpu().normalise(images))


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_steps_run(device):
    torch.manual_seed(0)
    weaktr = WeakTr(WeakTrConfig("deit_tiny_patch16_224", 4), None).to(device).train()
    x = torch.randn(2, 3, 64, 64, device=device)
    y = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]], device=device)
    losses = cam_step(weaktr, torch.optim.AdamW(weaktr.parameters(), lr=1e-4), x, y, "bf16")
    assert all(np.isfinite(v) for v in losses.values())
    segmenter = Segmenter(SegmenterConfig("deit_tiny_patch16_224", 3), None).to(device).train()
    optimizer = torch.optim.SGD(segmenter.parameters(), lr=1e-3)
    targets = torch.randint(0, 3, (2, 64, 64), device=device)
    loss, _ = decoder_step(segmenter, optimizer, GradientClippingLoss(32, 1.2), x, targets, "bf16")
    assert np.isfinite(loss)
