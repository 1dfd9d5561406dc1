"""A backbone over timm's modules (one of the families of `labelgen.models.families`) whose forward
can also return, per layer, the softmax attention maps and the attention branch output after `proj`
(timm's fused attention hides both), computed as each block's own forward computes them.

Token order: [`num_prefix` class tokens][register tokens, if the architecture has them][patches,
row-major]. The class tokens are ours: copies of the pretrained CLS token and of its position
embedding, so WeakTr gets C class tokens and Segmenter gets one. Register tokens (DINOv2 with
registers) are kept as pretrained; they are neither class nor patch tokens (`patch_start` is where
the patches begin). EVA-02's rotary embedding is applied to the patch tokens only, built for each
input's grid. Any input size works: the patch
position embeddings are resampled to the input's grid (`resample_patch_pos`, in the way the
reference code of each stage does), remainder pixels are dropped as the patch convolution of the
reference does, and a side shorter than one patch is zero-padded to one patch (the grid then has one
cell on that side, instead of none).
"""

from __future__ import annotations

import typing
from functools import singledispatch
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat, resample_abs_pos_embed
from timm.models.eva import EvaBlock
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from labelgen.config import PosEmbedResample
from labelgen.errors import ConfigError

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
    tokens: Tensor  # B, T + R + P, D (last block output, before the final norm)
    grid: tuple[int, int]  # h, w patches
    attn_maps: list[Tensor]  # per layer B, heads, N, N softmax weights (empty unless traced)
    attn_outputs: list[Tensor]  # per layer B, N, D attention output after proj (empty unless traced)


def _softmax_weights(attn: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # B, heads, N, N


def _attend(attn: nn.Module, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """The attention of q, k, v (B, heads, N, head_dim) unfused, then the module's inner norm, gate
    and projection: (output B, N, D after proj, softmax weights B, heads, N, N)."""
    b, n, _ = x.shape
    weights = _softmax_weights(attn, q, k)
    out = (attn.attn_drop(weights) @ v).transpose(1, 2).reshape(b, n, -1)
    out = attn.norm(out)
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out)), weights


def _vit_qkv(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v  # B, heads, N, head_dim each


def apply_rope(t: Tensor, rope: Tensor, num_prefix: int, half: bool) -> Tensor:
    """timm EvaAttention's rotary embedding of q or k (B, heads, N, head_dim): the first `num_prefix`
    tokens (class and register tokens) are left as they are, the patch tokens rotated by `rope`
    (P, 2·head_dim: sin then cos, `rope.get_embed`)."""
    return torch.cat([t[:, :, :num_prefix], apply_rot_embed_cat(t[:, :, num_prefix:], rope, half=half)], dim=2)


def _eva_qkv(attn: nn.Module, x: Tensor, rope: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """timm `EvaAttention`'s q, k, v (B, heads, N, head_dim): fused qkv with q and v biases (k has
    none) or three projections, q/k norms, the rotary embedding on the patch tokens."""
    b, n, _ = x.shape
    if attn.qkv is not None:
        bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(x, attn.qkv.weight, bias).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
    else:
        q, k, v = (
            p(x).reshape(b, n, attn.num_heads, -1).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        npt, half = attn.num_prefix_tokens, attn.rotate_half
        q = apply_rope(q, rope, npt, half).type_as(v)
        k = apply_rope(k, rope, npt, half).type_as(v)
    return q, k, v


@singledispatch
def block_with_attention(block: nn.Module, x: Tensor, rope: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A block's forward returning (output, attention weights B, heads, N, N, attention output after
    proj B, N, D), for each supported block type (registered below)."""
    raise TypeError(f"no traced forward for {type(block).__name__}")


@singledispatch
def attention_weights(block: nn.Module, x: Tensor, rope: Tensor | None = None) -> Tensor:
    """The softmax weights (B, heads, N, N) of a block's attention on the block's input x (B, N, D):
    the same operations as `block_with_attention`, so the same bits."""
    raise TypeError(f"no traced attention for {type(block).__name__}")


@block_with_attention.register
def _(block: Block, x: Tensor, rope: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """timm `Block` (ViT, DeiT, AugReg, CLIP; DINOv2's LayerScale in ls1/ls2)."""
    y = block.norm1(x)
    attn_out, weights = _attend(block.attn, y, *_vit_qkv(block.attn, y))
    x = x + block.drop_path1(block.ls1(attn_out))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, weights, attn_out


@attention_weights.register
def _(block: Block, x: Tensor, rope: Tensor | None = None) -> Tensor:
    return _softmax_weights(block.attn, *_vit_qkv(block.attn, block.norm1(x))[:2])


@block_with_attention.register
def _(block: EvaBlock, x: Tensor, rope: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """timm `EvaBlock` (EVA-02): rotary embedding inside attention, optional gamma layer scales."""
    y = block.norm1(x)
    attn_out, weights = _attend(block.attn, y, *_eva_qkv(block.attn, y, rope))
    x = x + block.drop_path1(attn_out if block.gamma_1 is None else block.gamma_1 * attn_out)
    mlp = block.mlp(block.norm2(x))
    x = x + block.drop_path2(mlp if block.gamma_2 is None else block.gamma_2 * mlp)
    return x, weights, attn_out


@attention_weights.register
def _(block: EvaBlock, x: Tensor, rope: Tensor | None = None) -> Tensor:
    return _softmax_weights(block.attn, *_eva_qkv(block.attn, block.norm1(x), rope)[:2])


def check_structure(model: nn.Module, what: str) -> None:
    """Raise `ConfigError` unless `model` has what `Backbone` needs: a CLS token, blocks of a traced
    type, one patch embedding."""
    if getattr(model, "cls_token", None) is None:
        raise ConfigError(f"{what}: the architecture has no CLS token, which WeakTr's class tokens copy")
    kinds = {type(b) for b in model.blocks}
    unknown = [k.__name__ for k in kinds if block_with_attention.dispatch(k) is block_with_attention.dispatch(object)]
    if unknown:
        raise ConfigError(
            f"{what}: its blocks ({', '.join(unknown)}) have no traced forward; use Block or EvaBlock models"
        )
    if getattr(model, "rope_mixed", False):
        raise ConfigError(f"{what}: per-layer (mixed) rotary embeddings are not supported")


class Backbone(nn.Module):
    """`pos_resample` (`PosEmbedResample`) says how the patch position table is resampled to an input's
    grid; `grid`, when given, is the table's own grid: the pretrained table is resampled to it once,
    here (the reference Segmenter keeps its table at the training crop's grid, 30×30 for 480)."""

    def __init__(
        self, vit: nn.Module, num_prefix: int, pos_resample: str = "dino", grid: tuple[int, int] | None = None
    ):
        super().__init__()
        if pos_resample not in POS_EMBED_RESAMPLES:
            raise ValueError(f"pos_embed_resample {pos_resample!r}; allowed: {POS_EMBED_RESAMPLES}")
        check_structure(vit, type(vit).__name__)
        self.patch_size = vit.patch_embed.patch_size[0]
        self.embed_dim = vit.embed_dim
        self.num_heads = vit.blocks[0].attn.num_heads
        self.num_prefix = num_prefix
        self.patch_embed = vit.patch_embed
        self.patch_embed.strict_img_size = False
        self.pos_resample = pos_resample
        self.grid = tuple(vit.patch_embed.grid_size)
        embed_class = not getattr(vit, "no_embed_class", False)  # whether pos_embed has rows for the prefix
        reg = getattr(vit, "reg_token", None)
        self.num_registers = 0 if reg is None else reg.shape[1]
        self.patch_start = num_prefix + self.num_registers  # token index of the first patch
        pos = vit.pos_embed.detach()
        own_prefix = vit.num_prefix_tokens if embed_class else 0  # timm's: 1 CLS + registers
        # C copies of the pretrained CLS token and its position embedding (weaktr-method.md §1.2); a
        # model without prefix positions (DINOv2 with registers: timm folds the CLS position into the
        # CLS token) adds none, as zeros
        cls_pos = pos[:, :1] if embed_class else torch.zeros_like(vit.cls_token)
        self.prefix_tokens = nn.Parameter(vit.cls_token.detach().repeat(1, num_prefix, 1))
        self.prefix_pos = nn.Parameter(cls_pos.repeat(1, num_prefix, 1).clone())
        if self.num_registers:  # kept as pretrained, their position (if any) added once
            reg_pos = pos[:, 1 : 1 + self.num_registers] if embed_class else 0
            self.register_tokens = nn.Parameter(reg.detach() + reg_pos)
        patch_pos = pos[:, own_prefix:].clone()
        if grid is not None and tuple(grid) != self.grid:
            patch_pos = resample_patch_pos(patch_pos, self.grid, tuple(grid), pos_resample)
            self.grid = tuple(grid)
        self.patch_pos = nn.Parameter(patch_pos)
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        # the final norm: timm's Eva keeps it as fc_norm (norm is Identity when pooling by average)
        fc_norm = getattr(vit, "fc_norm", None)
        self.norm = fc_norm if isinstance(vit.norm, nn.Identity) and fc_norm is not None else vit.norm
        self.rope = getattr(vit, "rope", None)
        for block in self.blocks:  # EVA-02: the rotary embedding skips every prefix token, ours included
            if hasattr(block.attn, "num_prefix_tokens"):
                block.attn.num_prefix_tokens = self.patch_start

    def patch_position(self, grid: tuple[int, int], square_input: bool = True) -> Tensor:
        """The patch position embeddings (1, h·w, D) for an input of this (h, w) grid; `square_input`:
        whether that input is square in pixels (see `resample_patch_pos`)."""
        return resample_patch_pos(self.patch_pos, self.grid, tuple(grid), self.pos_resample, square_input)

    def rotary(self, grid: tuple[int, int]) -> Tensor | None:
        """The rotary embedding (h·w, 2·head_dim) of the patch tokens of an (h, w) grid, as timm's Eva
        builds it for that grid; None for a backbone without one."""
        return None if self.rope is None else self.rope.get_embed(shape=list(grid))

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """images B, 3, H, W normalised -> the tokens entering the first block (B, T + R + P, D) and
        the (h, w) patch grid, h = max(H, patch) // patch (a side shorter than a patch is zero-padded)."""
        p = self.patch_size
        if min(images.shape[-2:]) < p:  # 0 after normalisation: the mean colour of the pretraining
            images = F.pad(images, (0, max(0, p - images.shape[-1]), 0, max(0, p - images.shape[-2])))
        h, w = images.shape[-2] // p, images.shape[-1] // p
        x = self.patch_embed(images[..., : h * p, : w * p])  # B, P, D (B, h, w, D for a dynamic-size Eva)
        x = x.flatten(1, 2) if x.ndim == 4 else x
        b = x.shape[0]
        square = images.shape[-2] == images.shape[-1]
        prefix = self.prefix_tokens.expand(b, -1, -1) + self.prefix_pos
        patches = x + self.patch_position((h, w), square)
        parts = [prefix, patches]
        if self.num_registers:
            parts.insert(1, self.register_tokens.expand(b, -1, -1))
        return self.norm_pre(self.pos_drop(torch.cat(parts, dim=1))), (h, w)

    def forward_features(self, images: Tensor, trace: bool = False) -> ViTOutput:
        """images: B, 3, H, W normalised. With `trace`, also the per-layer attention maps and outputs."""
        x, grid = self.embed(images)
        rope = self.rotary(grid)
        maps, outs = [], []
        for block in self.blocks:
            if trace:
                x, weights, attn_out = block_with_attention(block, x, rope)
                maps.append(weights)
                outs.append(attn_out)
            else:
                x = block(x, rope=rope) if rope is not None else block(x)
        return ViTOutput(x, grid, maps, outs)
