"""labelgen/cam.py on hand-made maps: the exact labels, sizes and values each function must give."""

import numpy as np

from labelgen.numerics import maps_to_labels as cam
from labelgen.numerics.maps_to_labels import cam_argmax, cam_to_labels, indices_to_labels, resize_maps, resized_argmax

# two maps (labels 7 and 3) over a 2×3 image
MAPS = np.array(
    [
        [[0.9, 0.5, 0.1], [0.2, 0.45, 0.6]],
        [[0.3, 0.6, 0.2], [0.2, 0.40, 0.7]],
    ],
    np.float32,
)


def test_cam_to_labels_at_a_threshold():
    labels = np.array([7, 3])
    assert cam_to_labels(MAPS, labels, 0.45).tolist() == [[7, 3, 0], [0, 0, 3]]  # 0.45 ties: background
    assert cam_to_labels(MAPS, labels, 0.0).tolist() == [[7, 3, 3], [7, 7, 3]]  # 0.2 = 0.2: the first map
    assert cam_to_labels(MAPS, labels, 0.95).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert cam_to_labels(MAPS, labels, 0.45).dtype == np.uint8


def test_cam_argmax_and_indices_to_labels():
    assert cam_argmax(MAPS, 0.5).tolist() == [[1, 2, 0], [0, 0, 2]]
    assert indices_to_labels(np.array([[0, 1, 2]]), np.array([15, 4])).tolist() == [[0, 15, 4]]
    empty = np.zeros((0, 2, 3), np.float32)  # an untagged image: everything background
    assert cam_to_labels(empty, np.array([], np.int64), 0.3).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_resize_maps_is_bilinear_without_corner_alignment():
    maps = np.array([[[0.0, 1.0]], [[2.0, 2.0]]], np.float32)  # (2, 1, 2)
    out = resize_maps(maps, (3, 4))
    assert out.shape == (2, 3, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[0.0, 0.25, 0.75, 1.0]] * 3)  # half-pixel centres, edges clamped
    np.testing.assert_allclose(out[1], 2.0)
    assert resize_maps(MAPS, (2, 3)) is MAPS  # already at size: no copy


def test_resized_argmax_equals_the_argmax_of_the_resized_maps_in_any_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    maps = rng.random((5, 7, 9)).astype(np.float32)
    maps[3] = maps[1]  # ties: the earlier map wins, as np.argmax
    expected = resize_maps(maps, (20, 30)).argmax(0)
    assert np.array_equal(resized_argmax(maps, (20, 30)), expected)
    monkeypatch.setattr(cam, "ARGMAX_CHUNK_VALUES", 2 * 20 * 30)  # two maps at a time
    assert np.array_equal(resized_argmax(maps, (20, 30)), expected)
    monkeypatch.setattr(cam, "ARGMAX_CHUNK_VALUES", 1)  # one map at a time
    assert np.array_equal(resized_argmax(maps, (20, 30)), expected)


def test_resize_maps_of_an_image_without_tags():
    """A negative has no CAM maps; evaluate's gallery resized them and crashed on a coco128 negative."""
    out = resize_maps(np.zeros((0, 4, 6), np.float32), (8, 12))
    assert out.shape == (0, 8, 12) and out.dtype == np.float32
    assert cam_to_labels(np.zeros((0, 8, 12), np.float32), np.zeros(0, np.int64), 0.4).tolist() == [[0] * 12] * 8
