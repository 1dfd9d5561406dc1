"""GPU paths (skipped where no CUDA device is visible; CI has none)."""

import numpy as np
import pytest
import torch

from labelgen.models.cam_inference import multiscale_cams
from labelgen.models.weaktr import WeakTr, WeakTrConfig


@pytest.mark.gpu
def test_bf16_cams_on_cuda_match_cpu():
    torch.manual_seed(0)
    model = WeakTr(WeakTrConfig("deit_tiny_patch16_224", 4), "hub:deit_tiny_patch16_224.fb_in1k").eval()
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    args = ([image], [(1, 2)], (1.0, 1.2), True, "fine", (120, 160), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cpu = multiscale_cams(model, *args)[0]
    gpu = multiscale_cams(model.cuda(), *args)[0]
    assert np.abs(cpu - gpu).mean() < 0.02  # bf16 autocast on CUDA vs fp32 on CPU
