import errno
import io
import os
import socket
import struct
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import GOLDENS
from longclip.runtime.contract import errors
from longclip.runtime.contract.constants import MAX_PIXELS
from longclip.runtime.contract.errors import ImageError
from longclip.runtime.decode.images import check_pixels, load_image
from longclip.runtime.decode.preprocess import decode_image, preprocess_image, preprocess_images
from longclip.runtime.decode.transforms import center_crop, resized_size

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


# --- hostile inputs: each bad image costs its row a reason, never the run, and nothing may block -------------------

SMALL_JPG = GOLDENS / "images" / "small_41x97.jpg"


def _reason(source, size=32, **kw) -> ImageError:
    """The :class:`ImageError` that reading ``source`` raises (and nothing else), checked to name it."""
    with pytest.raises(ImageError) as err:
        decode_image(source, size, **kw)
    assert err.value.code in errors.IMAGE_CODES
    if isinstance(source, (str, os.PathLike)):
        assert repr(os.fspath(source)) in str(err.value)
    return err.value


def _without_blocking(fn, *fifos, timeout: float = 5.0):
    """``fn()`` on a thread; the test fails if it is still running after ``timeout`` seconds (blocked on one of
    ``fifos``, say: a writer that comes and goes then lets it return, so that the test run can end)."""
    result: dict[str, object] = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout)
        pytest.fail("reading an image blocked")
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    err = _without_blocking(lambda: _reason(fifo), fifo)
    assert err.code == errors.NOT_A_FILE and "FIFO" in str(err)
    with pytest.raises(ImageError) as thumbnail:  # the report's reader too
        _without_blocking(lambda: load_image(fifo), fifo)
    assert thumbnail.value.code == errors.NOT_A_FILE


def test_a_file_swapped_for_a_fifo_after_the_stat_is_still_refused(tmp_path, monkeypatch):
    """The race: ``os.stat`` saw a regular file, ``open`` gets a FIFO. The open must not block and the ``fstat``
    of what was opened must refuse it."""
    fifo, regular = tmp_path / "pipe.png", tmp_path / "file.png"
    os.mkfifo(fifo)
    regular.write_bytes(SMALL_JPG.read_bytes())
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **kw: real_stat(regular if path == fifo else path, *a, **kw))
    assert _without_blocking(lambda: _reason(fifo), fifo).code == errors.NOT_A_FILE


def test_devices_and_sockets_are_not_files(tmp_path):
    assert _reason("/dev/null").code == errors.NOT_A_FILE
    assert "character device" in str(_reason("/dev/null"))
    path = tmp_path / "sock.png"
    if len(os.fsencode(path)) > 100:  # AF_UNIX paths are limited to ~107 bytes
        pytest.skip("tmp_path too long for a unix socket")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(path))
        assert _reason(path).code == errors.NOT_A_FILE and "socket" in str(_reason(path))


def test_bad_paths(tmp_path):
    os.symlink(tmp_path / "b.png", tmp_path / "a.png")
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dangling.png")
    (tmp_path / "file.png").write_bytes(SMALL_JPG.read_bytes())
    long_name = tmp_path / ("x" * 300 + ".png")
    assert _reason(tmp_path / "a.png").code == errors.BAD_PATH and "loop" in str(_reason(tmp_path / "a.png"))
    assert _reason(long_name).code == errors.BAD_PATH and "too long" in str(_reason(long_name))
    assert _reason(str(tmp_path / "nul\0.png")).code == errors.BAD_PATH
    dangling = _reason(tmp_path / "dangling.png")
    assert dangling.code == errors.MISSING_FILE and "symlink" in str(dangling)
    through = _reason(tmp_path / "file.png" / "x.png")
    assert through.code == errors.MISSING_FILE and f"{str(tmp_path / 'file.png')!r}, a file" in str(through)
    no_folder = _reason(tmp_path / "gone" / "x.png")
    assert no_folder.code == errors.MISSING_FILE
    assert f"folder {str(tmp_path / 'gone')!r} does not exist" in str(no_folder)
    assert _reason(tmp_path / "x.png").code == errors.MISSING_FILE
    assert _reason(tmp_path).code == errors.DIRECTORY


def test_permission_denied_is_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    path.write_bytes(SMALL_JPG.read_bytes())
    path.chmod(0)
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        assert _reason(path).code == errors.UNREADABLE
    path.chmod(0o644)

    def denied(name, *args, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", name)

    monkeypatch.setattr(os, "open", denied)
    err = _reason(path)
    monkeypatch.undo()
    assert err.code == errors.UNREADABLE and "permission denied" in str(err)


def test_running_out_of_file_descriptors_is_not_a_row_reason(monkeypatch):
    def exhausted(name, *args, **kw):
        raise OSError(errno.EMFILE, "Too many open files", name)

    monkeypatch.setattr(os, "open", exhausted)
    with pytest.raises(OSError) as err:
        decode_image(SMALL_JPG, 32)
    assert err.value.errno == errno.EMFILE and not isinstance(err.value, ImageError)


def _dds_unknown_pixel_format() -> bytes:
    """A DDS header whose pixel format flags are 0: Pillow raises NotImplementedError from ``Image.open``."""
    return b"DDS " + struct.pack("<I", 124) + struct.pack("<3I", 0, 4, 4) + bytes(120 - 12)


def test_a_decoder_exception_of_any_class_is_undecodable(tmp_path, monkeypatch):
    (tmp_path / "odd.dds").write_bytes(_dds_unknown_pixel_format())
    err = _reason(tmp_path / "odd.dds")
    assert err.code == errors.UNDECODABLE and "NotImplementedError: Unknown pixel format flags 0" in str(err)
    for exc in (NotImplementedError("x"), IndexError("x"), struct.error("x"), MemoryError(), RecursionError("x"),
                ZeroDivisionError("x"), KeyError("x"), AssertionError()):
        def fail(*args, exc=exc, **kw):
            raise exc

        monkeypatch.setattr(Image, "open", fail)
        err = _reason(SMALL_JPG)
        assert err.code == errors.UNDECODABLE and type(exc).__name__ in str(err)


def test_decoder_messages_are_one_bounded_line(monkeypatch):
    def fail(*args, **kw):
        raise ValueError("first line\nsecond line " + "y" * 10_000)

    monkeypatch.setattr(Image.Image, "convert", fail)
    message = str(_reason(SMALL_JPG))
    assert "\n" not in message and len(message) < 400
    assert message.startswith(f"undecodable: cannot decode image {str(SMALL_JPG)!r}: ValueError: first line second")


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupts_still_stop_the_run(monkeypatch, exc):
    def fail(*args, **kw):
        raise exc()

    monkeypatch.setattr(Image, "open", fail)
    with pytest.raises(exc):
        decode_image(SMALL_JPG, 32)


def test_a_thin_image_is_refused_from_its_header(tmp_path, monkeypatch):
    """1x300,000 pixels, a few hundred bytes of PNG: resized short side first it would be 64x19,200,000."""
    path = tmp_path / "thin.png"
    Image.new("L", (1, 300_000)).save(path)
    assert path.stat().st_size < 10_000

    def no_decoding(self, *args, **kw):
        raise AssertionError("decoded")  # would surface as `undecodable`

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    for size, resized in ((64, "64x19200000"), (336, "336x100800000")):
        err = _reason(path, size)
        assert err.code == errors.TOO_MANY_PIXELS
        assert "1x300000" in str(err) and resized in str(err) and "--max-pixels" in str(err)
        assert _reason(path.read_bytes(), size).code == errors.TOO_MANY_PIXELS
        with open(path, "rb") as file:
            assert _reason(file, size).code == errors.TOO_MANY_PIXELS


def test_an_image_just_under_the_resized_cap_is_scored(tmp_path):
    path = tmp_path / "narrow.png"
    Image.new("RGB", (10, 1000), (200, 100, 50)).save(path)  # resized to 64: 64x6400 = 409,600 pixels
    assert decode_image(path, 64, max_pixels=409_600).shape == (3, 64, 64)
    assert _reason(path, 64, max_pixels=409_599).code == errors.TOO_MANY_PIXELS
    check_pixels(10, 1000, 64, 409_600, "n")
    with pytest.raises(ImageError):
        check_pixels(10, 1000, 64, 409_599, "n")


def test_header_dimensions_without_pixels_are_undecodable():
    with pytest.raises(ImageError) as err:
        check_pixels(0, 10, 32, MAX_PIXELS, "zero.png")
    assert err.value.code == errors.UNDECODABLE


@pytest.mark.parametrize("name", ["small_41x97.jpg", "rgba_61x45.png", "animated_50x70.gif", "cmyk_80x60.jpg"])
def test_bytes_and_file_objects_read_like_paths(name):
    path = GOLDENS / "images" / name
    want = preprocess_image(path, 48)
    np.testing.assert_array_equal(decode_image(path.read_bytes(), 48), want)
    with open(path, "rb") as file:
        np.testing.assert_array_equal(decode_image(file, 48), want)
        assert not file.closed  # the caller's file stays the caller's
    out = np.empty((3, 48, 48), np.float32)
    assert decode_image(path, 48, out=out) is out
    np.testing.assert_array_equal(out, want)


def test_bytes_get_the_same_reasons_as_files(tmp_path):
    data = SMALL_JPG.read_bytes()
    cases = {"empty": b"", "text": b"not an image", "cut": data[: len(data) // 2], "bomb": _png_header(30_000, 30_000),
             "dds": _dds_unknown_pixel_format()}
    for label, content in cases.items():
        (tmp_path / label).write_bytes(content)
        want = _reason(tmp_path / label).code
        assert _reason(content, name=label).code == want, label
        assert label in str(_reason(content, name=label))
        with open(tmp_path / label, "rb") as file:
            assert _reason(file).code == want, label
    assert [_reason(tmp_path / k).code for k in cases] == [errors.EMPTY_FILE, errors.NOT_AN_IMAGE,
                                                           errors.UNDECODABLE, errors.TOO_MANY_PIXELS,
                                                           errors.UNDECODABLE]


def test_wrong_arguments_are_the_callers_bug_not_a_row_reason():
    for kw in ({"size": 0}, {"mean": (0.5,)}, {"out": np.empty((3, 8, 8), np.float32)}):
        with pytest.raises(ValueError):
            decode_image(SMALL_JPG, **{"size": 32, **kw})


def _palette_png_with_byte_transparency() -> bytes:
    """Pillow warns on each ``convert("RGB")`` of this one ("Palette images with Transparency ...")."""
    image = Image.new("P", (40, 40))
    image.putpalette([0, 0, 0, 255, 0, 0] * 128)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=bytes([0, 128]))
    return buffer.getvalue()


def test_pillow_warnings_stay_quiet_and_bombs_stay_refused(monkeypatch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_image(_palette_png_with_byte_transparency(), 32).shape == (3, 32, 32)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 41x97 = 3977: Pillow warns (over 1x, under 2x)
        assert decode_image(SMALL_JPG, 32).shape == (3, 32, 32)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over 2x: Pillow's DecompressionBombError
        assert _reason(SMALL_JPG).code == errors.TOO_MANY_PIXELS
        warnings.warn("not Pillow's", UserWarning)  # other warnings are left alone
    assert [str(w.message) for w in caught] == ["not Pillow's"]


def test_warning_filters_survive_decoding_on_threads():
    """``catch_warnings`` per row on threads restores filters out of order; the shared window must not."""
    data = _palette_png_with_byte_transparency()
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inside = list(warnings.filters)
        with ThreadPoolExecutor(4) as pool:
            shapes = set(pool.map(lambda _: decode_image(data, 32).shape, range(200)))
        assert list(warnings.filters) == inside
    assert shapes == {(3, 32, 32)} and caught == [] and list(warnings.filters) == before


def test_pil_inputs_of_the_python_api_have_their_resize_bounded():
    assert preprocess_image(Image.new("RGB", (10, 1000)), 64).shape == (3, 64, 64)
    with pytest.raises(ImageError) as err:
        preprocess_image(Image.new("L", (1, 300_000)), 64)
    assert err.value.code == errors.TOO_MANY_PIXELS

