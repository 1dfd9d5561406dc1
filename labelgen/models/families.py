"""The backbone families labelgen supports, in timm's manner: a private `_create_*` per family and a
registry of small builders, so a name outside it is refused before any work, naming the supported
families (`family_of`).

A family is a set of timm architectures whose blocks labelgen can trace (per-layer softmax
attention maps and attention outputs, `labelgen.models.vit`) exactly as the block's own forward
computes them, and whose prefix tokens it can replace by WeakTr's C class tokens:

- "vit": timm `VisionTransformer` with one CLS token and `Block`s: DeiT, AugReg, CLIP, plain ViT
  (timm modules `vision_transformer`, `deit`).
- "dinov2": the same class with LayerScale (`ls1`/`ls2`), with or without register tokens
  (`vit_small_patch14_dinov2`, `vit_small_patch14_reg4_dinov2`).
- "eva02": timm `Eva` with rotary position embedding inside attention (patch tokens only), q/v
  biases and SwiGLU MLP (`eva02_small_patch14_224`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
from torch import nn

from labelgen.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    covers: str  # what it covers, for messages and the README
    modules: tuple[str, ...]  # the timm modules that hold its architectures
    accepts: Callable[[str], bool]  # architecture name (no tag) -> whether it belongs here
    create: Callable[..., nn.Module]  # (arch, **kwargs) -> a timm model without classifier
    example: str  # an architecture of the family


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def _create_vit(arch: str, **kwargs: Any) -> nn.Module:
    """A timm VisionTransformer (ViT, DeiT, AugReg, CLIP, DINOv2) without classifier."""
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def _create_eva(arch: str, **kwargs: Any) -> nn.Module:
    """A timm Eva (EVA-02) without classifier. dynamic_img_size: its rotary embedding is built for any
    input grid (`rope.get_embed(shape=grid)`) instead of a cache of the default grid's."""
    return timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)


register_family(
    Family(
        "vit",
        "plain ViT / DeiT / AugReg / CLIP (timm VisionTransformer, one CLS token)",
        ("vision_transformer", "deit"),
        lambda arch: "dinov2" not in arch,
        _create_vit,
        "deit_small_patch16_224",
    )
)
register_family(
    Family(
        "dinov2",
        "DINOv2 with or without register tokens (timm VisionTransformer with LayerScale)",
        ("vision_transformer",),
        lambda arch: "dinov2" in arch,
        _create_vit,
        "vit_small_patch14_reg4_dinov2",
    )
)
register_family(
    Family(
        "eva02",
        "EVA-02 (timm Eva: rotary position embedding on patch tokens, SwiGLU MLP)",
        ("eva",),
        lambda arch: arch.startswith("eva02_"),
        _create_eva,
        "eva02_small_patch14_224",
    )
)


def supported() -> str:
    """One line naming every family, with an example architecture of each."""
    return "; ".join(f"{f.name}: {f.covers}, e.g. {f.example}" for f in FAMILIES.values())


def family_of(arch: str, setting: str = "backbone") -> Family:
    """The family of a timm architecture name. Raises `ConfigError` naming `setting` and the supported
    families for an unknown name or an architecture outside them (a ResNet, a Swin, ...)."""
    name = arch.split(".", 1)[0]
    if not timm.models.is_model(name):
        raise ConfigError(f"{setting}={arch!r} is not a timm architecture. Supported families: {supported()}")
    for family in FAMILIES.values():
        if timm.models.is_model_in_modules(name, family.modules) and family.accepts(name):
            return family
    raise ConfigError(
        f"{setting}={arch!r} is not a supported backbone (labelgen traces attention of these families "
        f"only). Supported families: {supported()}"
    )


def check_backbone(arch: str, setting: str) -> None:
    """Fail before any work when `arch` is outside the supported families or is built without what
    labelgen needs (a CLS token with the usual blocks): it is built on the meta device, which
    allocates nothing. Raises `ConfigError` naming `setting`."""
    from labelgen.models.vit import check_structure

    family = family_of(arch, setting)
    check_structure(family.create(arch, device="meta"), f"{setting}={arch!r}")
