"""Pretrained ViT weights: a timm hub name, a local file, or none (loudly warned).

"hub:<timm name>" first looks in $LABELGEN_WEIGHTS_DIR for a file named after the architecture
(`<arch>.safetensors` or `<arch>.<tag>.safetensors|pth|npz`), so offline machines and CI use a local
copy; otherwise timm downloads it. Loading is strict: the only keys we drop are the ImageNet
classifier's (`head.*`), and position embeddings are resampled to the model's grid.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from labelgen.errors import ConfigError
from labelgen.models.families import check_backbone, family_of

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "LABELGEN_WEIGHTS_DIR"
_EXTENSIONS = (".safetensors", ".pth", ".pt", ".npz")


def create_vit(
    arch: str, weights: str | None, drop_path: float = 0.0, patch_size: int = 0, **architecture: Any
) -> nn.Module:
    """A timm model of a supported family (`labelgen.models.families`) without classifier, with
    pretrained weights loaded strictly (what was renamed or dropped is logged).

    `patch_size` 0 keeps the architecture's own; another size (16 for DINOv2/EVA-02 in the paper's
    recipes) builds the model with that patch, on an input size that keeps the pretrained position
    grid, and resizes the pretrained kernel to it (`resize_patch_kernel`, as the reference's
    checkpoint filter). `weights=None` builds the bare architecture for a caller that loads its own
    checkpoint next. `architecture`: timm model arguments (`depth=2`: a smaller model of the same
    family, as tests build). Raises `ConfigError` for an unsupported architecture or unloadable weights.
    """
    family = family_of(arch)
    native = family.create(arch, device="meta", **architecture).patch_embed
    kwargs = {"drop_path_rate": drop_path, **architecture}
    if patch_size and patch_size != native.patch_size[0]:
        kwargs.update(patch_size=patch_size, img_size=tuple(g * patch_size for g in native.grid_size))
    model = family.create(arch, **kwargs)
    if weights is None:
        return model
    if weights == "none":
        log.warning(
            "!!! %s starts from RANDOM weights: WeakTr needs ImageNet-pretrained weights for useful CAMs; "
            "set weights to hub:<timm name> or a file",
            arch,
        )
        return model
    path = resolve_weights_file(weights, arch)
    if path is None:
        source = _from_hub(arch, weights.removeprefix("hub:")).state_dict()
        where = weights
    elif path.suffix == ".npz":  # Google's big_vision/AugReg checkpoints: timm's reader, native patch size
        native_model = family.create(arch, **architecture)
        native_model.load_pretrained(str(path))
        source, where = native_model.state_dict(), str(path)
    else:
        source, where = read_state_dict(path), str(path)
    log.info("loading %s weights from %s", arch, where)  # where a run's weights came from, in its log
    load_into(model, source, where)
    return model


def weights_folder() -> Path | None:
    """The folder $LABELGEN_WEIGHTS_DIR names, or None when it is not set. Raises `ConfigError` when
    it names no folder (one line, whichever stage asks)."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    if not Path(folder).is_dir():
        raise ConfigError(
            f"{WEIGHTS_DIR_ENV}={folder} is not a folder; point it at the folder that holds the weights files "
            "(<timm architecture>.safetensors), or unset it to download from the timm hub"
        )
    return Path(folder)


def resolve_weights_file(weights: str, arch: str) -> Path | None:
    """The local file for a weights spec, or None when it must come from the hub.

    A file path must exist. A hub name must name `arch` ("<arch>.<tag>"). For "hub:<name>" with
    $LABELGEN_WEIGHTS_DIR set, the folder must hold a
    file for `arch` (`<arch>.safetensors`, `<arch>.<tag>.safetensors|pth|pt|npz`; the file named
    after the full hub name is preferred): a set folder without one is a mistake (the wrong model
    in the recipe, or the wrong folder), so it is an error naming what the folder holds, not a
    silent download. Raises `ConfigError`."""
    if not weights.startswith("hub:"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights file {path} not found; give a .safetensors/.pth/.npz file or hub:<timm name>")
        return path
    name = weights.removeprefix("hub:")
    named_arch = name.partition(".")[0]  # timm's "<architecture>.<pretrained tag>"
    if named_arch != arch:  # else a folder's file (found by `arch`) or the tag's statistics would not match
        raise ConfigError(
            f"weights {weights} are for architecture {named_arch}, not the backbone {arch}; set the weights to "
            f"hub:{arch}.<tag> (timm.list_pretrained('{arch}*') lists the tags), a file of {arch}, or none"
        )
    folder = weights_folder()
    if folder is None:
        return None
    # `<arch>.*` only: a longer architecture name that starts the same (vit_base_patch16_224_miil) is another model
    candidates = [p for p in sorted(folder.glob(f"{arch}.*")) if p.suffix in _EXTENSIONS]
    exact = [p for p in candidates if p.name.startswith(name + ".")]
    if exact or candidates:
        return (exact or candidates)[0]
    held = sorted(p.name for p in folder.glob("*") if p.suffix in _EXTENSIONS)
    raise ConfigError(
        f"{WEIGHTS_DIR_ENV}={folder} has no weights file for {arch} (wanted by {weights}); it holds "
        f"{', '.join(held) or 'no weights files'}. Put {arch}.safetensors there, point {WEIGHTS_DIR_ENV} at the "
        "folder that has it, or unset it to download from the timm hub"
    )


def check_weights(arch: str, weights: str, setting: str) -> None:
    """Fail before any work when `arch` is not a supported backbone (named as the `.backbone` setting
    beside `setting`, with the supported families) or `weights` of `arch` cannot be had: a missing
    file, a weights folder without the model, or a hub download that fails now (offline); a
    successful download lands in the hub cache, which the stage then reads. Raises `ConfigError`
    naming `setting`."""
    check_backbone(arch, setting.rpartition(".")[0] + ".backbone")
    if weights == "none":
        return
    if weights.startswith("hub:"):
        weights_folder()  # a wrong folder is not this setting's fault: named without it
    try:
        if resolve_weights_file(weights, arch) is not None:
            return
    except ConfigError as e:
        raise ConfigError(f"{setting}: {e}") from None
    name = weights.removeprefix("hub:")
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return  # weights timm fetches by URL: the stage downloads them (and names the error) itself
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline = (
        f"Offline? Put {arch}.safetensors in a folder and set {WEIGHTS_DIR_ENV}=that folder, "
        f"or set {setting} to a file path"
    )
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            hf_hub_download(cfg.hf_hub_id, filename)
            return
        # LocalEntryNotFoundError (offline, nothing cached) subclasses EntryNotFoundError (the hub has
        # no such file, so the next name is tried): it must be caught first
        except LocalEntryNotFoundError:
            raise ConfigError(
                f"{setting}={weights}: cannot reach the timm hub and nothing is cached. {offline}"
            ) from None
        except EntryNotFoundError:
            continue
        except Exception as e:  # network and HTTP errors come in many types
            raise ConfigError(
                f"{setting}={weights}: cannot get the weights from the timm hub ({type(e).__name__}). {offline}"
            ) from None
    raise ConfigError(f"{setting}={weights}: the timm hub repository {cfg.hf_hub_id} holds no weights file. {offline}")


def _from_hub(arch: str, name: str) -> nn.Module:
    """The timm model `name` with its hub weights, at the architecture's own patch size."""
    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:  # network errors come in many types (OSError, HTTP, hub errors)
        raise ConfigError(
            f"could not get pretrained weights {name!r} from the timm hub ({type(e).__name__}: {e}). "
            f"Offline? Put {arch}.safetensors in a folder and set {WEIGHTS_DIR_ENV}=that folder, "
            "or set the stage's weights to a file path"
        ) from e


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth checkpoint (torch.load with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for a damaged or foreign file
        raise ConfigError(f"{path}: not a loadable weights file ({type(e).__name__}: {e})") from e
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: expected a dict of tensors (a state dict)")
    return state


def resize_patch_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """A patch-embedding kernel (D, 3, p, p) resized to (D, 3, size, size) as the reference does for
    DINOv2 and EVA-02 (OnlineRetraining/segm/model/utils.py:checkpoint_filter_fn): bicubic
    interpolation of the kernel itself (align_corners False), not timm's pseudo-inverse
    `resample_patch_embed`."""
    if kernel.shape[-1] == size and kernel.shape[-2] == size:
        return kernel
    return F.interpolate(kernel.float(), size=(size, size), mode="bicubic", align_corners=False).to(kernel.dtype)


def to_timm_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict in any layout timm's filter of the model's family reads (timm's own; DINOv2's
    `.pth`: `register_tokens`, `mask_token`, `w12/w3`; the original EVA-02 files: `mlp.w12/w3`,
    `rope.*`, `mask_token`, `lm_head`) in timm's names for `model`. The patch kernel is resized first
    (`resize_patch_kernel`), so timm's filter only renames and resamples position grids."""
    from timm.models import eva, vision_transformer

    state = dict(state)
    kernel = model.patch_embed.proj.weight
    for key in [k for k in state if k.endswith("patch_embed.proj.weight")]:
        state[key] = resize_patch_kernel(state[key], kernel.shape[-1])
    fn = eva.checkpoint_filter_fn if isinstance(model, eva.Eva) else vision_transformer.checkpoint_filter_fn
    return fn(state, model)


# the ImageNet classifier of a pretrained file, never part of a backbone without classifier
_CLASSIFIER = ("head.", "head_dist.", "fc_norm.")


def load_into(model: nn.Module, source: dict[str, torch.Tensor], where: str) -> None:
    """Load `source` (any layout `to_timm_layout` reads) into `model` strictly: every model tensor must
    come from it, and of its tensors only a classifier (`head.*`, `fc_norm.*` where the model has
    none) may be left out. Logs what was renamed and what was dropped. Raises `ConfigError`."""
    state = to_timm_layout(source, model)
    own = model.state_dict()
    dropped = sorted(k for k in state if k not in own and k.startswith(_CLASSIFIER))
    state = {k: v for k, v in state.items() if k not in dropped}
    renamed_from = sorted(set(source) - set(state) - set(dropped))
    log.info(
        "%s: %d tensors loaded into %s; %d source keys renamed, converted or left out by timm's filter "
        "(%s); classifier dropped (%s)",
        where, len(state), type(model).__name__, len(renamed_from), ", ".join(renamed_from) or "none",
        ", ".join(dropped) or "none",
    )  # fmt: skip
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ConfigError(
            f"{where}: not a {type(model).__name__} of this architecture: "
            f"missing {missing[:8] or 'none'}, unexpected {unexpected[:8] or 'none'}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:4]] or 'none'}"
        )
    model.load_state_dict(state, strict=True)
