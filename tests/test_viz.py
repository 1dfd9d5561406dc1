"""Report pictures: overlays a reader can map to a class through the legend, heat maps, thumbnails."""

import colorsys

import numpy as np
import pytest

from labelgen.report.pictures import class_colours, heatmap, outline, overlay, thumbnail_size

DEMO_SQUARE_BLUE = (40, 75, 215)  # labelgen/data/demo.py draws squares in this blue


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255))[0] * 360


def _square_photo() -> np.ndarray:
    """A grey textured photo with a shaded blue square, as the demo draws it."""
    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(120, 25, (48, 48, 1)).repeat(3, axis=2), 0, 255)
    photo[12:36, 12:36] = np.clip(np.array(DEMO_SQUARE_BLUE) + rng.normal(0, 8, (24, 24, 1)), 0, 255)
    return photo.astype(np.uint8)


@pytest.mark.parametrize("label", range(1, 21))
def test_overlay_region_reads_as_its_legend_colour_whatever_the_photo(label):
    photo = _square_photo()
    mask = np.zeros((48, 48), np.uint8)
    mask[12:36, 12:36] = label
    legend = class_colours()[label]
    out = overlay(photo, mask)
    interior = out[14:34, 14:34].reshape(-1, 3).astype(float)
    # the hue inside is the legend colour's (the photo's own blue does not tint it) ...
    hue_gap = abs((_hue(interior.mean(0)) - _hue(legend) + 180) % 360 - 180)
    assert hue_gap < 3
    # ... drawn solid enough to name (at least 60% of the legend colour's saturation) ...
    chroma = interior.max(1) - interior.min(1)
    assert chroma.mean() >= 0.6 * (int(legend.max()) - int(legend.min()))
    # ... at reduced opacity: the photo's texture still shows through
    assert interior.std(0).mean() > 2
    # the region's border is outlined in the legend colour itself
    assert (out[12, 12:36] == legend).all() and (out[12:36, 35] == legend).all()
    # background stays the photo, in grey
    assert np.ptp(out[:10, :10].astype(int), axis=2).max() <= 1


def test_first_twenty_class_colours_are_far_apart():
    colours = class_colours()[1:21].astype(float)
    gaps = [np.linalg.norm(colours[i] - colours[j]) for i in range(20) for j in range(i + 1, 20)]
    assert min(gaps) > 40
    assert tuple(class_colours()[255]) == (255, 255, 255)  # ignore


def test_outline_marks_the_border_of_foreground_regions_only():
    mask = np.zeros((5, 5), np.uint8)
    mask[1:4, 1:4] = 2
    edge = outline(mask)
    assert edge[1, 1:4].all() and edge[3, 1:4].all() and not edge[2, 2]
    assert not edge[0].any()  # the background side of the border is not drawn


def test_heatmap_runs_blue_to_red():
    grey = np.full((2, 2, 3), 128, np.uint8)
    low = heatmap(grey, np.zeros((2, 2), np.float32))[0, 0].astype(int)
    high = heatmap(grey, np.ones((2, 2), np.float32))[0, 0].astype(int)
    assert low[2] > low[0] + 60 and high[0] > high[2] + 60


def test_thumbnail_size_keeps_aspect_and_never_enlarges():
    assert thumbnail_size(480, 640, 128) == (96, 128)
    assert thumbnail_size(50, 60, 128) == (50, 60)
