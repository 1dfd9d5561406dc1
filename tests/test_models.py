import weakref

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from labelgen.models import vit
from labelgen.models import weaktr as weaktr_module
from labelgen.models.cam_inference import fit_factor, multiscale_cams, view_sizes
from labelgen.models.vit import Backbone
from labelgen.models.weaktr import WeakTr, WeakTrConfig, fuse_attention, pool_head_features, stack_pooled, weaktr_loss
from labelgen.models.weights import create_vit
from tests.conftest import COCO128
from tests.conftest import WEIGHTS as WEIGHTS_DIR

ARCH = "deit_tiny_patch16_224"


def pixels(b: int, h: int, w: int) -> torch.Tensor:
    """Random uint8 images B, 3, H, W: what the models take."""
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8)


WEIGHTS = "hub:deit_tiny_patch16_224.fb_in1k"


@pytest.fixture(scope="module")
def weaktr():
    torch.manual_seed(0)
    return WeakTr(WeakTrConfig(ARCH, num_fg_classes=4), WEIGHTS)


def test_backbone_equals_timm_forward_on_real_weights():
    vit = create_vit(ARCH, WEIGHTS).eval()
    reference = timm.create_model(ARCH, num_classes=0).eval()
    reference.load_state_dict(vit.state_dict())
    backbone = Backbone(vit, num_prefix=1).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference.forward_features(x)
        traced = backbone.forward_features(x, trace=True)
        fused = backbone.forward_features(x, trace=False)
    assert torch.allclose(backbone.norm(traced.tokens), expected, atol=1e-4)
    assert torch.allclose(traced.tokens, fused.tokens, atol=1e-4)
    assert len(traced.attn_maps) == 12 and traced.attn_maps[0].shape == (2, 3, 197, 197)
    assert torch.allclose(traced.attn_maps[0].sum(-1), torch.ones(2, 3, 197), atol=1e-5)  # softmax rows


def test_class_tokens_copy_the_pretrained_cls_token(weaktr):
    vit = create_vit(ARCH, WEIGHTS)
    tokens = weaktr.backbone.prefix_tokens
    assert tokens.shape == (1, 4, 192)
    for c in range(4):
        assert torch.equal(tokens[0, c], vit.cls_token[0, 0])
        assert torch.equal(weaktr.backbone.prefix_pos[0, c], vit.pos_embed[0, 0])


def test_any_input_size_and_grid(weaktr):
    out = weaktr(pixels(1, 100, 170))  # not multiples of 16: remainder pixels dropped
    assert out.fine_cam.shape == (1, 4, 6, 10)


def test_head_layer_order_is_head_major():
    b, n, heads, layers, hd = 1, 3, 2, 3, 4
    outs = [torch.arange(hd * heads).float().repeat(b, n, 1) + 100 * layer for layer in range(layers)]
    outs[0][0, 1, 0] = 50.0  # token 1 holds head 0's largest channel-0 value: pooling is a max over tokens
    f = stack_pooled([pool_head_features(o, heads) for o in outs])
    assert f.shape == (b, heads * layers, hd)
    assert f[0, 0].tolist() == [50, 2, 4, 6]  # head 0 owns channels 0, 2, 4, 6 (strided split)
    assert f[0, 1].tolist() == [100, 102, 104, 106]  # j = 1: head 0, layer 1
    assert f[0, 3].tolist() == [1, 3, 5, 7]  # j = 3: head 1, layer 0


def test_fused_attention_is_the_weighted_mean_over_head_layers():
    b, n, heads, layers = 2, 5, 3, 4
    maps = [torch.rand(b, heads, n, n) for _ in range(layers)]
    weights = torch.rand(b, heads * layers)
    stacked = torch.stack(maps, dim=2).flatten(1, 2)  # B, H, L, N, N -> B, K, N, N with j = h·L + l
    expected = (weights[:, :, None, None] * stacked).mean(dim=1)
    assert torch.allclose(fuse_attention(maps, weights), expected, atol=1e-6)
    assert torch.allclose(fuse_attention(maps, None), stacked.mean(dim=1), atol=1e-6)
    assert torch.equal(fuse_attention(iter(maps), weights), fuse_attention(maps, weights))  # maps made on demand


def test_gradient_paths(weaktr):
    weaktr.zero_grad()
    out = weaktr(pixels(2, 64, 64))
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.float32)
    assert not out.coarse_cam.requires_grad
    torch.nn.functional.multilabel_soft_margin_loss(out.fine_logits, targets).backward()
    with_grad = {n for n, p in weaktr.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(n.startswith("fusion.") for n in with_grad)  # fine loss reaches AAF only
    weaktr.zero_grad()
    out = weaktr(pixels(2, 64, 64))
    torch.nn.functional.multilabel_soft_margin_loss(out.coarse_logits, targets).backward()
    with_grad = {n for n, p in weaktr.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "head.weight" in with_grad and "blocks.0.attn.qkv.weight" in {n.removeprefix("backbone.") for n in with_grad}
    assert not any(n.startswith("fusion.") for n in with_grad)
    loss, parts = weaktr_loss(weaktr(pixels(2, 64, 64)), targets)
    assert set(parts) == {"cls", "coarse", "fine"} and loss.item() == pytest.approx(sum(parts.values()), rel=1e-5)


def test_mean_fusion_ablation_has_no_fusion_parameters():
    model = WeakTr(WeakTrConfig(ARCH, num_fg_classes=3, fusion="mean"), WEIGHTS)
    assert not any(n.startswith("fusion.") for n, _ in model.named_parameters())
    assert model(pixels(1, 64, 64)).fine_cam.shape == (1, 3, 4, 4)


def test_multiscale_cams_are_normalised_per_tag(weaktr):
    weaktr.eval()
    images = [np.random.default_rng(i).integers(0, 255, (70, 90, 3), dtype=np.uint8) for i in range(2)]
    maps = multiscale_cams(
        weaktr,
        images,
        [(1, 3), (2,)],
        (1.0, 1.2),
        True,
        "fine",
        (70, 90),
        "fp32",
        4,
        max_side=108,
        cache_bytes=0,
    )
    assert maps[0].shape == (2, 70, 90) and maps[1].shape == (1, 70, 90)
    for m in maps:  # each map spans [0, 1], or is all zero where the untrained head gave ReLU(M) = 0
        top = m.max(axis=(1, 2))
        assert np.all(np.isclose(top, 1.0, atol=1e-3) | (top == 0.0))
        assert np.allclose(m.min(axis=(1, 2)), 0.0, atol=1e-6)
    assert maps[0].max() > 0.99


def naive_multiscale_cams(model, image, tags, scales, out_size) -> np.ndarray:
    """The reference's order of work (§1.7): every class upsampled per pass, un-flipped, summed."""
    total = 0
    for scale in scales:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        x = torch.from_numpy(np.array(Image.fromarray(image).resize(size, Image.BICUBIC))).permute(2, 0, 1)[None]
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in model.normalisation)
        x = (x.float() / 255 - mean) / std
        for flip in (False, True):
            with torch.no_grad():
                cam = model._forward(x.flip(-1) if flip else x).fine_cam  # normalised above, as the reference
            cam = torch.nn.functional.interpolate(cam, size=out_size, mode="bilinear", align_corners=False)
            total = total + (cam.flip(-1) if flip else cam)
    maps = total[0, [t - 1 for t in tags]]
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    return ((maps - lo) / (hi - lo + 1e-8)).numpy()


@pytest.mark.parametrize("views_per_pass", [1, 3])
def test_multiscale_shortcuts_equal_the_reference_order_of_work(views_per_pass):
    """Upsampling only the tagged classes, merging flips before upsampling, and any number of views
    per forward pass give the reference's maps (fp32)."""
    torch.manual_seed(1)
    model = WeakTr(WeakTrConfig(ARCH, num_fg_classes=4), WEIGHTS).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)  # a head whose CAMs are not all zero
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (61, 83, 3), dtype=np.uint8) for _ in range(2)]
    tags = [(1, 4), (3,)]
    ours = multiscale_cams(
        model,
        images,
        tags,
        (1.0, 1.3),
        True,
        "fine",
        (61, 83),
        "fp32",
        views_per_pass,
        max_side=108,
        cache_bytes=0,
    )
    for image, t, m in zip(images, tags, ours, strict=True):
        ref = naive_multiscale_cams(model, image, t, (1.0, 1.3), (61, 83))
        assert ref.max() > 0.99
        np.testing.assert_allclose(m, ref, atol=2e-5)


def test_bf16_cams_stay_close_to_fp32(weaktr):
    weaktr.eval()
    image = [np.random.default_rng(5).integers(0, 255, (64, 96, 3), dtype=np.uint8)]
    args = (weaktr, image, [(1, 2)], (1.0,), True, "fine", (64, 96))
    bounds = {"max_side": 96, "cache_bytes": 0}
    own = weaktr.normalisation
    weaktr.set_normalisation((0.5,) * 3, (0.5,) * 3)  # the inputs this tolerance was set for
    try:
        fp32, bf16 = multiscale_cams(*args, "fp32", 2, **bounds)[0], multiscale_cams(*args, "bf16", 2, **bounds)[0]
    finally:
        weaktr.set_normalisation(*own)
    assert np.abs(fp32 - bf16).max() < 0.05


def reference_cams(model: WeakTr, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """WeakTr's CAMs as labelgen computed them before the lean inference path (commit c24ab19): every
    layer's attention maps traced and kept, the attention outputs stacked to B×K×N×hd and max-pooled
    inside the AAF, the maps fused from the list."""
    c, heads = model.config.num_fg_classes, model.backbone.num_heads
    out = model.backbone.forward_features(x, trace=True)
    b, _, d = out.tokens.shape
    h, w = out.grid
    coarse = torch.relu(model.head(out.tokens[:, c:].transpose(1, 2).reshape(b, d, h, w)))
    feats = torch.stack([o.reshape(b, -1, d // heads, heads) for o in out.attn_outputs], dim=1)
    feats = feats.permute(0, 4, 1, 2, 3).flatten(1, 2)  # B, K, N, hd
    weights = model.fusion.excite(model.fusion.squeeze(feats.amax(dim=2)).squeeze(-1))
    layers = len(out.attn_maps)
    fused_attn = torch.zeros_like(out.attn_maps[0][:, 0])
    for layer, m in enumerate(out.attn_maps):
        fused_attn = fused_attn + torch.einsum("bh,bhnm->bnm", weights[:, layer::layers], m)
    fused_attn = fused_attn / (layers * heads)
    fused = fused_attn[:, :c, c:].reshape(b, c, h, w) * coarse
    fine = (fused_attn[:, c:, c:] @ fused.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
    return {"coarse": coarse, "fused": fused, "fine": fine}


def photo(index: int, size: tuple[int, int]) -> np.ndarray:
    """A real COCO photo resized (PIL bicubic) to size = (h, w): H×W×3 uint8."""
    image = Image.open(sorted((COCO128 / "images" / "train2017").glob("*.jpg"))[index]).convert("RGB")
    return np.asarray(image.resize(size[::-1], Image.BICUBIC))


@pytest.fixture(scope="module")
def trained_head():
    """A WeakTr whose CAM head is not all zero (as after training), DeiT-Tiny weights, 5 classes."""
    torch.manual_seed(2)
    model = WeakTr(WeakTrConfig(ARCH, num_fg_classes=5), WEIGHTS).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
    return model


def test_lean_cams_are_bit_identical_to_the_maps_of_every_layer(trained_head):
    """The inference path (two passes, maps kept within a budget or recomputed) gives the very bits of
    the computation that keeps every layer's maps, for every budget; so does the training forward."""
    images = torch.from_numpy(np.stack([photo(0, (240, 320)), photo(1, (240, 320))])).permute(0, 3, 1, 2)
    x = trained_head.normalise(images)
    with torch.no_grad():
        expected = reference_cams(trained_head, x)
        out = trained_head(images)
    layer_bytes = 2 * 3 * (5 + 300) ** 2 * 4  # B·H·N² float32
    for budget in (0, 5 * layer_bytes, 12 * layer_bytes):
        for kind, want in expected.items():
            assert torch.equal(trained_head.cams(images, kind, budget), want), (kind, budget)
    assert expected["fine"].abs().max() > 0
    assert torch.equal(out.fine_cam, expected["fine"]) and torch.equal(out.fused_cam, expected["fused"])


def test_lean_cams_hold_one_layers_attention_maps_at_a_time(trained_head, monkeypatch):
    """Counts the attention-weight tensors (B, H, N, N) alive whenever a new one is made."""
    made, peak = [], []

    def tracked(fn):
        def wrapper(*args):
            result = fn(*args)
            made.append(weakref.ref(result[1] if isinstance(result, tuple) else result))
            peak.append(sum(r() is not None for r in made))
            return result

        return wrapper

    block = tracked(vit.block_with_attention)
    for module in (vit, weaktr_module):  # the traced forward's and the lean path's
        monkeypatch.setattr(module, "block_with_attention", block)
    monkeypatch.setattr(weaktr_module, "attention_weights", tracked(vit.attention_weights))
    x = pixels(1, 96, 128)
    layer_bytes = 3 * (5 + 48) ** 2 * 4
    for budget, most in ((0, 1), (3 * layer_bytes, 4), (12 * layer_bytes, 12)):
        made.clear(), peak.clear()
        trained_head.cams(x, "fine", budget)
        assert len(made) == 12 + 12 - min(12, budget // layer_bytes)  # one pass, then the layers not kept
        assert max(peak) == most, budget


def test_view_sizes_keep_ratios_under_max_side_and_reach_one_patch():
    # within the bound: the reference's sizes (round(H·s), round(W·s)), whatever the bound's margin
    assert view_sizes(375, 500, (1.0, 0.8, 1.2), 16, 600) == [(375, 500), (300, 400), (450, 600)]
    assert view_sizes(375, 500, (1.0, 1.2), 16, 10_000) == [(375, 500), (450, 600)]
    # beyond: every view shrinks by one factor; the largest is max_side long
    assert fit_factor(3024, 4032, 1.2, 1024) == pytest.approx(1024 / (1.2 * 4032))
    sizes = view_sizes(3024, 4032, (1.0, 0.8, 1.2), 16, 1024)
    assert sizes[2] == (768, 1024) and sizes[0] == (640, 853) and sizes[1] == (512, 683)
    # below one patch: upsampled (aspect kept) to one patch, never past max_side
    assert view_sizes(1, 1, (1.0, 1.2), 16, 1024) == [(16, 16), (16, 16)]
    assert view_sizes(15, 15, (1.0, 1.2), 16, 1024) == [(16, 16), (18, 18)]
    assert view_sizes(16, 16, (1.0, 1.2), 16, 1024) == [(16, 16), (19, 19)]
    assert view_sizes(10, 100, (1.0, 0.5), 16, 1024) == [(16, 160), (16, 160)]
    assert view_sizes(10, 1000, (1.0, 1.2), 16, 1024) == [(10, 1024), (10, 1024)]  # 10 rows, padded by the backbone


def test_backbone_pads_sides_shorter_than_a_patch(trained_head):
    x = torch.randn(1, 3, 5, 40)
    tokens, grid = trained_head.backbone.embed(x)
    assert grid == (1, 2) and tokens.shape == (1, 5 + 2, 192)
    padded = torch.nn.functional.pad(x, (0, 8, 0, 11))  # zeros to 16×48; the grid drops the last 8 columns
    assert torch.equal(tokens, trained_head.backbone.embed(padded[..., :, :32])[0])


def test_cam_checkpoints_record_the_normalisation_outside_the_state_dict(weaktr, tmp_path):
    """pixel_mean/pixel_std are not in the state dict (checkpoints from before them load strictly);
    the checkpoint's "mean"/"std" become the loaded model's buffers."""
    from labelgen.models.cam_inference import load_cam_model, save_cam_model
    from labelgen.store.checkpoint import load_checkpoint, save_checkpoint

    assert weaktr.normalisation == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # DeiT's ImageNet statistics
    assert not any(k.startswith("pixel_") for k in weaktr.state_dict())
    save_cam_model(tmp_path / "model.pt", weaktr)
    state = load_checkpoint(tmp_path / "model.pt")
    state["mean"], state["std"] = [0.5, 0.25, 0.125], [0.5, 0.5, 2.0]
    save_checkpoint(tmp_path / "model.pt", state)
    loaded = load_cam_model(tmp_path / "model.pt", torch.device("cpu"))
    x = torch.tensor([255, 0, 128], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    expected = torch.tensor([(1 - 0.5) / 0.5, (0 - 0.25) / 0.5, (128 / 255 - 0.125) / 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(loaded.normalise(x), expected.expand(1, 3, 2, 2))


def test_cam_checkpoints_from_before_num_fg_classes_load(weaktr, tmp_path):
    from labelgen.models.cam_inference import load_cam_model, save_cam_model
    from labelgen.store.checkpoint import load_checkpoint, save_checkpoint

    save_cam_model(tmp_path / "model.pt", weaktr)
    state = load_checkpoint(tmp_path / "model.pt")
    state["config"]["num_classes"] = state["config"].pop("num_fg_classes")
    save_checkpoint(tmp_path / "old.pt", state)
    assert load_cam_model(tmp_path / "old.pt", torch.device("cpu")).config == weaktr.config


def test_a_weights_folder_that_does_not_exist_is_named_as_such(tmp_path, monkeypatch):
    from labelgen.errors import ConfigError
    from labelgen.models.weights import WEIGHTS_DIR_ENV, resolve_weights_file

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"LABELGEN_WEIGHTS_DIR=.*nope is not a folder; point it at"):
        resolve_weights_file(WEIGHTS, "deit_tiny_patch16_224")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(WEIGHTS_DIR))  # the shared folder: its DeiT-Tiny file
    assert resolve_weights_file(WEIGHTS, "deit_tiny_patch16_224").parent == WEIGHTS_DIR


def test_hub_weights_of_another_architecture_are_refused_before_any_work(tmp_path, monkeypatch):
    """A hub name is "<architecture>.<tag>": one for another architecture than the backbone was found
    by the backbone's name in the weights folder (the DeiT-Tiny file for an AugReg ViT-B tag, whose
    0.5 statistics were then applied to it); a file of a longer architecture name that starts the
    same (`deit_tiny_patch16_224_x.*`) is another model's."""
    from labelgen.errors import ConfigError
    from labelgen.models.weights import WEIGHTS_DIR_ENV, check_weights, resolve_weights_file

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(WEIGHTS_DIR))
    with pytest.raises(
        ConfigError,
        match=r"^train_cam.weights: weights hub:vit_base_patch16_224.augreg_in21k are "
        r"for architecture vit_base_patch16_224, not the backbone deit_tiny_patch16_224; set",
    ):
        check_weights("deit_tiny_patch16_224", "hub:vit_base_patch16_224.augreg_in21k", "train_cam.weights")
    (tmp_path / "deit_tiny_patch16_224_x.in1k.safetensors").write_bytes(b"")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=r"has no weights file for deit_tiny_patch16_224 "):
        resolve_weights_file(WEIGHTS, "deit_tiny_patch16_224")
