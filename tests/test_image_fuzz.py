"""Fuzz the one-row image reader: mutated images of many formats give a model input or a row reason, nothing else.

Seeds are the golden images and small files of each format Pillow knows (written by Pillow where it can write
them, hand-made headers where it only reads them); mutations are bit flips, insertions, deletions, truncations
and header fields set to edge values. Deterministic (``derandomize``), and bounded in memory: rows over a small
``max_pixels`` are refused, and Pillow's own cap (which bounds what ICO, DCX, ... decode inside) is lowered too.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import GOLDENS
from longclip.runtime.contract import errors
from longclip.runtime.contract.errors import ImageError
from longclip.runtime.decode.preprocess import decode_image

SIZE = 32
MAX_PIXELS = 1 << 18  # rows: a 512x512 image is the largest decoded
PILLOW_MAX_PIXELS = 1 << 19  # Pillow warns above this and refuses above twice this
EXAMPLES = 8000


def _saved(image: Image.Image, fmt: str, **params: object) -> bytes | None:
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **params)
    except (OSError, ValueError, KeyError):  # a codec this Pillow was built without
        return None
    return buffer.getvalue()


def _written_seeds() -> dict[str, bytes | None]:
    """Small files that Pillow writes itself, in the modes and options that reach different decoders."""
    rgb = Image.linear_gradient("L").resize((13, 9)).convert("RGB")
    rgba, gray, pal, bw = rgb.convert("RGBA"), rgb.convert("L"), rgb.convert("P"), rgb.convert("1")
    frames = [pal, pal.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "png_rgb": _saved(rgb, "PNG"), "png_p_trns": _saved(pal, "PNG", transparency=bytes([0, 128])),
        "png_la": _saved(gray.convert("LA"), "PNG"), "png_i16": _saved(gray.convert("I;16"), "PNG"),
        "png_1": _saved(bw, "PNG"),
        "apng": _saved(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "gif": _saved(pal, "GIF"), "gif_anim": _saved(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "jpeg": _saved(rgb, "JPEG"), "jpeg_progressive": _saved(rgb, "JPEG", progressive=True),
        "jpeg_cmyk": _saved(rgb.convert("CMYK"), "JPEG"), "jpeg_gray": _saved(gray, "JPEG"),
        "mpo": _saved(rgb, "MPO", save_all=True, append_images=[rgb]),
        "bmp_rgb": _saved(rgb, "BMP"), "bmp_p": _saved(pal, "BMP"), "bmp_1": _saved(bw, "BMP"),
        "bmp_rgba": _saved(rgba, "BMP"), "dib": _saved(rgb, "DIB"),
        "tiff_raw": _saved(rgb, "TIFF"), "tiff_lzw": _saved(rgb, "TIFF", compression="tiff_lzw"),
        "tiff_deflate": _saved(rgba, "TIFF", compression="tiff_adobe_deflate"),
        "tiff_packbits": _saved(gray, "TIFF", compression="packbits"),
        "tiff_jpeg": _saved(rgb, "TIFF", compression="jpeg"), "tiff_p": _saved(pal, "TIFF"),
        "webp_lossy": _saved(rgb, "WEBP"), "webp_lossless": _saved(rgba, "WEBP", lossless=True),
        "ico_png": _saved(rgba, "ICO", sizes=[(13, 9)]), "ico_bmp": _saved(rgba, "ICO", sizes=[(8, 8)],
                                                                         bitmap_format="bmp"),
        "icns": _saved(rgba.resize((16, 16)), "ICNS"), "dds_rgb": _saved(rgb, "DDS"), "dds_rgba": _saved(rgba, "DDS"),
        "dds_l": _saved(gray, "DDS"), "tga": _saved(rgb, "TGA"), "tga_rle": _saved(rgba, "TGA", compression="tga_rle"),
        "tga_p": _saved(pal, "TGA"), "pcx": _saved(rgb, "PCX"), "pcx_p": _saved(pal, "PCX"),
        "sgi": _saved(rgb, "SGI"), "sgi_rle": _saved(rgba, "SGI", rle=True), "ppm": _saved(rgb, "PPM"),
        "pgm": _saved(gray, "PPM"), "pbm": _saved(bw, "PPM"), "im": _saved(rgb, "IM"), "msp": _saved(bw, "MSP"),
        "xbm": _saved(bw, "XBM"), "qoi": _saved(rgba, "QOI"), "blp": _saved(pal, "BLP"),
        "spider": _saved(gray, "SPIDER"), "jpeg2000": _saved(rgb, "JPEG2000"),
        "j2k": _saved(rgb, "JPEG2000", no_jp2=True), "avif": _saved(rgb, "AVIF"),
    }


def _made_seeds(written: dict[str, bytes | None]) -> dict[str, bytes | None]:
    """Hand-made minimal files of formats Pillow reads but does not write."""
    w, h = 4, 3
    psd = (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3) + struct.pack(">III", 0, 0, 0)
           + struct.pack(">H", 0) + bytes(range(3 * w * h)))
    sun = struct.pack(">8I", 0x59A66A95, w, h, 8, w * h, 1, 0, 0) + bytes(range(w * h))
    xpm = (b'/* XPM */\nstatic char *x[] = {\n"4 3 2 1",\n"a c #ff0000",\n"b c #00ff00",\n'
           b'"abab",\n"baba",\n"abba"\n};\n')
    cards = [f"{k:<8}= {v:>20}" for k, v in (("SIMPLE", "T"), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", w),
                                               ("NAXIS2", h))] + ["END"]
    fits = "".join(c.ljust(80) for c in cards).ljust(2880).encode() + bytes(range(w * h)).ljust(2880, b"\0")
    gbr = struct.pack(">IIIII", 28 + 2, 2, w, h, 1) + b"GIMP" + struct.pack(">I", 10) + b"b\0" + bytes(w * h)
    xv = b"P7 332\n#XVVERSION:Version 2.28\n#END_OF_COMMENTS\n4 3 255\n" + bytes(range(w * h))
    seeds: dict[str, bytes | None] = {"psd": psd, "sun": sun, "xpm": xpm, "fits": fits, "gbr": gbr, "xvthumb": xv,
                                      "bufr_stub": b"BUFR" + bytes(60), "grib_stub": b"GRIB" + bytes(60),
                                      "hdf5_stub": b"\x89HDF\r\n\x1a\n" + bytes(60),
                                      "mpeg_stub": b"\x00\x00\x01\xb3" + struct.pack(">I", 0x01000C00) + bytes(56),
                                      "dds_unknown_format": b"DDS " + struct.pack("<I3I", 124, 0, 4, 4) + bytes(108)}
    if written.get("ico_bmp"):
        seeds["cur"] = written["ico_bmp"][:2] + b"\x02" + written["ico_bmp"][3:]  # CUR: an ICO of type 2
    if written.get("pcx"):
        seeds["dcx"] = struct.pack("<III", 987654321, 12, 0) + written["pcx"]
    return seeds


def _seeds() -> dict[str, bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 13 deprecates writing IM
        written = _written_seeds()
    seeds = {**written, **_made_seeds(written)}
    seeds.update({f"golden_{p.name}": p.read_bytes() for p in sorted((GOLDENS / "images").iterdir())})
    return {name: data for name, data in seeds.items() if data}


SEEDS = _seeds()
FIELD_VALUES = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 300_000, 0x7FFFFFFF,
                0x80000000, 0xFFFFFFFF)
ANYWHERE = st.integers(0, 1 << 20)  # taken modulo the length
MUTATION = st.one_of(
    st.tuples(st.just("flip"), ANYWHERE, st.integers(0, 7)),
    st.tuples(st.just("insert"), ANYWHERE, st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), ANYWHERE, st.integers(1, 64)),
    st.tuples(st.just("cut"), ANYWHERE, st.none()),
    st.tuples(st.just("field"), st.integers(0, 127),
              st.tuples(st.sampled_from([1, 2, 4]), st.sampled_from(["little", "big"]), st.sampled_from(FIELD_VALUES))),
)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    """``data`` with each mutation applied in turn.

    >>> mutate(b"abcd", [("flip", 0, 0), ("cut", 3, None), ("insert", 1, b"_"), ("field", 2, (2, "big", 1))])
    b'`_\\x00\\x01'
    """
    buf = bytearray(data)
    for kind, where, what in mutations:
        at = where % (len(buf) + 1)
        if kind == "flip" and buf:
            buf[where % len(buf)] ^= 1 << what
        elif kind == "insert":
            buf[at:at] = what
        elif kind == "delete":
            del buf[at:at + what]
        elif kind == "cut":
            del buf[at:]
        elif kind == "field":  # a header field (the first 128 bytes) set to an edge value
            width, order, value = what
            at = where % max(1, min(len(buf), 128))
            buf[at:at + width] = (value % 256 ** width).to_bytes(width, order)
    return bytes(buf)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_MAX_PIXELS)
        yield tmp_path_factory.mktemp("fuzz")


def test_seeds_cover_many_formats():
    formats = set()
    warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 13 deprecates reading IM (pytest restores this)
    for data in SEEDS.values():
        try:
            with Image.open(io.BytesIO(data)) as image:
                formats.add(image.format)
        except Exception:  # noqa: BLE001 - a stub or a crafted failure, still a seed
            pass
    assert {"PNG", "GIF", "JPEG", "BMP", "TIFF", "WEBP", "ICO", "DDS", "PSD", "TGA", "PCX", "SGI", "PPM", "SUN",
            "XPM", "FITS", "QOI", "DCX", "CUR", "ICNS", "IM", "MSP", "XBM"} <= formats, formats


def _read(workdir: Path, data: bytes, how: str) -> np.ndarray:
    if how == "bytes":
        return decode_image(data, SIZE, max_pixels=MAX_PIXELS)
    path = workdir / "case.img"
    path.write_bytes(data)
    if how == "path":
        return decode_image(path, SIZE, max_pixels=MAX_PIXELS)
    with open(path, "rb") as file:
        return decode_image(file, SIZE, max_pixels=MAX_PIXELS)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(seed=st.sampled_from(sorted(SEEDS)), mutations=st.lists(MUTATION, max_size=4),
       how=st.sampled_from(["path", "bytes", "file"]))
def test_mutated_images_give_pixels_or_a_row_reason(workdir, seed, mutations, how):
    data = mutate(SEEDS[seed], mutations)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pixels = _read(workdir, data, how)
        except ImageError as exc:
            assert exc.code in errors.IMAGE_CODES, exc
            assert "\n" not in str(exc) and len(str(exc)) < 600
            event(exc.code)
        else:
            event("pixels")
            assert pixels.shape == (3, SIZE, SIZE) and pixels.dtype == np.float32 and np.isfinite(pixels).all()
    assert [str(w.message) for w in caught] == []
