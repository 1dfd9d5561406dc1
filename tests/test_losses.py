"""The gradient-clipping loss on hand-made loss maps."""

import math

import pytest
import torch

from labelgen.models.losses import GradientClippingLoss, clip_start_problem, window_means


def logits_for_losses(losses: torch.Tensor, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose per-pixel cross-entropy against target 0 equals `losses` (B, H, W)."""
    # CE = log(1 + (C-1)·e^{-m}) for logit m on the target and 0 elsewhere; solve for m
    margin = -torch.log((torch.exp(losses) - 1) / (num_classes - 1))
    logits = torch.zeros(*losses.shape[:1], num_classes, *losses.shape[1:])
    logits[:, 0] = margin
    return logits.requires_grad_(True), torch.zeros(losses.shape, dtype=torch.long)


def test_window_means_handle_sizes_that_are_not_multiples():
    m = torch.arange(15, dtype=torch.float32).reshape(3, 5)
    means = window_means(m, 2)
    assert means.shape == (3, 5)
    assert means[0, 0] == pytest.approx((0 + 1 + 5 + 6) / 4)
    assert means[0, 4] == pytest.approx((4 + 9) / 2)  # edge tile averages its own pixels only
    assert means[2, 4] == pytest.approx(14.0)


def test_pixels_above_threshold_get_zero_gradient_and_others_keep_theirs():
    losses = torch.full((1, 4, 4), 0.2)
    losses[0, 0, 0] = 1.0  # one noisy pixel in the top-left window
    losses[0, 3, 3] = 0.3  # its window mean is 0.225, the global mean 0.256: clipped by the global one
    logits, target = logits_for_losses(losses)
    loss, stats = GradientClippingLoss(window=2, start_value=1.2)(logits, target)
    assert stats.clipping
    loss.backward()
    grad = logits.grad[0].abs().sum(0)
    global_mean = losses.mean()
    assert stats.global_mean == pytest.approx(float(global_mean), rel=1e-4)
    assert grad[0, 0] == 0 and grad[3, 3] == 0  # above max(local mean, global mean)
    plain = logits.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(plain, target, reduction="mean").backward()
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[0, 0] = keep[3, 3] = False
    assert torch.allclose(logits.grad[0][:, keep], plain.grad[0][:, keep])  # untouched pixels: plain CE gradient
    assert stats.clipped_fraction == pytest.approx(2 / 16)


def test_no_clipping_above_the_start_value_or_when_disabled():
    losses = torch.full((2, 4, 4), 1.5)
    losses[0, 0, 0] = 3.0
    logits, target = logits_for_losses(losses)
    loss, stats = GradientClippingLoss(window=2, start_value=1.2)(logits, target)
    assert not stats.clipping and loss.item() == pytest.approx(float(losses.mean()), rel=1e-4)
    low = torch.full((1, 4, 4), 0.1)
    low[0, 1, 1] = 2.0
    logits, target = logits_for_losses(low)
    _, stats = GradientClippingLoss(window=2, start_value=1.2, enabled=False)(logits, target)
    assert not stats.clipping


def test_ignored_pixels_count_as_zero_in_the_global_mean():
    losses = torch.full((1, 2, 2), 0.8)
    logits, target = logits_for_losses(losses)
    target[0, 0, 0] = 255
    _, stats = GradientClippingLoss(window=2, start_value=1.2)(logits, target)
    assert stats.global_mean == pytest.approx(0.6, rel=1e-4)
    assert math.isfinite(stats.clipped_fraction)


def test_clip_start_must_be_below_an_untrained_decoders_loss():
    """An untrained decoder's loss is ln(num_labels): 3.04 on VOC (the reference's 1.2 passes),
    0.69 on a single-class set, 1.10 on a two-class one."""
    assert clip_start_problem(1.2, 21) is None and clip_start_problem(1.2, 81) is None
    assert clip_start_problem(1.2, 4) is None  # ln 4 = 1.39
    assert clip_start_problem(0.69, 2) is None  # just below ln 2 = 0.693
    assert "clip_start=0.7 is not below 0.69" in clip_start_problem(0.7, 2)
    assert "clip_start=1.2 is not below 1.10" in clip_start_problem(1.2, 3)
    assert "that share here: 0.43" in clip_start_problem(1.2, 3)  # 1.2 / ln 21 × ln 3
