import numpy as np
import pytest
from PIL import Image

from conftest import GOLDENS
from longclip.runtime.errors import ImageError
from longclip.runtime.preprocess import center_crop, load_image, preprocess_image, preprocess_images, resized_size

PIXELS = np.load(GOLDENS / "pixels.npz")


@pytest.mark.parametrize("key", sorted(PIXELS.files))
def test_pixels_equal_torchvision_bit_for_bit(key):
    """Goldens from torchvision Resize/CenterCrop/ToTensor/Normalize (scripts/make_goldens.py)."""
    name, size = key.split("@")
    got = preprocess_image(GOLDENS / "images" / name, int(size))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, PIXELS[key])


def test_goldens_cover_modes_and_formats():
    names = {k.split("@")[0] for k in PIXELS.files}
    assert {"rgba_61x45.png", "animated_50x70.gif", "cmyk_80x60.jpg", "exif_rotated_90x40.jpg",
            "exact_48x48.png", "la_30x40.png"} <= names


@pytest.mark.parametrize(("size", "want"), [((640, 480), (298, 224)), ((480, 640), (224, 298)),
                                            ((224, 224), (224, 224)), ((41, 97), (224, 529)), ((1000, 3), (74666, 224))])
def test_resized_size_truncates_long_side(size, want):
    assert resized_size(*size, 224) == want


def test_center_crop_rounds_half_to_even():
    image = Image.fromarray(np.arange(113 * 48, dtype=np.uint32).reshape(113, 48).astype(np.uint8))
    cropped = np.asarray(center_crop(image, 48))  # (113 - 48) / 2 = 32.5 -> 32
    np.testing.assert_array_equal(cropped, np.asarray(image)[32:80])


def test_pil_input_equals_path_input():
    path = GOLDENS / "images" / "rgba_61x45.png"
    np.testing.assert_array_equal(preprocess_images([Image.open(path)], 48)[0], preprocess_image(path, 48))


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height``, with almost no pixel data: a bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_errors_have_codes_and_name_the_path(tmp_path):
    def code_of(path, **kw):
        with pytest.raises(ImageError) as err:
            load_image(path, **kw)
        assert str(path) in str(err.value)
        return err.value.code

    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    data = (GOLDENS / "images" / "small_41x97.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "bomb.png").write_bytes(_png_header(30_000, 30_000))
    assert code_of(tmp_path / "missing.png") == "missing_file"
    assert code_of(tmp_path) == "directory"
    assert code_of(tmp_path / "notes.txt") == "not_an_image"
    assert code_of(tmp_path / "empty.png") == "empty_file"
    assert code_of(tmp_path / "cut.jpg") == "undecodable"
    assert code_of(tmp_path / "bomb.png") == "too_many_pixels"  # refused from the header, nothing decoded
    assert code_of(GOLDENS / "images" / "small_41x97.jpg", max_pixels=41 * 97 - 1) == "too_many_pixels"
    assert load_image(GOLDENS / "images" / "small_41x97.jpg", max_pixels=41 * 97).size == (41, 97)
