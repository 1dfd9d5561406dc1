import numpy as np
import pytest
import timm
import torch
from PIL import Image

from labelgen.models.cam_inference import multiscale_cams
from labelgen.models.vit import ViTBackbone
from labelgen.models.weaktr import WeakTr, WeakTrConfig, fuse_attention, stack_head_features, weaktr_loss
from labelgen.models.weights import create_vit

ARCH = "deit_tiny_patch16_224"
WEIGHTS = "hub:deit_tiny_patch16_224.fb_in1k"


@pytest.fixture(scope="module")
def weaktr():
    torch.manual_seed(0)
    return WeakTr(WeakTrConfig(ARCH, num_classes=4), WEIGHTS)


def test_backbone_equals_timm_forward_on_real_weights():
    vit = create_vit(ARCH, WEIGHTS).eval()
    reference = timm.create_model(ARCH, num_classes=0).eval()
    reference.load_state_dict(vit.state_dict())
    backbone = ViTBackbone(vit, num_prefix=1).eval()
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
    out = weaktr(torch.randn(1, 3, 100, 170))  # not multiples of 16: remainder pixels dropped
    assert out.fine_cam.shape == (1, 4, 6, 10)


def test_head_layer_order_is_head_major():
    b, n, heads, layers, hd = 1, 3, 2, 3, 4
    outs = [torch.arange(hd * heads).float().repeat(b, n, 1) + 100 * layer for layer in range(layers)]
    f = stack_head_features(outs, heads)
    assert f[0, 0, 0].tolist() == [0, 2, 4, 6]  # head 0 owns channels 0, 2, 4, 6 (strided split)
    assert f[0, 1, 0].tolist() == [100, 102, 104, 106]  # j = 1: head 0, layer 1
    assert f[0, 3, 0].tolist() == [1, 3, 5, 7]  # j = 3: head 1, layer 0


def test_fused_attention_is_the_weighted_mean_over_head_layers():
    b, n, heads, layers = 2, 5, 3, 4
    maps = [torch.rand(b, heads, n, n) for _ in range(layers)]
    weights = torch.rand(b, heads * layers)
    stacked = torch.stack(maps, dim=2).flatten(1, 2)  # B, H, L, N, N -> B, K, N, N with j = h·L + l
    expected = (weights[:, :, None, None] * stacked).mean(dim=1)
    assert torch.allclose(fuse_attention(maps, weights), expected, atol=1e-6)
    assert torch.allclose(fuse_attention(maps, None), stacked.mean(dim=1), atol=1e-6)


def test_gradient_paths(weaktr):
    weaktr.zero_grad()
    out = weaktr(torch.randn(2, 3, 64, 64))
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.float32)
    assert not out.coarse_cam.requires_grad
    torch.nn.functional.multilabel_soft_margin_loss(out.fine_logits, targets).backward()
    with_grad = {n for n, p in weaktr.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(n.startswith("fusion.") for n in with_grad)  # fine loss reaches AAF only
    weaktr.zero_grad()
    out = weaktr(torch.randn(2, 3, 64, 64))
    torch.nn.functional.multilabel_soft_margin_loss(out.coarse_logits, targets).backward()
    with_grad = {n for n, p in weaktr.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "head.weight" in with_grad and "blocks.0.attn.qkv.weight" in {n.removeprefix("backbone.") for n in with_grad}
    assert not any(n.startswith("fusion.") for n in with_grad)
    loss, parts = weaktr_loss(weaktr(torch.randn(2, 3, 64, 64)), targets)
    assert set(parts) == {"cls", "coarse", "fine"} and loss.item() == pytest.approx(sum(parts.values()), rel=1e-5)


def test_mean_fusion_ablation_has_no_fusion_parameters():
    model = WeakTr(WeakTrConfig(ARCH, num_classes=3, fusion="mean"), WEIGHTS)
    assert not any(n.startswith("fusion.") for n, _ in model.named_parameters())
    assert model(torch.randn(1, 3, 64, 64)).fine_cam.shape == (1, 3, 4, 4)


def test_multiscale_cams_are_normalised_per_tag(weaktr):
    weaktr.eval()
    images = [np.random.default_rng(i).integers(0, 255, (70, 90, 3), dtype=np.uint8) for i in range(2)]
    maps = multiscale_cams(
        weaktr, images, [(1, 3), (2,)], (1.0, 1.2), True, "fine", (70, 90), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "fp32", 4
    )
    assert maps[0].shape == (2, 70, 90) and maps[1].shape == (1, 70, 90)
    for m in maps:  # each map spans [0, 1], or is all zero where the untrained head gave ReLU(M) = 0
        top = m.max(axis=(1, 2))
        assert np.all(np.isclose(top, 1.0, atol=1e-3) | (top == 0.0))
        assert np.allclose(m.min(axis=(1, 2)), 0.0, atol=1e-6)
    assert maps[0].max() > 0.99


def naive_multiscale_cams(model, image, tags, scales, out_size, mean, std) -> np.ndarray:
    """The reference's order of work (§1.7): every class upsampled per pass, un-flipped, summed."""
    total = 0
    for scale in scales:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        x = torch.from_numpy(np.array(Image.fromarray(image).resize(size, Image.BICUBIC))).permute(2, 0, 1)[None]
        x = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        for flip in (False, True):
            with torch.no_grad():
                cam = model.cams(x.flip(-1) if flip else x, "fine")
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
    model = WeakTr(WeakTrConfig(ARCH, num_classes=4), WEIGHTS).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)  # a head whose CAMs are not all zero
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (61, 83, 3), dtype=np.uint8) for _ in range(2)]
    tags = [(1, 4), (3,)]
    norm = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ours = multiscale_cams(model, images, tags, (1.0, 1.3), True, "fine", (61, 83), *norm, "fp32", views_per_pass)
    for image, t, m in zip(images, tags, ours, strict=True):
        ref = naive_multiscale_cams(model, image, t, (1.0, 1.3), (61, 83), *norm)
        assert ref.max() > 0.99
        np.testing.assert_allclose(m, ref, atol=2e-5)


def test_bf16_cams_stay_close_to_fp32(weaktr):
    weaktr.eval()
    image = [np.random.default_rng(5).integers(0, 255, (64, 96, 3), dtype=np.uint8)]
    args = (weaktr, image, [(1, 2)], (1.0,), True, "fine", (64, 96), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    fp32, bf16 = multiscale_cams(*args, "fp32", 2)[0], multiscale_cams(*args, "bf16", 2)[0]
    assert np.abs(fp32 - bf16).max() < 0.05
