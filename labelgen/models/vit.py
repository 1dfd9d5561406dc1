"""A ViT over timm's modules whose forward can also return, per layer, the softmax attention maps
and the attention branch output after `proj` (timm's fused attention hides both).

The prefix tokens are ours: `num_prefix` copies of the pretrained CLS token and of its position
embedding, so WeakTr gets C class tokens and Segmenter gets one. Any input size works: the patch
position embeddings are resampled to the input's grid, remainder pixels are dropped as the patch
convolution of the reference does, and a side shorter than one patch is zero-padded to one patch
(the grid then has one cell on that side, instead of none).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


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
    def __init__(self, vit: VisionTransformer, num_prefix: int):
        super().__init__()
        if vit.num_prefix_tokens != 1 or getattr(vit, "no_embed_class", False) or vit.cls_token is None:
            raise ValueError("ViTBackbone needs a ViT/DeiT with one CLS token that has a position embedding")
        self.patch_size = vit.patch_embed.patch_size[0]
        self.embed_dim = vit.embed_dim
        self.num_heads = vit.blocks[0].attn.num_heads
        self.num_prefix = num_prefix
        self.patch_embed = vit.patch_embed
        self.patch_embed.strict_img_size = False
        self.grid = tuple(vit.patch_embed.grid_size)
        # C copies of the pretrained CLS token and its position embedding (weaktr-method.md §1.2)
        self.prefix_tokens = nn.Parameter(vit.cls_token.detach().repeat(1, num_prefix, 1))
        self.prefix_pos = nn.Parameter(vit.pos_embed[:, :1].detach().repeat(1, num_prefix, 1))
        self.patch_pos = nn.Parameter(vit.pos_embed[:, 1:].detach().clone())
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm

    def patch_position(self, grid: tuple[int, int]) -> Tensor:
        if grid == self.grid:
            return self.patch_pos
        return resample_abs_pos_embed(self.patch_pos, list(grid), list(self.grid), num_prefix_tokens=0)

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """images B, 3, H, W normalised -> the tokens entering the first block (B, T + P, D) and the
        (h, w) patch grid, h = max(H, patch) // patch (a side shorter than a patch is zero-padded)."""
        p = self.patch_size
        if min(images.shape[-2:]) < p:  # 0 after normalisation: the mean colour of the pretraining
            images = F.pad(images, (0, max(0, p - images.shape[-1]), 0, max(0, p - images.shape[-2])))
        h, w = images.shape[-2] // p, images.shape[-1] // p
        x = self.patch_embed(images[..., : h * p, : w * p])  # B, P, D
        prefix = self.prefix_tokens.expand(x.shape[0], -1, -1)
        pos = torch.cat([self.prefix_pos, self.patch_position((h, w))], dim=1)
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
