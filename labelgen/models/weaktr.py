"""The WeakTr CAM network (weaktr-method.md §1.2–§1.5).

C class tokens, class logits = mean over dims of each class token's last output (no final norm, as
the reference), a 3×3 conv coarse-CAM head, Adaptive Attention Fusion over the L·H head-layers, the
fused CAM, the fine CAM through patch affinity, and three multilabel soft-margin losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelgen.models.vit import ViTBackbone
from labelgen.models.weights import create_vit

FUSIONS = ("aaf", "mean")
CAM_KINDS = ("fine", "fused", "coarse")


@dataclass(frozen=True)
class WeakTrConfig:
    backbone: str  # timm model name
    num_classes: int  # foreground classes C (labels 1..C)
    fusion: str = "aaf"  # "aaf" or "mean" (ablation: plain mean of the attention maps)
    aaf_reduction: int = 8
    aaf_feat_reduction: int = 8
    drop_path: float = 0.1


class AdaptiveAttentionFusion(nn.Module):
    """Per-image weights for the K = L·H head-layers, from the attention outputs (HEAD variant, §1.4).

    Max-pool each head-layer's features over tokens, squeeze head_dim -> 1 with a shared two-layer
    linear map (no nonlinearity between, as the reference), then a bias-free SE bottleneck over K with
    a sigmoid.
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

    def forward(self, features: Tensor) -> Tensor:
        """features: B, K, N, head_dim -> weights B, K in (0, 1)."""
        pooled = features.amax(dim=2)  # B, K, head_dim
        return self.excite(self.squeeze(pooled).squeeze(-1))


def stack_head_features(outputs: list[Tensor], num_heads: int) -> Tensor:
    """Per-layer attention outputs (B, N, D) -> B, K, N, D/H with head-layer index j = h·L + l
    (head-major), as the reference. Its head split is strided (channel c belongs to head c mod H);
    we keep that so reference AAF checkpoints mean the same thing."""
    b, n, d = outputs[0].shape
    feats = torch.stack([o.reshape(b, n, d // num_heads, num_heads) for o in outputs], dim=1)  # B, L, N, hd, H
    return feats.permute(0, 4, 1, 2, 3).flatten(1, 2)  # B, H, L, N, hd -> B, K, N, hd


def fuse_attention(maps: list[Tensor], weights: Tensor | None) -> Tensor:
    """Weighted mean of the K = L·H attention maps: (1/K) Σ_j w_j A_j, j = h·L + l; plain mean when
    weights is None. maps: L × (B, H, N, N); weights: B, K. Accumulated layer by layer, so the K maps
    are never stacked into one B×K×N×N tensor (two such copies per image at full resolution)."""
    num_layers, num_heads = len(maps), maps[0].shape[1]
    fused = torch.zeros_like(maps[0][:, 0])
    for layer, m in enumerate(maps):
        if weights is None:
            fused = fused + m.sum(dim=1)
        else:
            fused = fused + torch.einsum("bh,bhnm->bnm", weights[:, layer::num_layers].to(m.dtype), m)
    return fused / (num_layers * num_heads)


class WeakTrOutput(NamedTuple):
    cls_logits: Tensor  # B, C
    coarse_logits: Tensor  # B, C
    fine_logits: Tensor  # B, C
    coarse_cam: Tensor  # B, C, h, w  ReLU(M), detached
    fused_cam: Tensor  # B, C, h, w  cross attention ⊙ coarse CAM
    fine_cam: Tensor  # B, C, h, w  patch affinity · fused CAM


class WeakTr(nn.Module):
    def __init__(self, config: WeakTrConfig, weights: str | None):
        super().__init__()
        if config.fusion not in FUSIONS:
            raise ValueError(f"fusion {config.fusion!r}; allowed: {FUSIONS}")
        self.config = config
        self.backbone = ViTBackbone(create_vit(config.backbone, weights, config.drop_path), config.num_classes)
        dim, heads = self.backbone.embed_dim, self.backbone.num_heads
        self.head = nn.Conv2d(dim, config.num_classes, kernel_size=3, stride=1, padding=1)
        self.head.apply(_init_conv)
        num_maps = len(self.backbone.blocks) * heads
        self.fusion = (
            AdaptiveAttentionFusion(num_maps, dim // heads, config.aaf_reduction, config.aaf_feat_reduction)
            if config.fusion == "aaf"
            else None
        )

    def forward(self, images: Tensor) -> WeakTrOutput:
        c = self.config.num_classes
        out = self.backbone.forward_features(images, trace=True)
        b, _, d = out.tokens.shape
        h, w = out.grid
        cls_logits = out.tokens[:, :c].mean(dim=-1)  # B, C
        patches = out.tokens[:, c:].transpose(1, 2).reshape(b, d, h, w)
        cam_logits = self.head(patches)  # B, C, h, w
        coarse_logits = cam_logits.mean(dim=(2, 3))
        coarse = F.relu(cam_logits).detach()
        weights = None
        if self.fusion is not None:
            feats = stack_head_features([o.detach() for o in out.attn_outputs], self.backbone.num_heads)
            weights = self.fusion(feats)  # B, K
        fused_attn = fuse_attention([m.detach() for m in out.attn_maps], weights)  # B, N, N
        cross = fused_attn[:, :c, c:].reshape(b, c, h, w)
        affinity = fused_attn[:, c:, c:]  # B, P, P
        fused = cross * coarse
        fine = (affinity @ fused.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        return WeakTrOutput(cls_logits, coarse_logits, fine.mean(dim=(2, 3)), coarse, fused, fine)

    def cams(self, images: Tensor, kind: str) -> Tensor:
        """B, C, h, w class activation maps of the chosen kind (fine, fused or coarse)."""
        out = self.forward(images)
        return {"fine": out.fine_cam, "fused": out.fused_cam, "coarse": out.coarse_cam}[kind]


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
