"""Golden values of the WeakTr reference code (hustvl/WeakTr 3457ad3), from ../shared/parity: fixed
weights and inputs, and the reference's outputs for them (its README says how each was made).

Tolerances are float rounding: each comment states the max difference measured here. Each test fails
with labelgen's former behaviour (the setting named in the test flipped to its non-default value)."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from labelgen.models.cam_inference import multiscale_cams
from labelgen.models.losses import GradientClippingLoss
from labelgen.models.segmenter import MaskTransformer, Segmenter, SegmenterConfig
from labelgen.models.vit import resample_patch_pos
from labelgen.models.weaktr import WeakTr, WeakTrConfig, fuse_attention, pool_head_features, stack_pooled, weaktr_loss
from tests.conftest import COCO128, SHARED

PARITY = SHARED / "parity"
ARCH = "deit_tiny_patch16_224"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _reference_state_dict(path) -> dict[str, torch.Tensor]:
    """The reference stage-1 state dict in labelgen's names: its 20 class tokens and their positions
    are the prefix tokens, the 14×14 position grid the patch positions; the AAF layers are renamed."""
    renames = {
        "adaptive_attention_fusion.attn_feat_ffn.": "fusion.squeeze.",
        "adaptive_attention_fusion.attn_head_ffn.": "fusion.excite.",
        "head.": "head.",
    }
    ref = load_file(path)
    pos = ref.pop("pos_embed")
    out = {
        "backbone.prefix_tokens": ref.pop("cls_token"),
        "backbone.prefix_pos": pos[:, :20],
        "backbone.patch_pos": pos[:, 20:],
    }
    for key, value in ref.items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        out[renames[prefix] + key.removeprefix(prefix) if prefix else "backbone." + key] = value
    return out


@pytest.fixture(scope="module")
def stage1() -> WeakTr:
    """The reference stage-1 model, with labelgen's default settings."""
    model = WeakTr(WeakTrConfig(ARCH, num_fg_classes=20), None).eval()
    model.load_state_dict(_reference_state_dict(PARITY / "stage1_weights.safetensors"), strict=True)
    return model


def _close(got, want, rel: float, name: str) -> None:
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * np.abs(want).max(), err_msg=name)


def test_stage1_outputs_match_the_reference(stage1):
    """Every stage-1 output of stage1_outputs.npz (224×224, so no position resampling). Measured max
    difference relative to the array's max: 1.8e-6 (coarse_cam; the reference's own float32 rounding
    is 4.2e-6), the AAF weights and cls logits 0, the other logits and losses ≤ 2.2e-7. No setting
    changes these (labelgen agreed before; the head init is overwritten by the loaded weights)."""
    golden = np.load(PARITY / "stage1_outputs.npz")
    model = stage1
    x = torch.from_numpy(golden["input_224"])
    c = 20
    with torch.no_grad():
        out = model._forward(x)  # the golden input is already normalised: the model's internal path
        trace = model.backbone.forward_features(x, trace=True)
        weights = model.fusion(stack_pooled([pool_head_features(o, 3) for o in trace.attn_outputs]))
        fused_attn = fuse_attention(trace.attn_maps, weights)
        head_out = model._cam_logits(trace.tokens, trace.grid)
        loss, parts = weaktr_loss(out, torch.from_numpy(golden["targets"]))
    got = {
        **{name: getattr(out, name) for name in ("cls_logits", "coarse_logits", "fine_logits")},
        **{name: getattr(out, name) for name in ("coarse_cam", "fused_cam", "fine_cam")},
        "coarse_head_out": head_out,
        "aaf_weights": weights,
        "cross_attn": fused_attn[:, :c, c:].reshape(2, c, 14, 14),
        "patch_attn": fused_attn[:, c:, c:],
        "loss_cls": parts["cls"],
        "loss_coarse": parts["coarse"],
        "loss_fine": parts["fine"],
        "loss_total": loss,
    }
    for name, value in got.items():
        _close(value, golden[name], 1e-5, name)
    for kind in ("coarse", "fused", "fine"):  # the lean inference path: the same bits
        assert torch.equal(model._cams(x, kind, 0), getattr(out, f"{kind}_cam"))


def test_stage1_head_init_is_pytorch_default():
    """The reference's 3×3 head keeps nn.Conv2d's own init (kaiming-uniform: std 1/sqrt(3·9·D) = 0.0139
    for D = 192, uniform bias in ±1/sqrt(9·D) = ±0.024), as in stage1_weights (std 0.0139).
    train_cam.head_init = "trunc_normal" (std 0.02, zero bias) fails both checks."""
    ref = load_file(PARITY / "stage1_weights.safetensors")
    torch.manual_seed(0)
    head = WeakTr(WeakTrConfig(ARCH, num_fg_classes=20), None).head.requires_grad_(False)
    bound = 1 / (9 * 192) ** 0.5
    assert abs(float(head.weight.std()) - float(ref["head.weight"].std())) < 1e-3
    assert float(head.weight.abs().max()) <= bound  # kaiming-uniform (a = sqrt 5): bound 1/sqrt(fan_in)
    assert 0 < float(head.bias.abs().max()) <= bound and float(head.bias.abs().min()) > 0


@pytest.mark.parametrize("grid", [(30, 40), (36, 48), (26, 40), (31, 48)])
def test_resampled_position_embeddings_match_the_reference(stage1, grid):
    """The patch part of WeakTr.interpolate_pos_encoding for the four export views (cams_ms.npz):
    bit-identical (measured 0). train_cam.pos_embed_resample = "timm" differs by up to 0.19."""
    want = np.load(PARITY / "cams_ms.npz")[f"patch_pos_{grid[0]}x{grid[1]}"]
    model = stage1
    _close(model.backbone.patch_position(grid, square_input=False), want, 1e-7, f"{grid}")


@pytest.mark.parametrize("index", [0, 1])
def test_multiscale_cam_export_matches_the_reference(stage1, index):
    """engine.py:generate_attention_maps_ms (scales 1.0, 1.2, flips, fine CAMs) of the two photos at
    full size; image 1 (426 rows) drops remainder pixels at both scales. Measured max difference
    2.7e-6 (image 0) and 1.9e-6 (image 1) on maps normalised to [0, 1] (the reference's own float32
    rounding: 1.7e-6, 3.0e-6). With train_cam.pos_embed_resample = "timm": 0.046 and 0.058."""
    golden = np.load(PARITY / "cams_ms.npz")
    model = stage1
    assert model.normalisation == IMAGENET  # the parity README's input normalisation
    image = np.asarray(Image.open(COCO128 / "images" / "train2017" / str(golden["files"][index])).convert("RGB"))
    tags = tuple(int(t) for t in golden[f"tags_{index}"])
    (cams,) = multiscale_cams(
        model, [image], [tags], (1.0, 1.2), True, "fine", image.shape[:2], "fp32", 1,
        max_side=4096, cache_bytes=1 << 31,
    )  # fmt: skip
    _close(cams, golden[f"cam_{index}"], 2e-5, f"cam_{index}")


def test_decoder_masks_match_the_reference():
    """segm/model/decoder.py:MaskTransformer (2 blocks, eval) on seeded tokens, before the upsampling.
    Measured max difference 3.4e-6 (the reference's own float32 rounding: 3.4e-6) on masks up to 3.5.
    With the former LayerNorm eps 1e-6 (train_decoder.layer_norm_eps): 0.046."""
    golden = np.load(PARITY / "stage2.npz")
    torch.manual_seed(0)
    decoder = MaskTransformer(192, 3, 21, 2, dropout=0.1, eps=SegmenterConfig(ARCH, 21).layer_norm_eps).eval()
    decoder.load_state_dict(load_file(PARITY / "stage2_weights.safetensors"), strict=True)  # same names as timm's
    size = tuple(int(s) for s in golden["dec_im_size"])
    with torch.no_grad():
        (masks,) = decoder(torch.from_numpy(golden["dec_tokens"])[:, 1:], (size[0] // 16, size[1] // 16))
    _close(masks, golden["dec_masks"], 1e-5, "dec_masks")


def test_segmenter_defaults_are_the_reference_ones():
    """What stage2.npz cannot hold (no encoder run is stored): every LayerNorm eps 1e-5 (reference
    segm/model/{vit,blocks,decoder}.py: nn.LayerNorm's default), attention dropout = the decoder
    dropout 0.1 (blocks.py:Attention), and a position table at the training crop's grid, resampled
    bilinearly (utils.py:checkpoint_filter_fn → resize_pos_embed), also to other inputs' grids."""
    config = SegmenterConfig(ARCH, num_labels=21, image_size=480)
    torch.manual_seed(0)
    model = Segmenter(config, None)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 12 + 1 + 2 * 2 + 2 and all(m.eps == 1e-5 for m in norms)
    assert all(b.attn.attn_drop.p == 0.1 and b.mlp.drop1.p == 0.1 for b in model.decoder.blocks)
    assert model.encoder.grid == (30, 30) and model.encoder.patch_pos.shape == (1, 900, 192)
    table = model.encoder.patch_pos.detach()
    grid = table.reshape(1, 30, 30, 192).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(20, 25), mode="bilinear").permute(0, 2, 3, 1).reshape(1, -1, 192)
    assert torch.equal(model.encoder.patch_position((20, 25)), want)
    assert torch.equal(resample_patch_pos(table, (30, 30), (30, 30), "bilinear"), table)


@pytest.mark.parametrize("case", ["off", "on"])
def test_gradient_clipping_matches_the_reference(case):
    """decoder.py:GradientClipping + weight_reduce_loss on seeded 2×21×480×480 logits, window 120, with
    start values that leave clipping off (1.2) and on (10.0). Measured: loss 2.4e-7 off and on (1 ulp;
    the reference's own float32 rounding: 2.4e-7 / 6.1e-6), gradients bit-identical (0). Not clipping
    (train_decoder.gradient_clipping = false) fails the "on" case: loss 2.28 instead of 1.78."""
    golden = np.load(PARITY / "stage2.npz")
    logits = torch.from_numpy(golden["clip_logits"]).requires_grad_(True)
    loss_fn = GradientClippingLoss(int(golden["clip_window"]), float(golden[f"clip_start_{case}"]))
    loss, stats = loss_fn(logits, torch.from_numpy(golden["clip_targets"]))
    loss.backward()
    assert stats.clipping == (case == "on")
    assert stats.global_mean == pytest.approx(float(golden["clip_mean_loss"]), rel=1e-6)
    assert float(loss) == pytest.approx(float(golden[f"clip_loss_{case}"]), rel=1e-5)
    _close(logits.grad, golden[f"clip_grad_{case}"], 1e-6, f"clip_grad_{case}")
