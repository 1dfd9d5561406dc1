"""WeakTr's "gradient clipping" loss (weaktr-method.md §3.2): per-pixel cross-entropy clamped at a
local/global threshold, so pixels whose loss is above it (presumed wrong pseudo-labels) give no
gradient. Not optimizer gradient-norm clipping."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelgen.data.masks import IGNORE_INDEX


def window_means(loss_map: Tensor, window: int) -> Tensor:
    """Mean of an H×W map over non-overlapping window×window tiles, broadcast back to H×W.

    Edge tiles of images that are not multiples of the window average only their own pixels (the
    reference's padding breaks there).
    """
    h, w = loss_map.shape
    gh, gw = -(-h // window), -(-w // window)
    padded = F.pad(loss_map, (0, gw * window - w, 0, gh * window - h))[None, None]
    ones = F.pad(torch.ones_like(loss_map), (0, gw * window - w, 0, gh * window - h))[None, None]
    sums = F.avg_pool2d(padded, window, window) * window * window
    counts = F.avg_pool2d(ones, window, window) * window * window
    means = (sums / counts)[0, 0]  # gh, gw
    return means.repeat_interleave(window, 0).repeat_interleave(window, 1)[:h, :w]


def clip_start_problem(clip_start: float, num_labels: int) -> str | None:
    """Why `clip_start` (nats) cannot start the clamp as the reference means it, on `num_labels`
    labels (with background); None when it can.

    The reference turns the clamp on once the batch's mean loss falls below `clip_start` (1.2 for
    DeiT-S on VOC's 21 and COCO's 81 labels), so that it starts once the decoder has fitted the
    pseudo-labels. An untrained decoder's logits are near zero, its softmax near uniform and its
    loss near ln(num_labels): 3.04 on VOC, but 0.69 on a single-class set (2 labels) and 1.10 on a
    two-class one, where 1.2 turns the clamp on from the first step, before any class is learned:
    the clamp then drops the pixels of the classes the decoder gets wrong, which early on are the
    small ones (on the demo, clipping from the first epochs left the triangle at IoU 0 after
    retraining: pipelines/demo.toml).
    """
    untrained = math.log(num_labels)
    if clip_start < untrained:
        return None
    share = 1.2 / math.log(21)  # the reference's start as a share of an untrained decoder's loss on VOC
    return (
        f"train_decoder.clip_start={clip_start:g} is not below {untrained:.2f}, the loss of an untrained "
        f"decoder on {num_labels} labels (ln {num_labels}): the gradient clipping would clamp from the first "
        "step and starve the classes not learned yet; set train_decoder.clip_start below it (the "
        f"reference's 1.2 is {share:.2f} of ln 21 on VOC; that share here: {share * untrained:.2f}) "
        "or train_decoder.gradient_clipping=false"
    )


@dataclass(frozen=True)
class ClipStats:
    clipping: bool  # whether the clamp was on for this batch
    global_mean: float  # λg
    clipped_fraction: float  # share of pixels whose loss was clamped


class GradientClippingLoss(nn.Module):
    def __init__(self, window: int, start_value: float, enabled: bool = True):
        super().__init__()
        self.window = window
        self.start_value = start_value
        self.enabled = enabled

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, ClipStats]:
        """logits B, C, H, W; target B, H, W (255 = ignore) -> scalar loss and statistics."""
        pixel_loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")  # B, H, W
        global_mean = pixel_loss.detach().mean()  # over all pixels, ignored ones count as 0 (reference)
        if not self.enabled or global_mean > self.start_value:
            return pixel_loss.mean(), ClipStats(False, float(global_mean), 0.0)
        local = window_means(pixel_loss.detach().mean(dim=0), self.window)  # H, W, shared by the batch
        threshold = torch.maximum(local, global_mean)
        clipped = torch.minimum(pixel_loss, threshold)  # above the threshold: a constant, so zero gradient
        fraction = float((pixel_loss.detach() > threshold).float().mean())
        return clipped.mean(), ClipStats(True, float(global_mean), fraction)
