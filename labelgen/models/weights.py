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

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from labelgen.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "LABELGEN_WEIGHTS_DIR"
_EXTENSIONS = (".safetensors", ".pth", ".pt", ".npz")


def create_vit(arch: str, weights: str | None, drop_path: float = 0.0) -> nn.Module:
    """A timm VisionTransformer without classifier (num_classes=0), with pretrained weights loaded.

    `weights=None` builds the bare architecture for a caller that loads its own checkpoint next.
    """
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, drop_path_rate=drop_path)
    except RuntimeError as e:
        raise ConfigError(f"unknown timm model {arch!r} ({e}); e.g. deit_small_patch16_224") from e
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
        return _from_hub(arch, weights.removeprefix("hub:"), drop_path)
    log.info("loading %s weights from %s", arch, path)
    if path.suffix == ".npz":
        model.load_pretrained(str(path))  # timm's loader for Google's big_vision/AugReg checkpoints
        return model
    model.load_state_dict(adapt_state_dict(read_state_dict(path), model), strict=True)
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

    A file path must exist. For "hub:<name>" with $LABELGEN_WEIGHTS_DIR set, the folder must hold a
    file for `arch` (`<arch>.safetensors`, `<arch>.<tag>.safetensors|pth|pt|npz`; the file named
    after the full hub name is preferred): a set folder without one is a mistake (the wrong model
    in the recipe, or the wrong folder), so it is an error naming what the folder holds, not a
    silent download. Raises `ConfigError`."""
    if not weights.startswith("hub:"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights file {path} not found; give a .safetensors/.pth/.npz file or hub:<timm name>")
        return path
    folder = weights_folder()
    if folder is None:
        return None
    name = weights.removeprefix("hub:")
    candidates = [p for p in sorted(folder.glob(f"{arch}*")) if p.suffix in _EXTENSIONS]
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
    """Fail before any work when `weights` of `arch` cannot be had: a missing file, a weights folder
    without the model, or a hub download that fails now (offline); a successful download lands in
    the hub cache, which the stage then reads. Raises `ConfigError` naming `setting`."""
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


def _from_hub(arch: str, name: str, drop_path: float) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, drop_path_rate=drop_path)
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


def adapt_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Named filter for strict loading: drop the ImageNet classifier, resample the position grid."""
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "head_dist."))}
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        prefix = model.num_prefix_tokens if not getattr(model, "no_embed_class", False) else 0
        grid = model.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(grid), num_prefix_tokens=prefix)
    return state
