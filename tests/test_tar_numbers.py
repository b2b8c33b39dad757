"""Issue 24, item 5: tar headers with hostile numbers. Every numeric header field is ASCII (octal in a ustar
header, decimal in a PAX record) and bounded; anything else makes the shard ``corrupt_shard`` from the member's
first header on, after the samples before it, never an exception that ends the run.

| kind | cases |
| --- | ---: |
| PAX ``size``: non-ASCII digits, thousands of digits, 21 digits, signs and spaces | 8 |
| PAX ``mtime`` / ``uid``: non-ASCII or thousands of digits | 4 |
| a PAX record's length: thousands of digits, longer than its header | 2 |
| ustar ``mode`` / ``mtime`` / ``devmajor`` not octal under a valid checksum | 3 |
| bounded values that are valid still read | 3 |
| through ``longclip-run``: a 5,000-digit size, the run completes | 1 |
"""

from __future__ import annotations

import io
import tarfile

import pytest
from test_hostile_rows import cli, read_jsonl
from test_webdataset import rows, samples, tar_bytes, write_tar


def _pax_member(name: str, data: bytes, records: dict[str, str]) -> bytes:
    """One member whose PAX header holds ``records`` (tarfile writes them as given), no end marker."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.pax_headers = len(data), records
        tar.addfile(info, io.BytesIO(data))
    return _without_marker(buffer.getvalue())


def _without_marker(data: bytes) -> bytes:
    """``data`` without its trailing zero blocks (the end-of-archive marker and tarfile's record padding); the
    members here never end with a zero block of their own."""
    end = len(data)
    while end and data[end - 512 : end] == bytes(512):
        end -= 512
    return data[:end]


def _shard(tmp_path, hostile: bytes):
    """Sample ``a``, then ``hostile`` (a ``b.jpg`` member), then sample ``c``: the rows read from it."""
    good = _without_marker(tar_bytes(samples("a")))
    tail = tar_bytes(samples("c"))
    out, _ = rows(write_tar(tmp_path / "h.tar", good + hostile + tail))
    return out, len(good)


def _corrupt_after_a(out, start: int, why: str) -> None:
    assert [c["__key__"] for c, _, _ in out] == ["a", None], out
    assert out[0][1] == ""
    assert out[1][1].startswith("corrupt_shard: ") and f"is not a valid tar from byte {start} on: " in out[1][1]
    assert why in out[1][1], out[1][1]


@pytest.mark.parametrize("value", ["\u0663", "\u00b2", "\uff13", "9" * 5000, "1" * 21, " 3", "-3", "3.0"],
                         ids=["arabic-indic", "superscript", "fullwidth", "5000-digits", "21-digits", "space",
                              "negative", "fraction"])
def test_a_pax_size_that_is_not_bounded_ascii_decimal_is_corrupt_shard(tmp_path, value):
    out, start = _shard(tmp_path, _pax_member("b.jpg", b"IMG", {"size": value}))
    _corrupt_after_a(out, start, "its PAX header's size ")
    assert len(out[1][1]) < 400  # names the value without carrying 5,000 digits


@pytest.mark.parametrize("key, value", [("mtime", "\u0661\u0662"), ("mtime", "7" * 5000), ("uid", "\u0b67"),
                                        ("gid", "1" * 4000)])
def test_other_pax_numbers_are_checked_too(tmp_path, key, value):
    out, start = _shard(tmp_path, _pax_member("b.jpg", b"IMG", {key: value}))
    _corrupt_after_a(out, start, f"its PAX header's {key} ")


def _raw_pax(record: bytes) -> bytes:
    """A PAX header block holding ``record`` as written (its length field included), then member ``b.jpg``."""
    header = bytearray(_without_marker(_pax_member("b.jpg", b"IMG", {"comment": "x"}))[:512])
    header[124:136] = b"%011o\0" % len(record)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data = record + bytes(-len(record) % 512)
    member = _without_marker(tar_bytes([("b.jpg", b"IMG")], fmt=tarfile.USTAR_FORMAT))
    return bytes(header) + data + member


@pytest.mark.parametrize("record", [b"9" * 5000 + b" size=3\n", b"99 size=3\n"], ids=["5000-digits", "past-end"])
def test_a_pax_record_length_that_is_huge_or_past_the_header_is_corrupt_shard(tmp_path, record):
    out, start = _shard(tmp_path, _raw_pax(record))
    _corrupt_after_a(out, start, "its PAX header has a malformed record at byte 0")


@pytest.mark.parametrize("start, end, what", [(100, 108, "mode"), (136, 148, "mtime"), (329, 337, "devmajor")])
def test_a_ustar_number_that_is_not_octal_is_corrupt_shard_under_a_valid_checksum(tmp_path, start, end, what):
    block = bytearray(_without_marker(tar_bytes([("b.jpg", b"IMG")], fmt=tarfile.USTAR_FORMAT)))
    block[start:end] = "\u0661".encode().ljust(end - start, b"\0")  # an Arabic-Indic one: not octal
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:512])
    out, at = _shard(tmp_path, bytes(block))
    _corrupt_after_a(out, at, f"its {what} field ")


@pytest.mark.parametrize("records", [{"size": "0" * 17 + "3"}, {"mtime": "-1700000000.123456789"},
                                     {"mtime": "1700000000", "uid": "4294967295", "gid": "0"}])
def test_bounded_ascii_numbers_still_read(tmp_path, records):
    out, _ = _shard(tmp_path, _pax_member("b.jpg", b"IMG", records))
    assert [(c["__key__"], r.split(":")[0]) for c, r, _ in out] == [("a", ""), ("b", "null_text"), ("c", "")]
    assert [image for _, _, image in out] == [b"IMGa", None, b"IMGc"]  # b has no text, so its image is not read


def test_a_run_over_a_shard_with_a_5000_digit_size_completes_with_one_corrupt_row(tmp_path, tiny_model_dir):
    good = _without_marker(tar_bytes(samples("a")))
    write_tar(tmp_path / "s.tar", good + _pax_member("b.jpg", b"IMG", {"size": "9" * 5000}))
    run = cli("s.tar", "-m", tiny_model_dir, "-o", "out.jsonl", cwd=tmp_path)
    assert run.returncode == 3 and "Traceback" not in run.stderr, run.stderr  # 3: done, not one row scored
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["__key__"], r["longclip_score_error"].split(":")[0]) for r in out] == [
        ("a", "not_an_image"), (None, "corrupt_shard")]
    assert "its PAX header's size '99999999999999999999'...(5000 characters)" in out[1]["longclip_score_error"]
    assert out[1]["longclip_score"] is None  # NaN, written as null
