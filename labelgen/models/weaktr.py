"""The WeakTr CAM network (weaktr-method.md §1.2–§1.5).

C class tokens, class logits = mean over dims of each class token's last output (no final norm, as
the reference), a 3×3 conv coarse-CAM head, Adaptive Attention Fusion over the L·H head-layers, the
fused CAM, the fine CAM through patch affinity, and three multilabel soft-margin losses.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelgen.config import Fusion, HeadInit
from labelgen.models.pixels import PixelNormalised, pixel_stats
from labelgen.models.vit import Backbone, attention_weights, block_with_attention
from labelgen.models.weights import create_vit

FUSIONS = typing.get_args(Fusion)  # the config's allowed values, spelled there once
HEAD_INITS = typing.get_args(HeadInit)


@dataclass(frozen=True)
class WeakTrConfig:
    backbone: str  # timm model name of a supported family (labelgen.models.families)
    num_fg_classes: int  # foreground classes C (labels 1..C)
    fusion: str = "aaf"  # "aaf" or "mean" (ablation: plain mean of the attention maps)
    aaf_reduction: int = 8
    aaf_feat_reduction: int = 8
    drop_path: float = 0.1
    # the 3×3 conv head: "pytorch_default" is the reference (its WeakTr._init_weights touches only
    # Linear and LayerNorm, so Conv2d.reset_parameters: kaiming-uniform weights, std ≈ 0.014 for
    # DeiT-S/Ti, uniform bias in ±1/sqrt(9·D)); "trunc_normal": std 0.02, zero bias (labelgen before)
    head_init: str = "pytorch_default"
    # patch position resampling to an input's grid, see labelgen.models.vit.PosEmbedResample
    pos_embed_resample: str = "dino"
    # pixels; 0: the architecture's own patch (see TrainCamParams.patch_size)
    patch_size: int = 0
    # pixel statistics: "from_weights" or a named set (labelgen.models.pixels.pixel_stats)
    normalisation: str = "from_weights"


class AdaptiveAttentionFusion(nn.Module):
    """Per-image weights for the K = L·H head-layers, from the attention outputs (HEAD variant, §1.4).

    Each head-layer's features are max-pooled over tokens (`pool_head_features`), squeezed
    head_dim -> 1 by a shared two-layer linear map (no nonlinearity between, as the reference), then
    weighed by a bias-free SE bottleneck over K with a sigmoid.
    """

    def __init__(self, num_maps: int, head_dim: int, reduction: int, feat_reduction: int):
        super().__init__()
        self.squeeze = nn.Sequential(
            nn.Linear(head_dim, head_dim // feat_reduction), nn.Linear(head_dim // feat_reduction, 1)
        )
        self.excite = nn.Sequential(
            nn.Linear(num_maps, num_maps // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(num_maps // reduction, num_maps, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, pooled: Tensor) -> Tensor:
        """pooled: B, K, head_dim (`stack_pooled`) -> weights B, K in (0, 1)."""
        return self.excite(self.squeeze(pooled).squeeze(-1))


def pool_head_features(output: Tensor, num_heads: int) -> Tensor:
    """One layer's attention output (B, N, D) -> B, H, D/H: each head's features max-pooled over all
    N tokens (class tokens included, as the reference). The reference's head split is strided
    (channel c belongs to head c mod H); we keep that so reference AAF checkpoints mean the same thing.
    Pooling each layer as it comes keeps only B·D numbers a layer instead of its B·N·D outputs."""
    b, n, d = output.shape
    return output.reshape(b, n, d // num_heads, num_heads).amax(dim=1).transpose(1, 2)


def stack_pooled(pooled: list[Tensor]) -> Tensor:
    """L × (B, H, D/H) pooled features -> B, K, D/H with head-layer index j = h·L + l (head-major),
    as the reference."""
    return torch.stack(pooled, dim=2).flatten(1, 2)  # B, H, L, hd -> B, K, hd


def fuse_attention(maps: Iterable[Tensor], weights: Tensor | None) -> Tensor:
    """Weighted mean of the K = L·H attention maps: (1/K) Σ_j w_j A_j, j = h·L + l; plain mean when
    weights is None. maps: L × (B, H, N, N), in layer order, a list or an iterator that computes
    each layer's maps on demand; weights: B, K. Accumulated layer by layer, so the K maps are never
    stacked into one B×K×N×N tensor, and an iterator's maps are dropped as soon as they are added."""
    fused, layer, num_heads = None, 0, 0
    for m in maps:  # not enumerate: its reused result tuple would keep the last maps alive
        num_heads = m.shape[1]
        if fused is None:
            fused = torch.zeros_like(m[:, 0])
        if weights is None:
            fused = fused + m.sum(dim=1)
        else:
            layers = weights.shape[1] // num_heads
            fused = fused + torch.einsum("bh,bhnm->bnm", weights[:, layer::layers].to(m.dtype), m)
        del m  # before the iterator computes the next layer's maps
        layer += 1
    return fused / (layer * num_heads)


class WeakTrOutput(NamedTuple):
    cls_logits: Tensor  # B, C
    coarse_logits: Tensor  # B, C
    fine_logits: Tensor  # B, C
    coarse_cam: Tensor  # B, C, h, w  ReLU(M), detached
    fused_cam: Tensor  # B, C, h, w  cross attention ⊙ coarse CAM
    fine_cam: Tensor  # B, C, h, w  patch affinity · fused CAM


class WeakTr(PixelNormalised):
    def __init__(self, config: WeakTrConfig, weights: str | None):
        super().__init__()
        if config.fusion not in FUSIONS:
            raise ValueError(f"fusion {config.fusion!r}; allowed: {FUSIONS}")
        if config.head_init not in HEAD_INITS:
            raise ValueError(f"head_init {config.head_init!r}; allowed: {HEAD_INITS}")
        self.config = config
        self.set_normalisation(*pixel_stats(config.backbone, weights, config.normalisation))
        vit = create_vit(config.backbone, weights, config.drop_path, config.patch_size)
        self.backbone = Backbone(vit, config.num_fg_classes, config.pos_embed_resample)
        dim, heads = self.backbone.embed_dim, self.backbone.num_heads
        self.head = nn.Conv2d(dim, config.num_fg_classes, kernel_size=3, stride=1, padding=1)  # PyTorch's init
        if config.head_init == "trunc_normal":
            self.head.apply(_init_conv)
        num_maps = len(self.backbone.blocks) * heads
        self.fusion = (
            AdaptiveAttentionFusion(num_maps, dim // heads, config.aaf_reduction, config.aaf_feat_reduction)
            if config.fusion == "aaf"
            else None
        )

    def forward(self, images: Tensor) -> WeakTrOutput:
        """The training forward of uint8 images B, 3, H, W (`PixelNormalised.normalise` checks and
        normalises them): every output, with the gradient paths of §1.5. Holds all L layers'
        attention maps (B, H, N, N each) at once, which backward needs; inference uses `cams`."""
        return self._forward(self.normalise(images))

    def _forward(self, images: Tensor) -> WeakTrOutput:
        """`forward` of already normalised images (float B, 3, H, W)."""
        out = self.backbone.forward_features(images, trace=True)
        heads = self.backbone.num_heads
        cam_logits = self._cam_logits(out.tokens, out.grid)
        coarse = F.relu(cam_logits).detach()
        weights = self._fusion_weights([pool_head_features(o.detach(), heads) for o in out.attn_outputs])
        fused, fine = self._refine(coarse, fuse_attention([m.detach() for m in out.attn_maps], weights))
        c = self.config.num_fg_classes
        cls_logits = out.tokens[:, :c].mean(dim=-1)  # B, C
        return WeakTrOutput(cls_logits, cam_logits.mean(dim=(2, 3)), fine.mean(dim=(2, 3)), coarse, fused, fine)

    @torch.no_grad()
    def cams(self, images: Tensor, kind: str, cache_bytes: int) -> Tensor:
        """B, C, h, w class activation maps (float, ≥ 0) of the chosen kind (fine, fused or coarse)
        of uint8 images B, 3, H, W (normalised here); (h, w) is the patch grid. Inference only.

        Bit-identical to `forward`'s maps without holding all L layers' attention maps (B, H, N, N
        each) at once. The AAF weights need every layer's pooled attention outputs before any map can
        be weighed, so a first pass runs the blocks and keeps, per layer, either its attention maps
        (while their total stays within `cache_bytes`) or its input tokens (B, N, D); a second pass
        recomputes the maps of the layers not kept from their inputs (the same operations, so the
        same bits) and adds all of them into the fused map, layer by layer. Peak memory beyond the
        kept maps is about 3·B·H·N² float32 as measured (one layer's attention logits and softmax
        weights, the B·N² fused map, temporaries); each recomputed layer costs its attention-weight
        computation again (about 1.6× the time of keeping every layer, on a CPU).
        """
        return self._cams(self.normalise(images), kind, cache_bytes)

    def _cams(self, images: Tensor, kind: str, cache_bytes: int) -> Tensor:
        """`cams` of already normalised images (float B, 3, H, W)."""
        x, grid = self.backbone.embed(images)
        rope = self.backbone.rotary(grid)
        heads = self.backbone.num_heads
        kept, recompute, pooled = [], [], []
        for block in self.backbone.blocks:
            tokens = x
            x, weights, attn_out = block_with_attention(block, x, rope)
            pooled.append(pool_head_features(attn_out, heads))
            if not recompute and (len(kept) + 1) * weights.numel() * weights.element_size() <= cache_bytes:
                kept.append(weights)
            else:
                recompute.append((block, tokens))
            del weights  # before the next block computes its own
        coarse = F.relu(self._cam_logits(x, grid))
        if kind == "coarse":
            return coarse
        maps = chain(_drain(kept), (attention_weights(b, t, rope) for b, t in _drain(recompute)))
        fused, fine = self._refine(coarse, fuse_attention(maps, self._fusion_weights(pooled)))
        return {"fine": fine, "fused": fused}[kind]

    def _cam_logits(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Last block's tokens B, C + R + P, D -> the coarse-CAM head's logits M, B, C, h, w."""
        b, _, d = tokens.shape
        patches = tokens[:, self.backbone.patch_start :].transpose(1, 2).reshape(b, d, *grid)
        return self.head(patches)

    def _fusion_weights(self, pooled: list[Tensor]) -> Tensor | None:
        """B, K AAF weights from L × (B, H, hd) pooled attention outputs; None for mean fusion."""
        return None if self.fusion is None else self.fusion(stack_pooled(pooled))

    def _refine(self, coarse: Tensor, fused_attn: Tensor) -> tuple[Tensor, Tensor]:
        """(fused CAM, fine CAM), B, C, h, w each, from the coarse CAM and the fused attention B, N, N:
        class-to-patch attention ⊙ coarse CAM, then patch affinity · fused CAM. Register tokens
        (between the class and the patch tokens) are in neither."""
        b, c, h, w = coarse.shape
        p0 = self.backbone.patch_start
        cross = fused_attn[:, :c, p0:].reshape(b, c, h, w)
        affinity = fused_attn[:, p0:, p0:]  # B, P, P
        fused = cross * coarse
        fine = (affinity @ fused.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        return fused, fine


def _drain(items: list) -> Iterator:
    """Yield and forget the items of a list, first to last, so each can be freed once used."""
    while items:
        yield items.pop(0)


def weaktr_loss(out: WeakTrOutput, targets: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Sum of the three multilabel soft-margin losses, weight 1 each; targets are B, C multi-hot."""
    parts = {
        "cls": F.multilabel_soft_margin_loss(out.cls_logits, targets),
        "coarse": F.multilabel_soft_margin_loss(out.coarse_logits, targets),
        "fine": F.multilabel_soft_margin_loss(out.fine_logits, targets),
    }
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


def _init_conv(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
