import numpy as np
import pytest
from PIL import Image

from labelgen.data.images import inspect_image, read_image
from labelgen.data.masks import read_mask, write_mask
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


def test_masks_round_trip(tmp_path):
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    write_mask(tmp_path / "m.png", mask)
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert (read_mask(tmp_path / "m.png") == mask).all()
    Image.fromarray(mask).save(tmp_path / "g.png")
    assert (read_mask(tmp_path / "g.png") == mask).all()


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) of a PNG after its signature."""
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.append((data[pos + 4 : pos + 8], data[pos : pos + 12 + length]))
        pos += 12 + length
    return chunks


def test_complete_files_are_checked_without_decoding_their_pixels(corpus, tmp_path):
    """A PNG whose chunks are whole but whose compressed pixels are corrupt passes the index's check
    (size, mode from the header) and fails, naming the file, where a stage decodes it."""
    data = corpus["palette.png"].read_bytes()
    chunks = _png_chunks(data)
    idat = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    body = bytearray(chunks[idat][1])
    body[8 : len(body) - 4] = bytes(len(body) - 12)  # zeros: not a zlib stream
    chunks[idat] = (b"IDAT", bytes(body))
    broken = tmp_path / "corrupt.png"
    broken.write_bytes(data[:8] + b"".join(c for _, c in chunks))
    info = inspect_image(broken)
    assert (info.width, info.height, info.mode) == (48, 40, "P")
    with pytest.raises(DataError, match="corrupt image data") as e:
        read_image(broken)
    assert "corrupt.png" in str(e.value)


@pytest.mark.parametrize("name", ["good.jpg", "alpha.png"])
def test_cut_files_are_decoded_and_left_out(corpus, tmp_path, name):
    data = corpus[name].read_bytes()
    cut = tmp_path / f"cut{corpus[name].suffix}"
    cut.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(DataError, match="truncated") as e:
        inspect_image(cut)
    assert cut.name in str(e.value)


def test_bytes_after_the_end_marker_cost_a_decode_not_the_image(corpus, tmp_path):
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(corpus["good.jpg"].read_bytes() + b"\0" * 64)  # as some cameras write
    assert inspect_image(padded).width == 48


def test_png_exif_after_the_pixel_data_is_read(tmp_path):
    """PIL sees a PNG's eXIf chunk before the pixels when it opens the file, one after them only when
    it decodes: the orientation must be the same either way."""
    exif = Image.Exif()
    exif[0x0112] = 6
    before = tmp_path / "before.png"
    Image.new("RGB", (30, 20)).save(before, exif=exif)
    chunks = _png_chunks(before.read_bytes())
    kinds = [kind for kind, _ in chunks]
    assert kinds.index(b"eXIf") < kinds.index(b"IDAT")
    moved = [c for c in chunks if c[0] != b"eXIf"]
    moved.insert(len(moved) - 1, next(c for c in chunks if c[0] == b"eXIf"))  # just before IEND
    after = tmp_path / "after.png"
    after.write_bytes(before.read_bytes()[:8] + b"".join(c for _, c in moved))
    assert inspect_image(before).exif_orientation == inspect_image(after).exif_orientation == 6
