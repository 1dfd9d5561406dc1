"""Every supported backbone family (labelgen.models.families) with random weights: the traced path
(per-layer attention maps and attention outputs, as export_cams and the AAF use them) reproduces each
block's own forward, class tokens included, on a non-square grid with C > 1 class tokens; register
tokens are kept and skipped; EVA-02's rotary embedding goes to the patch tokens only (a wrong
handling fails); weights in each source layout load strictly; unsupported families are refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import save_file

from labelgen.cli import main
from labelgen.config import load_recipe
from labelgen.errors import ConfigError
from labelgen.models import vit as vit_module
from labelgen.models.families import FAMILIES, check_backbone, family_of
from labelgen.models.pixels import pixel_stats
from labelgen.models.segmenter import Segmenter, SegmenterConfig
from labelgen.models.vit import Backbone, block_with_attention
from labelgen.models.weaktr import AdaptiveAttentionFusion, WeakTr, WeakTrConfig
from labelgen.models.weights import create_vit, resize_patch_kernel
from labelgen.pipeline.runner import run_pipeline
from tests.conftest import TINY_RECIPE, VOC_MINI, tiny_recipe

# (architecture, patch size, family): one of each kind the issue names; DINOv2 and EVA-02 also at the
# patch 16 of the paper's recipes (kernel resized from 14)
CASES = [
    ("deit_tiny_patch16_224", 0, "vit"),  # DeiT
    ("vit_small_patch16_384", 0, "vit"),  # AugReg (ViT-S†)
    ("vit_base_patch16_clip_224", 0, "vit"),  # CLIP (pre-norm, no patch bias)
    ("vit_small_patch14_dinov2", 16, "dinov2"),
    ("vit_small_patch14_reg4_dinov2", 0, "dinov2"),  # 4 register tokens
    ("eva02_small_patch14_224", 16, "eva02"),
    ("eva02_tiny_patch14_224", 0, "eva02"),
]
DEPTH = 2  # blocks: the same block types, a fraction of the time


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn anew, so that no path is near zero: LayerScale (1e-5 in DINOv2), the zero
    q/v biases of EVA-02 and the unit norms would let a wrong trace pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = "norm" in name
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if norm else 0.1) + (norm and name.endswith("weight")))
    return model.eval()


def backbone(arch: str, patch: int, num_prefix: int, seed: int = 0) -> Backbone:
    model = randomise(create_vit(arch, None, 0.0, patch, depth=DEPTH), seed)
    return Backbone(model, num_prefix, "timm").eval()


def trace_error(bb: Backbone, x: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    """Max |traced − own forward| over every block's output (all tokens) and its attention maps."""
    with torch.no_grad():
        tokens, grid = bb.embed(x)
        rope = bb.rotary(grid)
        worst, maps = 0.0, []
        for block in bb.blocks:
            own = block(tokens, rope=rope) if rope is not None else block(tokens)
            traced, weights, _ = block_with_attention(block, tokens, rope)
            worst = max(worst, float((traced - own).abs().max() / own.abs().max()))
            maps.append(weights)
            tokens = own
    return worst, maps


def grid_input(bb: Backbone, h: int, w: int, extra: int = 5) -> torch.Tensor:
    """A normalised-looking random input of an h×w patch grid plus `extra` remainder pixels per side."""
    return torch.randn(
        2, 3, h * bb.patch_size + extra, w * bb.patch_size + extra, generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize(("arch", "patch", "family"), CASES, ids=[f"{a}-p{p}" for a, p, _ in CASES])
def test_traced_blocks_reproduce_each_blocks_forward(arch, patch, family):
    """Non-square 5×7 grid, C = 3 class tokens: every block's traced output equals its own (timm)
    forward, class and register tokens included; attention rows sum to 1; the class tokens (copies
    of one CLS token and its position) stay equal to each other, which fails if any positional
    operation (EVA-02's RoPE) touches them."""
    assert family_of(arch).name == family
    bb = backbone(arch, patch, num_prefix=3)
    assert bb.patch_size == (patch or int(arch.split("patch")[1][:2]))
    x = grid_input(bb, 5, 7)
    err, maps = trace_error(bb, x)
    assert err < 1e-5, err
    n = 3 + bb.num_registers + 35
    assert len(maps) == DEPTH and maps[0].shape == (2, bb.num_heads, n, n)
    assert torch.allclose(maps[-1].sum(-1), torch.ones(2, bb.num_heads, n), atol=1e-5)
    with torch.no_grad():
        traced, fused = bb.forward_features(x, trace=True), bb.forward_features(x)
    assert torch.allclose(traced.tokens, fused.tokens, atol=1e-5 * float(fused.tokens.abs().max()))
    assert traced.grid == (5, 7) and len(traced.attn_outputs) == DEPTH
    cls = traced.tokens[:, :3]
    assert float((cls - cls[:, :1]).abs().max()) < 1e-5 * float(cls.abs().max())


@pytest.mark.parametrize(("arch", "patch", "family"), CASES, ids=[f"{a}-p{p}" for a, p, _ in CASES])
def test_one_class_token_equals_timms_forward_features(arch, patch, family):
    """With one class token and timm's own position resampling, the backbone is timm's model:
    its normed tokens equal the model's forward_features (at the pretrained grid for ViTs, whose
    timm model takes only its own size; at a non-square grid for EVA-02, whose model takes any)."""
    model = randomise(create_vit(arch, None, 0.0, patch, depth=DEPTH))
    bb = Backbone(model, 1, "timm").eval()
    h, w = (3, 5) if family == "eva02" else bb.grid
    x = torch.randn(1, 3, h * bb.patch_size, w * bb.patch_size)
    with torch.no_grad():
        ours = model.norm(bb.forward_features(x, trace=True).tokens)  # timm's own final norm (Eva: Identity)
        theirs = model.forward_features(x)
    assert torch.allclose(ours, theirs, atol=1e-4 * float(theirs.abs().max()))


@pytest.mark.parametrize("wrong", ["class_tokens_rotated", "no_rope"])
def test_eva02_with_wrong_rope_fails_the_tracing_test(wrong, monkeypatch):
    """The tracing test catches a traced path that rotates the class tokens too, or not at all."""
    bb = backbone("eva02_small_patch14_224", 16, num_prefix=3)
    x = grid_input(bb, 5, 7)
    assert trace_error(bb, x)[0] < 1e-5
    right = vit_module.apply_rope

    def rotates_class_tokens(t, rope, num_prefix, half):  # the reference's `[:, :, 1:]` with C class tokens
        return right(t, torch.cat([rope[: num_prefix - 1], rope]), 1, half)

    mistakes = {"class_tokens_rotated": rotates_class_tokens, "no_rope": lambda t, rope, num_prefix, half: t}
    monkeypatch.setattr(vit_module, "apply_rope", mistakes[wrong])
    assert trace_error(bb, x)[0] > 1e-2


def test_register_tokens_are_neither_class_nor_patch_tokens():
    """DINOv2 with 4 registers: token order [C class][4 registers][patches]; the CAM head reads the
    patches only, the cross-attention rows are the class tokens, its columns and the affinity the
    patches; the lean inference path gives the training forward's maps; Segmenter drops the
    registers too."""
    torch.manual_seed(0)
    model = WeakTr(WeakTrConfig("vit_small_patch14_reg4_dinov2", 3), "none")
    model.backbone = backbone("vit_small_patch14_reg4_dinov2", 0, num_prefix=3)
    model.fusion = AdaptiveAttentionFusion(DEPTH * 6, 64, 4, 8)  # K = L·H of the 2-block backbone
    model.eval()
    bb = model.backbone
    assert (bb.num_registers, bb.patch_start) == (4, 7)
    images = torch.randint(0, 256, (1, 3, 4 * 14 + 3, 6 * 14), dtype=torch.uint8)
    with torch.no_grad():
        out = model(images)
        x = model.normalise(images)
        trace = bb.forward_features(x, trace=True)
    assert out.fine_cam.shape == (1, 3, 4, 6)
    head = model.head(trace.tokens[:, 7:].transpose(1, 2).reshape(1, 384, 4, 6))
    assert torch.allclose(out.coarse_logits, head.mean(dim=(2, 3)), atol=1e-6)
    for kind in ("fine", "fused", "coarse"):
        assert torch.equal(model.cams(images, kind, 0), getattr(out, f"{kind}_cam"))
    seg = Segmenter(SegmenterConfig("vit_small_patch14_reg4_dinov2", 4), None)
    seg.encoder = backbone("vit_small_patch14_reg4_dinov2", 0, num_prefix=1)
    with torch.no_grad():
        (logits,) = seg(images)
    assert logits.shape == (1, 4, 59, 84)


def test_models_take_uint8_pixels_only():
    """A float input (normalised once already, or raw 0..1) cannot be passed: TypeError; the uint8 path
    equals the internal normalised one."""
    torch.manual_seed(0)
    model = WeakTr(WeakTrConfig("deit_tiny_patch16_224", 2), None).eval()
    images = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8)
    normalised = model.normalise(images)
    for wrong in (normalised, images.float() / 255, images.float()):
        with pytest.raises(TypeError, match="takes uint8 pixels"):
            model(wrong)
        with pytest.raises(TypeError, match="takes uint8 pixels"):
            model.cams(wrong, "fine", 0)
    with pytest.raises(ValueError, match="B×3×H×W"):
        model(images[0])
    with torch.no_grad():
        assert torch.equal(model(images).fine_cam, model._forward(normalised).fine_cam)
    seg = Segmenter(SegmenterConfig("deit_tiny_patch16_224", 3), None).eval()
    with pytest.raises(TypeError, match="takes uint8 pixels"):
        seg(seg.normalise(images))


def test_normalisation_follows_the_weights_named():
    assert pixel_stats("vit_small_patch16_384", "hub:vit_small_patch16_384.augreg_in21k_ft_in1k") == (
        (0.5,) * 3,
        (0.5,) * 3,
    )
    clip = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    assert pixel_stats("eva02_small_patch14_224", "hub:eva02_small_patch14_224.mim_in22k") == clip
    assert pixel_stats("eva02_small_patch14_224", "/some/eva02_S_pt_in21k_p14.pt") == clip  # a file: its architecture's
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert pixel_stats("vit_small_patch14_reg4_dinov2", "none") == imagenet
    assert pixel_stats("vit_base_patch16_clip_224", "hub:vit_base_patch16_clip_224.openai") == clip
    assert pixel_stats("deit_small_patch16_224", "hub:deit_small_patch16_224.fb_in1k", "inception") == (
        (0.5,) * 3,
        (0.5,) * 3,
    )


def test_unsupported_families_are_refused_naming_the_supported_ones():
    for arch in ("resnet50", "swin_tiny_patch4_window7_224"):
        with pytest.raises(
            ConfigError, match=r"train_cam.backbone='.*' is not a supported backbone.*vit: .*dinov2: .*eva02: "
        ):
            family_of(arch, "train_cam.backbone")
    with pytest.raises(ConfigError, match="is not a timm architecture"):
        family_of("vit_smal_patch16_224", "x.backbone")
    with pytest.raises(ConfigError, match="no CLS token"):  # a ViT without class token (SigLIP: attention pooling)
        check_backbone("vit_base_patch16_siglip_224", "train_decoder.backbone")
    assert set(FAMILIES) == {"vit", "dinov2", "eva02"}


@pytest.mark.parametrize(
    "setting", ["train_cam.backbone=resnet50", "train_decoder.backbone=swin_tiny_patch4_window7_224"]
)
def test_dry_run_refuses_an_unsupported_backbone(tmp_path, setting):
    args = ["run", "full", "--dataset", "demo", "--recipe", str(TINY_RECIPE), "--run-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(
        main, [*args, "--set", setting, "--set", setting.split(".")[0] + ".weights=none", "--dry-run"]
    )
    assert result.exit_code == 2, result.output
    assert f"{setting.split('=')[0]}=" in result.output and "Supported families: vit:" in result.output
    assert not (tmp_path / "r" / "index").exists()


# ---- weight files in their source layouts ----------------------------------------------------------


def _dinov2_layout(model: torch.nn.Module, cls_pos: torch.Tensor) -> dict[str, torch.Tensor]:
    """A timm DINOv2 state dict written as facebookresearch/dinov2 saves it: `mask_token`, and for
    register models `register_tokens`, a CLS token without its position and `pos_embed` with a CLS row."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.randn(1, model.embed_dim)
    if "reg_token" in state:
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - cls_pos
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    return state


def _eva_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm EVA-02 state dict written as baaivision/EVA's pretraining saves it (eva02_*_pt_*_p14.pt):
    SwiGLU `mlp.w12`/`mlp.w3`, the final `norm`, rotary tables at the model and in every attention,
    `mask_token` and the MIM `lm_head`."""
    state = {}
    for k, v in model.state_dict().items():
        k = k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.").replace("fc_norm.", "norm.")
        state[k] = v.clone()
    state["mask_token"] = torch.randn(1, 1, model.embed_dim)
    state["lm_head.weight"], state["lm_head.bias"] = torch.randn(512, model.embed_dim), torch.randn(512)
    rope = {"freqs_cos": torch.randn(256, 64), "freqs_sin": torch.randn(256, 64)}
    for i in range(len(model.blocks)):
        state.update({f"blocks.{i}.attn.rope.{k}": v.clone() for k, v in rope.items()})
    state.update({f"rope.{k}": v.clone() for k, v in rope.items()})
    return state


@pytest.mark.parametrize(
    "arch", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2", "eva02_small_patch14_224"]
)
@pytest.mark.parametrize("patch", [0, 16])
def test_weight_files_in_their_source_layout_load_strictly(tmp_path, caplog, arch, patch):
    """A random timm model written in the original layout (.pth) loads into labelgen's model with
    every tensor equal (CLS position folded back for DINOv2 registers); at patch 16 the kernel is the
    reference's bicubic resize and the position table keeps its pretrained grid; the log names what
    was converted or left out. A file with a tensor too many, or one missing, is refused."""
    torch.manual_seed(0)
    source = randomise(create_vit(arch, None, depth=DEPTH))
    cls_pos = torch.randn(1, 1, source.embed_dim)
    state = _eva_layout(source) if arch.startswith("eva02") else _dinov2_layout(source, cls_pos)
    path = tmp_path / "weights.pth"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.INFO, logger="labelgen.models.weights"):
        loaded = create_vit(arch, str(path), 0.0, patch, depth=DEPTH)
    assert "mask_token" in caplog.text and "tensors loaded" in caplog.text
    want, got = source.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    for k in want:
        expected = resize_patch_kernel(want[k], 16) if (patch and k == "patch_embed.proj.weight") else want[k]
        assert torch.allclose(got[k], expected, atol=1e-6), k
    assert loaded.patch_embed.patch_size[0] == (patch or 14)
    torch.save({"model": {**state, "blocks.0.attn.extra": torch.zeros(3)}}, path)
    with pytest.raises(ConfigError, match=r"unexpected \['blocks.0.attn.extra'\]"):
        create_vit(arch, str(path), depth=DEPTH)
    state.pop("blocks.1.norm1.weight")
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match=r"missing \['blocks.1.norm1.weight'\]"):
        create_vit(arch, str(tmp_path / "w.safetensors"), depth=DEPTH)


def test_patch_kernel_resize_is_the_references_bicubic():
    kernel = torch.randn(4, 3, 14, 14)
    want = F.interpolate(kernel, size=(16, 16), mode="bicubic", align_corners=False)  # utils.py:checkpoint_filter_fn
    assert torch.equal(resize_patch_kernel(kernel, 16), want)
    assert resize_patch_kernel(kernel, 14) is kernel


# ---- golden output: the reference's EVA-02 block ---------------------------------------------------


def _reference_rope(head_dim: int, grid: int, pt_seq_len: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """hustvl/WeakTr OnlineRetraining/segm/model/rope.py:VisionRotaryEmbeddingFast(dim=head_dim // 2,
    pt_seq_len=16, ft_seq_len=grid), re-expressed: (freqs_cos, freqs_sin), grid², head_dim."""
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(grid) / grid * pt_seq_len
    freqs = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # '... n -> ... (n r)', r=2
    both = torch.cat([freqs[:, None, :].expand(grid, grid, -1), freqs[None, :, :].expand(grid, grid, -1)], dim=-1)
    both = both.reshape(-1, both.shape[-1])
    return both.cos(), both.sin()


def _reference_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """rope.py:rotate_half: pairs (x0, x1) -> (-x1, x0)."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def reference_eva02_block(p: dict[str, torch.Tensor], x: torch.Tensor, heads: int, grid: int) -> torch.Tensor:
    """segm/model/blocks.py:EVA02Block.forward (= Block.forward with EVA02Attention), re-expressed in
    plain torch from its source (hustvl/WeakTr 3457ad3): apex FusedLayerNorm -> LayerNorm eps 1e-5
    (its default), xformers SwiGLU -> silu(x W1) ⊙ (x W2) W3 with W1, W2 the halves of w12; no layer
    scale; the rotary embedding on tokens 1: (one CLS token), frequencies for a grid×grid crop."""
    b, n, c = x.shape
    y = F.layer_norm(x, (c,), p["norm1.weight"], p["norm1.bias"], eps=1e-5)
    qkv_bias = torch.cat((p["attn.q_bias"], torch.zeros_like(p["attn.v_bias"]), p["attn.v_bias"]))
    qkv = (y @ p["attn.qkv.weight"].T + qkv_bias).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    cos, sin = _reference_rope(c // heads, grid)
    q = torch.cat((q[:, :, :1], q[:, :, 1:] * cos + _reference_rotate_half(q[:, :, 1:]) * sin), -2)
    k = torch.cat((k[:, :, :1], k[:, :, 1:] * cos + _reference_rotate_half(k[:, :, 1:]) * sin), -2)
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, c) @ p["attn.proj.weight"].T + p["attn.proj.bias"]
    x = x + out
    y = F.layer_norm(x, (c,), p["norm2.weight"], p["norm2.bias"], eps=1e-5)
    x1, x2 = (y @ p["mlp.w12.weight"].T + p["mlp.w12.bias"]).chunk(2, dim=-1)
    return x + (F.silu(x1) * x2) @ p["mlp.w3.weight"].T + p["mlp.w3.bias"]


@pytest.mark.parametrize("grid", [30, 12])
def test_eva02_block_matches_the_reference_block(grid):
    """labelgen's traced EVA-02 block (timm EvaBlock, patch 16, Segmenter's LayerNorm eps 1e-5, one
    CLS token) against the reference's block on the same random weights, at the 30×30 grid of its
    480 px crop (and 12×12): the same output. The reference's key names are timm's except the
    SwiGLU's w12/w3 (timm mlp.fc1/fc2)."""
    torch.manual_seed(0)
    model = randomise(create_vit("eva02_small_patch14_224", None, 0.0, 16, depth=1))
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-5
    bb = Backbone(model, 1, "bilinear").eval()
    block = bb.blocks[0]
    p = {k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3."): v for k, v in block.state_dict().items()}
    x = torch.randn(1, 1 + grid * grid, 384)
    with torch.no_grad():
        ours, _, _ = block_with_attention(block, x, bb.rotary((grid, grid)))
        want = reference_eva02_block(p, x, 6, grid)
    np.testing.assert_allclose(ours.numpy(), want.numpy(), atol=2e-5 * float(want.abs().max()), rtol=0)


# ---- the paper's rows: recipes, and each family end to end ----------------------------------------

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
ROWS = {  # row -> the [train_decoder] settings that differ from the DeiT-S recipe of its data set
    "vit_s": {
        "backbone": "vit_small_patch16_384",
        "weights": "hub:vit_small_patch16_384.augreg_in21k_ft_in1k",
        "clip_start": 1.0,
    },
    "dinov2_s": {
        "backbone": "vit_small_patch14_dinov2",
        "weights": "hub:vit_small_patch14_dinov2.lvd142m",
        "patch_size": 16,
    },
    "eva02_s": {
        "backbone": "eva02_small_patch14_224",
        "weights": "hub:eva02_small_patch14_224.mim_in22k",
        "patch_size": 16,
    },
}


@pytest.mark.parametrize("dataset", ["voc", "coco"])
@pytest.mark.parametrize("row", sorted(ROWS))
def test_row_recipes_differ_from_their_base_in_the_decoder_only(dataset, row):
    """pipelines/<dataset>_<row>.toml is <dataset>.toml (the DeiT-S row) with the row's stage-2
    encoder; each loads, and its normalisation is the weights' (ViT-S†: 0.5)."""
    base = load_recipe(PIPELINES / f"{dataset}.toml").to_dict()
    recipe = load_recipe(PIPELINES / f"{dataset}_{row}.toml")
    got = recipe.to_dict()
    assert {s: v for s, v in got.items() if s != "train_decoder"} == {
        s: v for s, v in base.items() if s != "train_decoder"
    }
    changed = {k: v for k, v in got["train_decoder"].items() if base["train_decoder"][k] != v}
    assert changed == ROWS[row]
    dec = recipe["train_decoder"]
    family_of(dec.backbone)
    if row == "vit_s":
        assert pixel_stats(dec.backbone, dec.weights, dec.normalisation) == ((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("row", sorted(ROWS))
def test_row_recipes_dry_run(tmp_path, row):
    """`labelgen run full --recipe pipelines/voc_<row>.toml --dry-run` shows the plan and the row's
    settings (the weights set to none: no download in tests)."""
    args = ["run", "train_decoder", "--dataset", "voc", "--recipe", str(PIPELINES / f"voc_{row}.toml")]
    args += ["--data-root", str(VOC_MINI), "--run-dir", str(tmp_path / "r"), "--dry-run"]
    args += ["--set", "train_cam.weights=none", "--set", "train_decoder.weights=none"]
    args += ["--set", 'dataset.train_split="train"', "--set", 'dataset.val_split=""']
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "train_decoder" in result.output and ROWS[row]["backbone"] in result.output


E2E = [  # (train_cam backbone, patch, train_decoder backbone, patch): a non-DeiT family in each stage
    ("vit_tiny_patch16_384", 0, "eva02_tiny_patch14_224", 16),  # AugReg ViT-Ti CAMs, EVA-02 decoder
    ("eva02_tiny_patch14_224", 16, "vit_small_patch14_reg4_dinov2", 0),  # EVA-02 CAMs, DINOv2+registers decoder
    ("vit_small_patch14_dinov2", 16, "vit_base_patch16_clip_224", 0),  # DINOv2 CAMs, CLIP decoder
]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 4-7 min on 2 idle cores; far more on a shared machine
@pytest.mark.parametrize(("cam", "cam_patch", "dec", "dec_patch"), E2E, ids=[f"{c}+{d}" for c, _, d, _ in E2E])
def test_each_family_runs_the_tiny_demo_end_to_end(tmp_path, client, cam, cam_patch, dec, dec_patch):
    """`run full` of the tiny demo with random weights (minutes each on 2 busy cores: slow suite)."""
    overrides = [f"train_cam.backbone={cam}", "train_cam.weights=none", f"train_cam.patch_size={cam_patch}"]
    overrides += [
        f"train_decoder.backbone={dec}",
        "train_decoder.weights=none",
        f"train_decoder.patch_size={dec_patch}",
    ]
    outputs = run_pipeline(tiny_recipe(*overrides), tmp_path / "run", "full", client)
    report = next((tmp_path / "run" / "evaluate").glob("*/report.md"))
    assert "mIoU" in report.read_text() and outputs


def _augreg_npz(model: torch.nn.Module, path: Path) -> None:
    """A timm ViT written as Google's vision_transformer/AugReg `.npz` (the files of
    `vit_small_patch16_384`'s 2021 release: Transformer/encoderblock_<i>/..., HWIO kernels)."""
    s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d, heads = model.embed_dim, model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": s["patch_embed.proj.bias"],
        "cls": s["cls_token"],
        "Transformer/posembed_input/pos_embedding": s["pos_embed"],
        "Transformer/encoder_norm/scale": s["norm.weight"],
        "Transformer/encoder_norm/bias": s["norm.bias"],
    }
    for i in range(len(model.blocks)):
        b, o = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = o + "MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            w[mha + name + "/kernel"] = s[b + "attn.qkv.weight"][j * d : (j + 1) * d].T.reshape(d, heads, -1)
            w[mha + name + "/bias"] = s[b + "attn.qkv.bias"][j * d : (j + 1) * d].reshape(heads, -1)
        w[mha + "out/kernel"] = s[b + "attn.proj.weight"].reshape(d, heads, -1).transpose(1, 2, 0)
        w[mha + "out/bias"] = s[b + "attn.proj.bias"]
        for norm, ln in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            w[f"{o}{ln}/scale"], w[f"{o}{ln}/bias"] = s[b + norm + ".weight"], s[b + norm + ".bias"]
        for r in range(2):
            w[f"{o}MlpBlock_3/Dense_{r}/kernel"] = s[f"{b}mlp.fc{r + 1}.weight"].T
            w[f"{o}MlpBlock_3/Dense_{r}/bias"] = s[f"{b}mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def test_augreg_npz_loads_through_timms_reader(tmp_path):
    """ViT-S†'s weights come as an AugReg `.npz`: a random model written in that layout loads back
    with every tensor equal."""
    torch.manual_seed(0)
    source = randomise(create_vit("vit_tiny_patch16_384", None, depth=DEPTH))
    _augreg_npz(source, tmp_path / "augreg.npz")
    loaded = create_vit("vit_tiny_patch16_384", str(tmp_path / "augreg.npz"), depth=DEPTH)
    for k, v in source.state_dict().items():
        assert torch.allclose(loaded.state_dict()[k], v, atol=1e-6), k
