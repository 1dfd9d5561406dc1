"""Segmenter (Strudel et al. 2021) as WeakTr's stage 2 uses it (weaktr-method.md §3.1): the ViT
encoder (one CLS token, final norm) and a mask-transformer decoder with learnable class embeddings,
cosine-similarity masks and a mask norm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from labelgen.models.pixels import PixelNormalised, pixel_stats
from labelgen.models.vit import Backbone, set_layer_norm_eps
from labelgen.models.weights import create_vit
from labelgen.store.checkpoint import load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class SegmenterConfig:
    backbone: str  # timm model name
    num_labels: int  # classes including background
    decoder_layers: int = 2
    # the decoder's one dropout, as the reference's MaskTransformer(dropout=0.1): on the attention
    # weights, after the attention projection and in the MLP (segm/model/blocks.py)
    decoder_dropout: float = 0.1
    drop_path: float = 0.1
    # eps of every LayerNorm, encoder and decoder: the reference Segmenter builds them all with
    # nn.LayerNorm's default 1e-5 (segm/model/vit.py, blocks.py, decoder.py); the pretrained DeiT/ViT
    # (and labelgen before) use 1e-6
    layer_norm_eps: float = 1e-5
    # patch position resampling, see labelgen.models.vit.PosEmbedResample; the reference's is
    # "bilinear" (segm/model/utils.py:resize_pos_embed)
    pos_embed_resample: str = "bilinear"
    # pixels: the encoder's position table is kept at the grid of this input size (the training crop),
    # resampled once from the pretrained grid, as the reference Segmenter's `image_size`; None keeps
    # the pretrained grid
    image_size: int | None = None
    # pixels; 0: the architecture's own patch (see TrainDecoderParams.patch_size)
    patch_size: int = 0
    # pixel statistics: "from_weights" or a named set (labelgen.models.pixels.pixel_stats)
    normalisation: str = "from_weights"


class MaskTransformer(nn.Module):
    def __init__(self, dim: int, heads: int, num_labels: int, layers: int, dropout: float, eps: float = 1e-5):
        super().__init__()
        self.num_labels = num_labels
        self.proj_dec = nn.Linear(dim, dim)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_labels, dim))
        trunc_normal_(self.cls_emb, std=0.02)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=dropout, attn_drop=dropout) for _ in range(layers)
        )
        set_layer_norm_eps(self.blocks, eps)
        self.decoder_norm = nn.LayerNorm(dim, eps=eps)
        scale = dim**-0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(dim, dim))
        self.proj_classes = nn.Parameter(scale * torch.randn(dim, dim))
        self.mask_norm = nn.LayerNorm(num_labels, eps=eps)

    def _masks(self, x: Tensor, num_patches: int, grid: tuple[int, int]) -> Tensor:
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, :num_patches] @ self.proj_patch, dim=-1)
        classes = F.normalize(x[:, num_patches:] @ self.proj_classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # B, P, n_labels
        return masks.transpose(1, 2).reshape(x.shape[0], self.num_labels, *grid)

    def forward(self, patches: Tensor, grid: tuple[int, int], all_depths: bool = False) -> list[Tensor]:
        """patches B, P, D -> mask logits B, n_labels, h, w after the last block (and, with
        `all_depths`, after every block, last one last)."""
        p = patches.shape[1]
        x = torch.cat([self.proj_dec(patches), self.cls_emb.expand(patches.shape[0], -1, -1)], dim=1)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if all_depths or i == len(self.blocks) - 1:
                outs.append(self._masks(x, p, grid))
        return outs


class Segmenter(PixelNormalised):
    def __init__(self, config: SegmenterConfig, weights: str | None):
        super().__init__()
        self.config = config
        self.set_normalisation(*pixel_stats(config.backbone, weights, config.normalisation))
        vit = create_vit(config.backbone, weights, config.drop_path, config.patch_size)
        set_layer_norm_eps(vit, config.layer_norm_eps)
        p = vit.patch_embed.patch_size[0]
        grid = None if config.image_size is None else (max(1, config.image_size // p),) * 2
        self.encoder = Backbone(vit, num_prefix=1, pos_resample=config.pos_embed_resample, grid=grid)
        self.decoder = MaskTransformer(
            self.encoder.embed_dim,
            self.encoder.num_heads,
            config.num_labels,
            config.decoder_layers,
            config.decoder_dropout,
            config.layer_norm_eps,
        )
        self.decoder.apply(_init_linear)

    def forward(self, images: Tensor, all_depths: bool = False) -> list[Tensor]:
        """uint8 images B, 3, H, W (`PixelNormalised.normalise` checks and normalises them) -> per-pixel
        logits B, n_labels, H, W (one per decoder depth asked for).

        The normalised input is zero-padded to a multiple of the patch size and the padding cropped back."""
        return self._forward(self.normalise(images), all_depths)

    def _forward(self, images: Tensor, all_depths: bool = False) -> list[Tensor]:
        """`forward` of already normalised images (float B, 3, H, W)."""
        h, w = images.shape[-2:]
        p = self.encoder.patch_size
        padded = F.pad(images, (0, -w % p, 0, -h % p))
        out = self.encoder.forward_features(padded)
        tokens = self.encoder.norm(out.tokens)[:, self.encoder.patch_start :]
        masks = self.decoder(tokens, out.grid, all_depths)
        return [
            F.interpolate(m, size=padded.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w] for m in masks
        ]

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(encoder parameters, decoder parameters), for their different learning rates."""
        return list(self.encoder.parameters()), list(self.decoder.parameters())


def save_segmenter(path: Path, model: Segmenter, **extra) -> None:
    """The model's config, normalisation ("mean", "std") and weights, plus `extra` entries (epoch, ...)."""
    save_checkpoint(path, model.checkpoint(**extra))


def load_segmenter(path: Path, device: torch.device) -> Segmenter:
    """The model of a `save_segmenter` file, in eval mode on `device`, normalising as it was trained."""
    state = load_checkpoint(path)
    return Segmenter(SegmenterConfig(**state["config"]), weights=None).restore(state, device)


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
