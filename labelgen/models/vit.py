"""A ViT over timm's modules whose forward can also return, per layer, the softmax attention maps
and the attention branch output after `proj` (timm's fused attention hides both).

The prefix tokens are ours: `num_prefix` copies of the pretrained CLS token and of its position
embedding, so WeakTr gets C class tokens and Segmenter gets one. Any input size works: the patch
position embeddings are resampled to the input's grid (`resample_patch_pos`, in the way the
reference code of each stage does), remainder pixels are dropped as the patch convolution of the
reference does, and a side shorter than one patch is zero-padded to one patch (the grid then has one
cell on that side, instead of none).
"""

from __future__ import annotations

import typing
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from labelgen.config import PosEmbedResample

# How a patch position grid is resampled to another grid (labelgen.config.PosEmbedResample;
# weaktr-method.md §1.2, §3.1):
# "dino": the reference stage 1 (models.py:WeakTr.interpolate_pos_encoding, from DINO): bicubic
#   (A = -0.75, align_corners False, no antialias) by scale_factor (g + 0.1) / g0 per side, so output
#   cell o samples input coordinate (o + 0.5)·g0/(g + 0.1) − 0.5; kept as is only when the grid is the
#   table's and the input is square (its `npatch == N and w == h`).
# "bilinear": the reference stage 2 (OnlineRetraining/segm/model/utils.py:resize_pos_embed): bilinear
#   to the target size, align_corners False, no antialias.
# "timm": timm.layers.resample_abs_pos_embed: bicubic to the target size, antialiased (labelgen before
#   the parity work; it maps the grids exactly, without DINO's 0.1 offset).
POS_EMBED_RESAMPLES = typing.get_args(PosEmbedResample)  # labelgen.config.PosEmbedResample, spelled there once


def resample_patch_pos(
    pos: Tensor, old: tuple[int, int], new: tuple[int, int], mode: str, square_input: bool = True
) -> Tensor:
    """Patch position embeddings (1, gh0·gw0, D), row-major on the `old` grid -> (1, h·w, D) on `new`.
    `square_input` (the input image is square) matters to "dino" only, as in the reference."""
    if mode not in POS_EMBED_RESAMPLES:
        raise ValueError(f"pos_embed_resample {mode!r}; allowed: {POS_EMBED_RESAMPLES}")
    if new == old and (mode != "dino" or square_input):
        return pos
    if mode == "timm":
        return resample_abs_pos_embed(pos, list(new), list(old), num_prefix_tokens=0)
    d = pos.shape[-1]
    grid = pos.reshape(1, *old, d).permute(0, 3, 1, 2)
    if mode == "bilinear":
        out = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    else:  # the reference's expression, so the same scale factors to the last bit
        factor = ((new[0] + 0.1) / old[0], (new[1] + 0.1) / old[1])  # reference: (g + 0.1) / math.sqrt(N) = 14.0
        out = F.interpolate(grid, scale_factor=factor, mode="bicubic", align_corners=False)
        if tuple(out.shape[-2:]) != new:  # floor(g0 · (g + 0.1) / g0) is g for any grid we meet
            raise AssertionError(f"dino resampling of {old} to {new} gave {tuple(out.shape[-2:])}")
    return out.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d)


def set_layer_norm_eps(module: nn.Module, eps: float) -> None:
    """Set the eps of every LayerNorm in `module` (timm's LayerNorm is an nn.LayerNorm)."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps


class ViTOutput(NamedTuple):
    tokens: Tensor  # B, T + P, D (last block output, before the final norm)
    grid: tuple[int, int]  # h, w patches
    attn_maps: list[Tensor]  # per layer B, heads, N, N softmax weights (empty unless traced)
    attn_outputs: list[Tensor]  # per layer B, N, D attention output after proj (empty unless traced)


def _qkv(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v  # B, heads, N, head_dim each


def _softmax_weights(attn: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # B, heads, N, N


def attention_weights(attn: nn.Module, x: Tensor) -> Tensor:
    """The softmax weights (B, heads, N, N) of timm `Attention` on its input x (B, N, D): the same
    operations as `attention_with_weights`, so the same bits."""
    q, k, _ = _qkv(attn, x)
    return _softmax_weights(attn, q, k)


def attention_with_weights(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """timm `Attention.forward`, unfused, also returning the softmax weights (B, heads, N, N)."""
    b, n, _ = x.shape
    q, k, v = _qkv(attn, x)
    weights = _softmax_weights(attn, q, k)
    out = (attn.attn_drop(weights) @ v).transpose(1, 2).reshape(b, n, -1)
    out = attn.norm(out)
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out)), weights


def block_with_attention(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """timm `Block.forward` returning (output, attention weights, attention output after proj)."""
    attn_out, weights = attention_with_weights(block.attn, block.norm1(x))
    x = x + block.drop_path1(block.ls1(attn_out))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, weights, attn_out


class ViTBackbone(nn.Module):
    """`pos_resample` (`PosEmbedResample`) says how the patch position table is resampled to an input's
    grid; `grid`, when given, is the table's own grid: the pretrained table is resampled to it once,
    here (the reference Segmenter keeps its table at the training crop's grid, 30×30 for 480 px)."""

    def __init__(
        self, vit: VisionTransformer, num_prefix: int, pos_resample: str = "dino", grid: tuple[int, int] | None = None
    ):
        super().__init__()
        if pos_resample not in POS_EMBED_RESAMPLES:
            raise ValueError(f"pos_embed_resample {pos_resample!r}; allowed: {POS_EMBED_RESAMPLES}")
        if vit.num_prefix_tokens != 1 or getattr(vit, "no_embed_class", False) or vit.cls_token is None:
            raise ValueError("ViTBackbone needs a ViT/DeiT with one CLS token that has a position embedding")
        self.patch_size = vit.patch_embed.patch_size[0]
        self.embed_dim = vit.embed_dim
        self.num_heads = vit.blocks[0].attn.num_heads
        self.num_prefix = num_prefix
        self.patch_embed = vit.patch_embed
        self.patch_embed.strict_img_size = False
        self.pos_resample = pos_resample
        self.grid = tuple(vit.patch_embed.grid_size)
        # C copies of the pretrained CLS token and its position embedding (weaktr-method.md §1.2)
        self.prefix_tokens = nn.Parameter(vit.cls_token.detach().repeat(1, num_prefix, 1))
        self.prefix_pos = nn.Parameter(vit.pos_embed[:, :1].detach().repeat(1, num_prefix, 1))
        patch_pos = vit.pos_embed[:, 1:].detach().clone()
        if grid is not None and tuple(grid) != self.grid:
            patch_pos = resample_patch_pos(patch_pos, self.grid, tuple(grid), pos_resample)
            self.grid = tuple(grid)
        self.patch_pos = nn.Parameter(patch_pos)
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm

    def patch_position(self, grid: tuple[int, int], square_input: bool = True) -> Tensor:
        """The patch position embeddings (1, h·w, D) for an input of this (h, w) grid; `square_input`:
        whether that input is square in pixels (see `resample_patch_pos`)."""
        return resample_patch_pos(self.patch_pos, self.grid, tuple(grid), self.pos_resample, square_input)

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """images B, 3, H, W normalised -> the tokens entering the first block (B, T + P, D) and the
        (h, w) patch grid, h = max(H, patch) // patch (a side shorter than a patch is zero-padded)."""
        p = self.patch_size
        if min(images.shape[-2:]) < p:  # 0 after normalisation: the mean colour of the pretraining
            images = F.pad(images, (0, max(0, p - images.shape[-1]), 0, max(0, p - images.shape[-2])))
        h, w = images.shape[-2] // p, images.shape[-1] // p
        x = self.patch_embed(images[..., : h * p, : w * p])  # B, P, D
        prefix = self.prefix_tokens.expand(x.shape[0], -1, -1)
        square = images.shape[-2] == images.shape[-1]
        pos = torch.cat([self.prefix_pos, self.patch_position((h, w), square)], dim=1)
        return self.norm_pre(self.pos_drop(torch.cat([prefix, x], dim=1) + pos)), (h, w)

    def forward_features(self, images: Tensor, trace: bool = False) -> ViTOutput:
        """images: B, 3, H, W normalised. With `trace`, also the per-layer attention maps and outputs."""
        x, (h, w) = self.embed(images)
        maps, outs = [], []
        for block in self.blocks:
            if trace:
                x, weights, attn_out = block_with_attention(block, x)
                maps.append(weights)
                outs.append(attn_out)
            else:
                x = block(x)
        return ViTOutput(x, (h, w), maps, outs)
