"""The dense CRF on real VOC photos: it pulls a blocky label map toward the object edges, keeps a
confident label map as it is, and returns marginals."""

import numpy as np
import pytest
from PIL import Image

from labelgen.config import PredictParams, PseudoLabelsParams
from labelgen.numerics.crf import CrfParams, crf_on_labels, crf_on_probs
from tests.conftest import VOC_MINI

VOC = VOC_MINI / "VOC2012"


def voc(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H×W×3 uint8 photo, H×W index map into the labels present (VOC's 255 border as 0), H×W valid)."""
    image = np.asarray(Image.open(VOC / "JPEGImages" / f"{name}.jpg").convert("RGB"))
    gt = np.array(Image.open(VOC / "SegmentationClass" / f"{name}.png"))
    present = np.array([v for v in np.unique(gt) if v != 255])
    return image, np.searchsorted(present, np.where(gt == 255, 0, gt)), gt != 255


def blocky(index_map: np.ndarray, block: int) -> np.ndarray:
    """The map at 1/block resolution, nearest-upsampled back: a coarse CAM's staircase edges."""
    h, w = index_map.shape
    small = Image.fromarray(index_map.astype(np.uint8)).resize((w // block, h // block), Image.NEAREST)
    return np.array(small.resize((w, h), Image.NEAREST)).astype(np.int64)


def test_params_come_from_the_stages_crf_settings():
    p = PseudoLabelsParams()
    assert CrfParams.of(p) == CrfParams(
        p.crf_gauss_sxy, p.crf_gauss_compat, p.crf_bilateral_sxy, p.crf_bilateral_srgb, p.crf_bilateral_compat, 10
    )
    assert CrfParams.of(p).gauss_sxy == 4.0 and CrfParams.of(PredictParams()).gauss_sxy == 3.0


@pytest.mark.parametrize("name,kept", [("2011_000025", 0.7), ("2011_000006", 0.85)])
def test_label_crf_moves_a_blocky_map_toward_the_object_edges(name, kept):
    """GT at 1/16 resolution (errors only along the edges): the CRF on the photo fixes a good share of
    those errors (measured 5.5% -> 3.3% and 3.5% -> 2.6% of the labelled pixels wrong)."""
    image, gt, valid = voc(name)
    coarse = blocky(gt, 16)
    n = int(gt.max()) + 1
    refined = crf_on_labels(image, coarse, n, CrfParams.of(PseudoLabelsParams()), 0.7)
    assert refined.shape == gt.shape and set(np.unique(refined)) <= set(range(n))
    before, after = (coarse != gt)[valid].mean(), (refined != gt)[valid].mean()
    assert before > 0.03 and after < kept * before, (before, after)


def test_the_edges_come_from_the_photo():
    """The same blocky map on a blank image of the same size has no edges to move toward."""
    image, gt, valid = voc("2011_000025")
    coarse = blocky(gt, 16)
    p = CrfParams.of(PseudoLabelsParams())
    on_photo = (crf_on_labels(image, coarse, 3, p, 0.7) != gt)[valid].mean()
    on_blank = (crf_on_labels(np.zeros_like(image), coarse, 3, p, 0.7) != gt)[valid].mean()
    assert on_photo < 0.8 * on_blank


def test_confident_probabilities_keep_their_labels_and_come_back_as_marginals():
    image, gt, _ = voc("2011_000006")
    n = int(gt.max()) + 1
    probs = np.full((n, *gt.shape), 1e-8, np.float32)
    for j in range(n):
        probs[j][gt == j] = 1.0
    q = crf_on_probs(image, probs, CrfParams.of(PredictParams()))
    assert q.shape == probs.shape
    assert np.array_equal(q.argmax(0), gt)
    assert np.allclose(q.sum(0), 1.0, atol=1e-5) and q.min() >= 0


def test_a_single_label_is_returned_untouched():
    image, gt, _ = voc("2011_000003")
    zeros = np.zeros_like(gt)
    assert crf_on_labels(image, zeros, 1, CrfParams.of(PseudoLabelsParams()), 0.7) is zeros
    probs = np.ones((1, *gt.shape), np.float32)
    assert crf_on_probs(image, probs, CrfParams.of(PredictParams())) is probs
