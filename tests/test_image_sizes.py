"""Images of any size the index accepts go through every stage that touches pixels (issue 11, items 5
and 6): smaller than a patch (1×1, 15×15, 16×16, a 10×1000 strip) and larger than the bounds
(`export_cams.max_side`, `predict.max_side`; small bounds here, so that the tests stay fast)."""

import contextlib
import io
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from labelgen.config import ExportCamsParams, PredictParams, PseudoLabelsParams, TrainCamParams, TrainDecoderParams
from labelgen.data.manifest import ImageRecord
from labelgen.data.masks import IGNORE_INDEX, write_mask
from labelgen.data.sources import SourceItem
from labelgen.data.training import TaggedImages
from labelgen.data.validate import index_items
from labelgen.models.cam_inference import save_cam_model
from labelgen.models.pixels import pixel_stats
from labelgen.models.segmenter import Segmenter, SegmenterConfig
from labelgen.models.weaktr import WeakTr, WeakTrConfig
from labelgen.numerics.crf import CrfParams, crf_on_probs
from labelgen.numerics.maps_to_labels import resize_maps, resized_argmax
from labelgen.stages import predict as predict_module
from labelgen.stages.export_cams import export_shard, stored_size
from labelgen.stages.predict import (
    pass_size,
    predict_probs,
    probs_to_mask,
    resize_pixels,
    sliding_logits,
    working_size,
)
from labelgen.stages.pseudo_labels import pseudo_label
from labelgen.stages.train_cam import training_transform
from labelgen.stages.train_decoder import PseudoMaskImages
from labelgen.store.sharded import ImageArrays, StoreLayout, create_cam_store
from tests.conftest import COCO128

ARCH, WEIGHTS = "deit_tiny_patch16_224", "hub:deit_tiny_patch16_224.fb_in1k"
TINY = {"1x1": (1, 1), "15x15": (15, 15), "16x16": (16, 16), "10x1000": (10, 1000)}  # (H, W)
TAGS = {"1x1": (2,), "15x15": (1, 3), "16x16": (3,), "10x1000": (1, 2), "wide": (1, 3)}
MAX_PIXELS = 10**8


def _photo(size: tuple[int, int], index: int = 5) -> np.ndarray:
    """A real COCO photo resized (PIL bicubic) to size = (H, W): H×W×3 uint8."""
    image = Image.open(sorted((COCO128 / "images" / "train2017").glob("*.jpg"))[index]).convert("RGB")
    return np.asarray(image.resize(size[::-1], Image.BICUBIC))


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[ImageRecord]:
    """Manifest rows the index made for the tiny images and a 150×500 one (PNG files)."""
    root = tmp_path_factory.mktemp("sizes")
    items = []
    for name, size in [*TINY.items(), ("wide", (150, 500))]:
        Image.fromarray(_photo(size)).save(root / f"{name}.png")
        items.append(SourceItem(name, root / f"{name}.png", "train", TAGS[name]))
    rows, problems = index_items(items, ("background", "a", "b", "c"), MAX_PIXELS, root / "gt")
    assert not problems and [r.id for r in rows] == [*TINY, "wide"]  # the index accepts every size
    return rows


@pytest.fixture(scope="module")
def cam_model(tmp_path_factory):
    """A saved WeakTr (DeiT-Tiny, 3 classes) with a CAM head that is not all zero."""
    torch.manual_seed(0)
    model = WeakTr(WeakTrConfig(ARCH, num_fg_classes=3), WEIGHTS).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_cam_model(path, model)
    return path


def _export(records, model_path, store, params: ExportCamsParams) -> list:
    layout = StoreLayout(tuple(r.id for r in records), tuple(stored_size(r, 1, params.max_side) for r in records), 8)
    create_cam_store(store, layout, max(len(r.tags) for r in records), {})
    export_shard(params, model_path, records, layout, 0, store, MAX_PIXELS)
    arrays = ImageArrays(store)
    return arrays.rows(0, len(arrays))


EXPORT = ExportCamsParams(scales=(1.0, 0.8, 1.2), precision="fp32", batch_size=2, device="cpu")  # max_side 1024


@pytest.fixture(scope="module")
def exported(records, cam_model, tmp_path_factory):
    """CAMs read back from cams.zarr: the tiny images at the default max_side, the 150×500 image at
    max_side=264 (with the view sizes the model saw, and the log)."""
    out = tmp_path_factory.mktemp("cams")
    seen, cams = [], WeakTr.cams
    with _capture("labelgen.stages.export_cams") as log:
        tiny = _export(records[:4], cam_model, out / "tiny.zarr", EXPORT)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(WeakTr, "cams", lambda self, x, *a: seen.append(tuple(x.shape[-2:])) or cams(self, x, *a))
            wide = _export(records[4:], cam_model, out / "wide.zarr", replace(EXPORT, max_side=264))
    return tiny + wide, seen, log.getvalue()


@contextlib.contextmanager
def _capture(logger: str):
    stream, handler = io.StringIO(), logging.StreamHandler()
    handler.setStream(stream)
    target = logging.getLogger(logger)
    level = target.level
    target.addHandler(handler), target.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        target.removeHandler(handler), target.setLevel(level)


def test_export_cams_of_images_smaller_than_a_patch(records, exported):
    rows, _, log = exported
    for r, (maps, labels) in zip(records[:4], rows[:4], strict=True):
        assert maps.shape == (len(r.tags), r.height, r.width), r.id
        assert labels.tolist() == list(r.tags)
        assert np.isfinite(maps).all(), r.id
        for m in maps:  # min–max normalised: spans [0, 1], or is 0 where the map is constant
            assert m.min() == 0 and m.max() in (0, 1), r.id
    for r, (maps, _) in zip(records[:3], rows[:3], strict=True):  # one patch: a constant map, exactly
        assert not maps.any(), r.id
    strip = rows[3][0]
    assert (strip.max(axis=(1, 2)) == 1).all()  # a 1×64 patch grid: the maps vary along the strip
    assert (strip == strip[:, :1]).all()  # and not across its single row of patches
    for r in records[:4]:
        assert f"image {r.id} is {r.width}×{r.height} px; views under a 16-px patch are upsampled or padded" in log
    assert "image 10x1000 is 1000×10 px; its views are shrunk by a factor 0.8533" in log  # 1.2 × 1000 > 1024
    assert log.count("views are shrunk") == 2  # that one and the 150×500 image


def test_export_bounds_views_and_stored_cams_beyond_max_side(records, exported):
    rows, seen, log = exported
    # the largest view would be 1.2 × 500 = 600 px long: every view shrinks by 264 / 600, ratios kept
    assert sorted(set(seen)) == [(53, 176), (66, 220), (79, 264)]
    assert rows[4][0].shape == (2, 79, 264) == (2, *stored_size(records[4], 1, 264))
    assert "image wide is 500×150 px; its views are shrunk by a factor 0.44 (export_cams.max_side=264)" in log


def test_stored_cam_size_is_capped_only_beyond_max_side():
    def rec(h, w):
        return ImageRecord("x", "x.jpg", w, h, (1,), None, "train", "")

    assert stored_size(rec(480, 640), 1, 1024) == (480, 640)
    assert stored_size(rec(480, 640), 2, 1024) == (240, 320)
    assert stored_size(rec(3024, 4032), 1, 1024) == (768, 1024)
    assert stored_size(rec(1, 1), 1, 1024) == (1, 1)
    assert stored_size(rec(10, 40_000), 1, 1024) == (1, 1024)


@pytest.mark.parametrize("crf", [True, False])
def test_pseudo_labels_of_every_size(records, exported, crf):
    p = PseudoLabelsParams(crf=crf)
    for r, (maps, labels) in zip(records, exported[0], strict=True):
        image = np.array(Image.open(r.image))
        mask = pseudo_label(image, maps, labels, p)  # the 150×500 one from 79×264 stored CAMs
        assert mask.shape == (r.height, r.width) and mask.dtype == np.uint8, r.id
        assert set(np.unique(mask)) <= {0, *r.tags}, r.id
    if not crf:  # both tags win somewhere; the CRF may smooth away a random head's weaker class (it does with
        # the reference's position resampling, train_cam.pos_embed_resample = "dino")
        assert set(np.unique(pseudo_label(np.array(Image.open(records[4].image)), *exported[0][4], p))) == {0, 1, 3}


def test_cam_training_transform_of_every_size(records):
    params = TrainCamParams(input_size=64)
    data = TaggedImages(
        records, 3, training_transform(params, *pixel_stats(params.backbone, params.weights)), MAX_PIXELS
    )
    torch.manual_seed(0)
    for i, r in enumerate(records):
        image, target = data[i]
        assert image.shape == (3, 64, 64) and torch.isfinite(image).all(), r.id
        assert target.nonzero().flatten().tolist() == [t - 1 for t in r.tags]


def test_decoder_training_augmentation_of_every_size(records, tmp_path):
    for r in records:  # a GT-like mask: the left half the first tag, the rest the last
        mask = np.full((r.height, r.width), r.tags[-1], np.uint8)
        mask[:, : r.width // 2] = r.tags[0]
        write_mask(tmp_path / f"{r.id}.png", mask)
    data = PseudoMaskImages(records, str(tmp_path), TrainDecoderParams(crop_size=64, resize_short=96), MAX_PIXELS)
    torch.manual_seed(0)
    for i, r in enumerate(records):
        image, mask = data[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8, r.id
        assert mask.shape == (64, 64) and set(mask.unique().tolist()) <= {*r.tags, IGNORE_INDEX}, r.id
        assert (mask != IGNORE_INDEX).any()


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return Segmenter(SegmenterConfig(ARCH, num_labels=4), WEIGHTS).eval()


PREDICT = PredictParams(
    scales=(0.5, 1.0), resize_short=64, window=128, window_stride=96, max_side=256, precision="fp32"
)


def reference_predict_probs(model, image: np.ndarray, p: PredictParams) -> np.ndarray:
    """predict_probs as before max_side (commit c24ab19): every pass upsampled to full size and summed."""
    h, w = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    total = None
    for ratio in p.scales:
        scale = max(p.resize_short * ratio, p.window) / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = resize_pixels(x, size)
        for flip in (False, True):
            probs = sliding_logits(model, scaled.flip(-1) if flip else scaled, p.window, p.window_stride, 0.0)
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            probs = probs.flip(-1) if flip else probs
            total = probs if total is None else total + probs
    return (total[0] / total[0].sum(0, keepdim=True)).numpy()


def test_predict_within_max_side_is_unchanged(segmenter):
    image = _photo((90, 120), index=7)
    probs = predict_probs(segmenter, image, PREDICT)
    assert np.array_equal(probs, reference_predict_probs(segmenter, image, PREDICT))
    labels = probs.argmax(0)
    present = np.unique(labels)
    expected = present[crf_on_probs(image, probs[present], CrfParams.of(PREDICT)).argmax(0)]
    assert len(present) > 1 and np.array_equal(probs_to_mask(image, probs, PREDICT), expected)


def test_predict_of_every_size(records, segmenter, monkeypatch):
    passes = []
    monkeypatch.setattr(
        predict_module, "sliding_logits", lambda m, x, *a: passes.append(x.shape[-2:]) or sliding_logits(m, x, *a)
    )
    for r in records:
        image = np.array(Image.open(r.image))
        passes.clear()
        probs = predict_probs(segmenter, image, PREDICT)
        assert max(max(s) for s in passes) <= PREDICT.max_side, r.id  # the 10×1000 strip's would be 12800 long
        assert probs.shape == (4, *working_size(r.height, r.width, PREDICT.max_side)) and np.isfinite(probs).all()
        np.testing.assert_allclose(probs.sum(0), 1, rtol=1e-5)
        mask = probs_to_mask(image, probs, PREDICT)
        assert mask.shape == (r.height, r.width) and mask.dtype == np.uint8 and mask.max() < 4, r.id
    assert probs.shape == (4, 77, 256)  # the 150×500 image: summed at max_side, masked at full size
    no_crf = PredictParams(**{**PREDICT.__dict__, "crf": False})
    assert np.array_equal(probs_to_mask(image, probs, no_crf), resize_maps(probs, (150, 500)).argmax(0))


def test_predict_passes_shrink_together_beyond_max_side():
    p = PredictParams(scales=(0.5, 1.0, 1.75), resize_short=520, window=480, max_side=2048)
    assert [pass_size(480, 640, r, p) for r in p.scales] == [(480, 640), (520, 693), (910, 1213)]  # unchanged
    strip = [pass_size(10, 1000, r, p) for r in p.scales]
    assert strip[2] == (20, 2048) and strip[0] == (11, 1080)  # 480 and 910 rows, scaled by 2048 / 91000
    assert working_size(3024, 4032, 2048) == (1536, 2048) and working_size(480, 640, 2048) == (480, 640)


def test_resized_argmax_equals_the_argmax_of_the_resized_maps(monkeypatch):
    rng = np.random.default_rng(0)
    maps = rng.random((7, 9, 13)).astype(np.float32)
    maps[3] = maps[5]  # ties go to the first, as np.argmax
    expected = resize_maps(maps, (40, 50)).argmax(0)
    monkeypatch.setattr("labelgen.numerics.maps_to_labels.ARGMAX_CHUNK_VALUES", 2 * 40 * 50)  # two maps at a time
    assert np.array_equal(resized_argmax(maps, (40, 50)), expected)
    assert np.array_equal(resized_argmax(maps, (9, 13)), maps.argmax(0))
