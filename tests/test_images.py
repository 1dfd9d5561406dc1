import numpy as np
import pytest
from PIL import Image

from labelgen.data.images import inspect_image, read_image
from labelgen.data.masks import check_mask, read_mask, write_mask
from labelgen.errors import DataError
from tests.badfiles import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("name", ["good.jpg", "gray.jpg", "cmyk.jpg", "sixteen.png", "alpha.png", "palette.png"])
def test_readable_modes_become_rgb_uint8(corpus, name):
    image = read_image(corpus[name])
    assert image.dtype == np.uint8 and image.shape == (40, 48, 3)


def test_conversions_are_reported(corpus):
    assert inspect_image(corpus["good.jpg"]).converted is None
    assert "CMYK" in inspect_image(corpus["cmyk.jpg"]).converted
    assert "16-bit" in inspect_image(corpus["sixteen.png"]).converted
    sixteen = read_image(corpus["sixteen.png"])
    assert sixteen.max() > 200  # scaled, not clipped to 255/65535


@pytest.mark.parametrize(
    "name,why", [("truncated.jpg", "truncated"), ("empty.jpg", "zero-byte"), ("text.jpg", "not a readable image")]
)
def test_broken_files_name_the_file_and_reason(corpus, name, why):
    with pytest.raises(DataError, match=why) as e:
        read_image(corpus[name])
    assert name in str(e.value)


def test_giant_images_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)  # 144 Mpx, a few kB on disk
    with pytest.raises(DataError, match="max_image_pixels"):
        read_image(bomb)


def test_masks_round_trip_and_checks(tmp_path):
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    write_mask(tmp_path / "m.png", mask)
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert (read_mask(tmp_path / "m.png") == mask).all()
    Image.fromarray(mask).save(tmp_path / "g.png")
    assert (read_mask(tmp_path / "g.png") == mask).all()
    with pytest.raises(DataError, match="size of their image"):
        check_mask(mask, 3, tmp_path / "m.png", (3, 2))
    with pytest.raises(DataError, match=r"values \[2\] are outside"):
        check_mask(mask, 2, tmp_path / "m.png", (2, 2))
