"""WebDataset shards in: brace patterns, finding shards, grouping members into samples as the webdataset library
does, every hostile shard as a row reason (never an exception), flat memory, and the same pixels as image files."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from longclip.runtime.contract import errors
from longclip.runtime.contract.errors import InputError
from longclip.runtime.contract.rows import ABSENT
from longclip.runtime.decode.preprocess import decode_image
from longclip.runtime.inputs import webdataset
from longclip.runtime.inputs.tarstream import TarStream
from longclip.runtime.inputs.webdataset import WdsOptions, WdsReader, expand_braces, find_tar_shards, is_webdataset

# -- helpers -------------------------------------------------------------------------------------------------------
_TYPES = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}


def tar_bytes(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    """A tar of ``members``: ``(name, bytes)`` for a file, ``(name, "dir" / "symlink" / "hardlink" / "fifo"[,
    target])`` for the others."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, *rest in members:
            info = tarfile.TarInfo(name)
            if isinstance(rest[0], bytes):
                info.size = len(rest[0])
                tar.addfile(info, io.BytesIO(rest[0]))
            else:
                info.type, info.linkname = _TYPES[rest[0]], rest[1] if len(rest) > 1 else ""
                tar.addfile(info)
    return buffer.getvalue()


def write_tar(path, members, fmt=tarfile.PAX_FORMAT):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(members, fmt) if not isinstance(members, bytes) else members)
    return path


def rows(location, opts=None, n=1000, **keys):
    """``[(cells, reason, image bytes)]`` of every row, and the reader."""
    reader = WdsReader(location, opts, **keys)
    out = []
    for chunk in reader.read_chunks(n):
        assert len(chunk.frame) == len(chunk.reasons) == len(chunk.images)
        assert list(chunk.frame.columns) == reader.columns
        out += [(cells, reason, image) for cells, reason, image in
                zip(chunk.frame.to_dict("records"), chunk.reasons, chunk.images)]
    assert len(out) == reader.n_rows
    return out, reader


def samples(*keys, image=b"IMG", text=b"a caption"):
    return [m for k in keys for m in ((f"{k}.jpg", image + k.encode()), (f"{k}.txt", text))]


def offsets(data: bytes) -> dict[str, int]:
    """Header offset of each member (tarfile's own reading)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m.offset for m in tar.getmembers()}


# -- brace patterns ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "names"), [
    ("s/{00000..00002}.tar", ["s/00000.tar", "s/00001.tar", "s/00002.tar"]),
    ("{8..10}.tar", ["8.tar", "9.tar", "10.tar"]),
    ("{08..10}.tar", ["08.tar", "09.tar", "10.tar"]),
    ("{8..010}.tar", ["008.tar", "009.tar", "010.tar"]),
    ("{0..2}.tar", ["0.tar", "1.tar", "2.tar"]),
    ("{3..1}", ["3", "2", "1"]),
    ("{0..10..5}", ["0", "5", "10"]),
    ("{10..0..5}", ["10", "5", "0"]),
    ("{a,b,c}.tar", ["a.tar", "b.tar", "c.tar"]),
    ("x{,.old}.tar", ["x.tar", "x.old.tar"]),
    ("{a,b}/{0..1}-{x,y}.tar", ["a/0-x.tar", "a/0-y.tar", "a/1-x.tar", "a/1-y.tar",
                               "b/0-x.tar", "b/0-y.tar", "b/1-x.tar", "b/1-y.tar"]),
    ("plain.tar", ["plain.tar"]),
])
def test_brace_patterns_expand_in_order(pattern, names):
    assert expand_braces(pattern) == names


@pytest.mark.parametrize(("pattern", "message"), [
    ("s/{0..3.tar", "is never closed"),
    ("s/0..3}.tar", "closes no brace"),
    ("s/{a,{b,c}}.tar", "nested braces are not supported"),
    ("s/{a}.tar", "{a} is neither a list {a,b} nor a range {0..9}"),
    ("s/{}.tar", "{} is neither a list"),
    ("s/{a..e}.tar", "(numbers only)"),
    ("s/{1..}.tar", "is neither a list"),
    ("s/{-1..3}.tar", "is neither a list"),
    ("s/{0..4..0}.tar", "the step of {0..4..0} is 0"),
    ("s/{0..9999}{0..9999}.tar", "stands for more than 1,000,000 names"),
])
def test_malformed_brace_patterns_are_refused_naming_them(pattern, message):
    with pytest.raises(InputError) as error:
        expand_braces(pattern)
    assert repr(pattern) in str(error.value) and message in str(error.value)


def test_a_huge_range_is_refused_without_making_its_names():
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="more than 1,000,000 names"):
            expand_braces("{0..99999999999999}.tar")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # a million names alone would take ~60 MB


# -- finding shards ------------------------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    for name in ("d/b.tar", "d/a.tar", "d/sub/c.tar", "d/.hidden.tar", "d/_tmp/x.tar", "d/.git/y.tar",
                 "d/notes.txt", "d/UPPER.TAR"):
        write_tar(tmp_path / name, samples("k"))
    return tmp_path


def test_a_folder_gives_every_visible_tar_below_it_sorted(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert [str(p) for p in find_tar_shards("d")] == ["d/UPPER.TAR", "d/a.tar", "d/b.tar", "d/sub/c.tar"]


def test_a_glob_gives_its_tar_matches_sorted(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert [str(p) for p in find_tar_shards("d/*.tar")] == ["d/a.tar", "d/b.tar"]
    assert [str(p) for p in find_tar_shards("d/[ab].tar")] == ["d/a.tar", "d/b.tar"]
    assert [str(p) for p in find_tar_shards("d/*")] == ["d/UPPER.TAR", "d/a.tar", "d/b.tar"]  # .txt left out
    assert [str(p) for p in find_tar_shards("d/*/*.tar")] == ["d/sub/c.tar"]  # _tmp, .git are hidden
    with pytest.raises(InputError, match=r"no \.tar shards match 'd/\*\.tgz'"):
        find_tar_shards("d/*.tgz")


def test_a_brace_pattern_gives_its_names_in_order(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert [str(p) for p in find_tar_shards("d/{b,a}.tar")] == ["d/b.tar", "d/a.tar"]
    assert [str(p) for p in find_tar_shards("d/{sub,b.tar}")] == ["d/sub/c.tar", "d/b.tar"]


def test_a_missing_shard_of_a_brace_pattern_is_named(tree, monkeypatch):
    monkeypatch.chdir(tree)
    with pytest.raises(InputError) as error:
        find_tar_shards("d/{a,b,c,e}.tar")
    assert str(error.value) == ("shard 'd/c.tar' of 'd/{a,b,c,e}.tar' does not exist (2 of the 4 names it stands for "
                                "are missing): fix the pattern or fetch the missing shards")
    with pytest.raises(InputError, match="names shard 'd/a.tar' more than once"):
        find_tar_shards("d/{a,b,a}.tar")


@pytest.mark.parametrize(("location", "message"), [
    ("nothing.tar", "input 'nothing.tar' does not exist"),
    ("d/notes.txt", "'d/notes.txt' is not a .tar file"),
    ("empty", "folder 'empty' holds no .tar shards"),
    ("s3://bucket/{0..9}.tar", "read from local paths only"),
    ("pipe:curl -s http://x/a.tar", "read from local paths only"),
])
def test_nothing_to_read_is_an_input_error(tree, monkeypatch, location, message):
    monkeypatch.chdir(tree)
    (tree / "empty").mkdir()
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        find_tar_shards(location)


def test_what_makes_an_input_webdataset(tree, monkeypatch):
    monkeypatch.chdir(tree)
    (tree / "mixed").mkdir()
    write_tar(tree / "mixed/00000.tar", samples("k"))
    (tree / "mixed/00000.parquet").write_bytes(b"")  # img2dataset's side files: ambiguous, name the *.tar
    (tree / "tables").mkdir()
    (tree / "tables/a.jsonl").write_text("{}\n")
    assert is_webdataset("d") and is_webdataset("d/*.tar") and is_webdataset("d/{00..99}.tar")
    assert is_webdataset("missing.tar") and is_webdataset("s/{0..3.tar")  # its own error comes from the reader
    assert not is_webdataset("mixed") and is_webdataset("mixed/*.tar")
    assert not is_webdataset("tables") and not is_webdataset("d/*") and not is_webdataset("pairs.jsonl")


def test_an_unreadable_shard_is_an_input_error_up_front(tmp_path, monkeypatch):
    shard = write_tar(tmp_path / "s.tar", samples("k"))
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        shard.chmod(0)
        with pytest.raises(InputError, match="cannot read shard .*s.tar.*Permission denied"):
            WdsReader(shard)
        shard.chmod(0o644)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(webdataset, "open", refuse, raising=False)
    with pytest.raises(InputError, match=r"cannot read shard '.*s\.tar': Permission denied: check that it is"):
        WdsReader(shard)


# -- grouping ------------------------------------------------------------------------------------------------------
def test_a_shard_reads_as_one_row_per_sample(tmp_path):
    shard = write_tar(tmp_path / "s.tar", samples("000001", "000002"))
    out, reader = rows(shard)
    assert reader.columns == ["__key__", "__shard__", "image_path", "text"] and reader.format == ".tar"
    assert reader.path == shard and reader.paths == [shard]
    assert [cells for cells, _, _ in out] == [
        {"__key__": "000001", "__shard__": str(shard), "image_path": "000001.jpg", "text": "a caption"},
        {"__key__": "000002", "__shard__": str(shard), "image_path": "000002.jpg", "text": "a caption"}]
    assert [(reason, image) for _, reason, image in out] == [("", b"IMG000001"), ("", b"IMG000002")]
    assert [str(f.type) for f in reader.schema] == ["string"] * 4
    assert [list(f) for f in reader.chunks(1)] == [reader.columns] * 2


def test_keys_split_at_the_first_dot_of_the_base_name(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [
        ("dir.v2/000001.JPG", b"j1"), ("dir.v2/000001.txt", b"one"),  # a dot in a folder name is not a split
        ("a.b.c.json", b"{}"), ("a.txt", b"two"), ("a.jpg", b"j2"),  # key a, extension b.c.json
        ("k.seg.png", b"mask"), ("k.txt", b"three"),  # seg.png is not png
        ("README", b"no extension"), ("__meta__/info.json", b"{}"), ("__index__.json", b"{}"),
        ("._k2.jpg", b"appledouble"), ("dir/._k2.jpg", b"appledouble"), ("k2.jpg", b"j3"), ("k2.TXT", b"four"),
    ])
    out, _ = rows(shard)
    assert [(c["__key__"], c["image_path"], c["text"], r.split(":")[0], i) for c, r, i in out] == [
        ("dir.v2/000001", "dir.v2/000001.JPG", "one", "", b"j1"),
        ("a", "a.jpg", "two", "", b"j2"),
        ("k", None, "three", "missing_file", None),
        ("__index__", None, None, "missing_file", None),  # not a metadata name for the library either
        ("k2", "k2.jpg", "four", "", b"j3"),
    ]
    assert out[2][1] == f"missing_file: sample 'k' in '{shard}' has no jpg/jpeg/png/webp member"


def test_the_image_is_chosen_by_extension_priority_not_member_order(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [
        ("a.webp", b"w"), ("a.png", b"p"), ("a.txt", b"t"), ("a.jpg", b"j"),
        ("b.png", b"p"), ("b.webp", b"w"), ("b.txt", b"t"),
    ])
    assert [(c["image_path"], i) for c, _, i in rows(shard)[0]] == [("a.jpg", b"j"), ("b.png", b"p")]
    opts = WdsOptions(image_ext=("webp", "png"))
    assert [(c["image_path"], i) for c, _, i in rows(shard, opts)[0]] == [("a.webp", b"w"), ("b.webp", b"w")]


def test_members_out_of_order_make_separate_samples_as_in_the_library(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.jpg", b"1"), ("b.jpg", b"2"), ("a.txt", b"x"), ("b.txt", b"y")])
    out, _ = rows(shard)
    assert [(c["__key__"], r.split(":")[0]) for c, r, _ in out] == [
        ("a", "null_text"), ("b", "null_text"), ("a", "missing_file"), ("b", "missing_file")]
    assert out[0][1] == f"null_text: sample 'a' in '{shard}' has no txt member"


def test_a_duplicate_member_the_row_reads_gives_a_reason_others_are_ignored(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [
        ("a.jpg", b"1"), ("a.txt", b"x"), ("a.jpg", b"2"),
        ("b.jpg", b"3"), ("b.txt", b"y"), ("b.txt", b"z"),
        ("c.jpg", b"4"), ("c.txt", b"w"), ("c.cls", b"0"), ("c.cls", b"1"),
        ("d.jpg", b"5"), ("d.JPG", b"6"), ("d.txt", b"v"),
    ])
    out, _ = rows(shard)
    assert out[0][1] == (f"duplicate_member: sample 'a' in '{shard}' has more than one 'jpg' member (again at byte "
                         "2048): which one is meant is unknown")
    assert [r.split(":")[0] for _, r, _ in out] == ["duplicate_member", "duplicate_member", "", "duplicate_member"]
    assert out[2][2] == b"4"


# -- hostile shards ------------------------------------------------------------------------------------------------
def test_members_that_are_not_files(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [
        ("a.jpg", "dir"), ("a.txt", b"x"),
        ("b.jpg", "symlink", "../../etc/passwd"), ("b.txt", b"y"),
        ("c0.jpg", b"real"), ("c.jpg", "hardlink", "c0.jpg"), ("c.txt", b"z"),
        ("d.jpg", b"img"), ("d.txt", "symlink", "elsewhere.txt"),
        ("e.jpg", "fifo"), ("e.txt", b"w"),
        ("dir", "dir"), ("f.cls", "symlink", "x"), ("f.jpg", b"ok"), ("f.txt", b"v"),
    ])
    out, _ = rows(shard)
    reasons = {c["__key__"]: r for c, r, _ in out}
    assert reasons == {
        "a": f"directory: member 'a.jpg' of '{shard}' is a directory",
        "b": f"not_a_file: member 'b.jpg' of '{shard}' is a symlink to '../../etc/passwd', not a file",
        "c0": "null_text: sample 'c0' in '" + str(shard) + "' has no txt member",
        "c": f"not_a_file: member 'c.jpg' of '{shard}' is a hard link to 'c0.jpg', not a file",
        "d": f"null_text: member 'd.txt' of '{shard}' is a symlink to 'elsewhere.txt', not a file",
        "e": f"not_a_file: member 'e.jpg' of '{shard}' is a fifo, not a file",
        "f": "",  # a folder entry and a link the row does not read are skipped, as the library skips them
    }
    assert [c["__key__"] for c, _, _ in out] == ["a", "b", "c0", "c", "d", "e", "f"]


def test_text_that_is_not_utf8_is_a_bad_encoding_row(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.jpg", b"1"), ("a.txt", b"caf\xe9"), ("b.jpg", b"2"),
                                           ("b.txt", "\ufeffcafé".encode())])
    out, _ = rows(shard)
    assert out[0][1] == f"bad_encoding: member 'a.txt' of '{shard}' is not valid UTF-8 (byte 0xe9 at 3)"
    assert out[0][0]["text"] == "caf\udce9" and out[0][2] is None
    assert out[1][0]["text"] == "café" and out[1][1] == ""  # a UTF-8 BOM is dropped, as from a CSV


def test_a_member_name_that_is_not_utf8_is_a_bad_encoding_row(tmp_path):
    data = tar_bytes([("a\udcff.jpg", b"1"), ("a\udcff.txt", b"x")], fmt=tarfile.GNU_FORMAT)
    assert b"a\xff.jpg" in data
    out, _ = rows(write_tar(tmp_path / "s.tar", data))
    assert out[0][1].startswith("bad_encoding: the name of sample 'a\\udcff' in ") and out[0][2] is None


def _three_samples(tmp_path):
    members = samples("a", "b", "c", image=b"I" * 700, text=b"t" * 30)
    data = tar_bytes(members, fmt=tarfile.USTAR_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        spans = [(m.name, m.offset, m.offset_data, m.offset_data + m.size) for m in tar.getmembers()]
    return data, spans


def test_a_shard_truncated_anywhere_never_raises_and_says_where(tmp_path):
    data, spans = _three_samples(tmp_path)
    end = spans[-1][3]
    for cut in sorted(set(range(0, len(data), 37)) | {s[k] + d for s in spans for k in (1, 2, 3) for d in (0, 1)}):
        shard = write_tar(tmp_path / "cut.tar", data[:cut])
        out, _ = rows(shard)
        inside = [s for s in spans if s[1] < cut < s[3]]
        if not inside:  # at a member boundary, in padding, or in the end-of-archive marker: what is there is read
            assert all(r == "" or r.startswith("null_text: ") for _, r, _ in out), (cut, out)
            assert len(out) == (3 if cut >= end else len({s[0][0] for s in spans if s[3] <= cut}))
            continue
        name, header, start, stop = inside[0]
        if cut < start:  # inside a header
            assert out[-1][1] == (f"corrupt_shard: '{shard}' is not a valid tar from byte {header} on: the file "
                                  f"ends inside a header ({cut - header} of 512 bytes)")
        else:
            assert out[-1][1] == (f"undecodable: member '{name}' of '{shard}' is truncated at byte {cut} (the shard "
                                  f"ends {cut - start} bytes into its {stop - start})")
            assert out[-1][0]["__key__"] == name.split(".")[0] and out[-1][2] is None
        assert all(r == "" or r.startswith("null_text: ") for _, r, _ in out[:-1])  # a sample cut before its txt


def test_a_flipped_header_byte_ends_the_shard_with_one_corrupt_row(tmp_path):
    data, spans = _three_samples(tmp_path)
    header = spans[2][1]  # b.jpg
    for field_offset in (0, 100, 124, 130, 148, 156, 257, 300, 511):
        broken = bytearray(data)
        broken[header + field_offset] ^= 0x55
        out, _ = rows(write_tar(tmp_path / "x.tar", bytes(broken)))
        assert [c["__key__"] for c, _, _ in out] == ["a", None], field_offset
        assert out[0][1] == "" and out[1][0]["__shard__"] == str(tmp_path / "x.tar")
        assert out[1][1].startswith(f"corrupt_shard: '{tmp_path / 'x.tar'}' is not a valid tar from byte {header} on: ")
        assert "checksum" in out[1][1]


def test_garbage_and_concatenated_tars_are_reported_not_ignored(tmp_path):
    good = tar_bytes(samples("a"))
    marker = offsets(good)["a.txt"] + 1024
    cases = {
        "tail.tar": (good + b"\x00garbage" * 50, len(good) + 1, f"data follows the end-of-archive marker at byte "
                                                                   f"{marker}"),
        "cat.tar": (good + tar_bytes(samples("b")), len(good), "a second tar appended to the first?"),
        "nomarker.tar": (good[:marker] + os.urandom(1024), marker, "checksum"),
    }
    for name, (data, where, why) in cases.items():
        out, _ = rows(write_tar(tmp_path / name, data))
        assert [c["__key__"] for c, _, _ in out] == ["a", None], name
        assert out[1][1].startswith(f"corrupt_shard: '{tmp_path / name}' is not a valid tar from byte {where} on: ")
        assert why in out[1][1], (name, out[1][1])


def test_a_compressed_or_garbage_file_is_one_corrupt_row(tmp_path):
    shard = write_tar(tmp_path / "gz.tar", gzip.compress(tar_bytes(samples("a"))))
    out, _ = rows(shard)
    assert len(out) == 1 and out[0][1].startswith(f"corrupt_shard: '{shard}' is not a valid tar from byte 0 on: ")
    assert out[0][1].endswith("; it is gzip-compressed: decompress it to a plain .tar")
    assert [r for _, r, _ in rows(write_tar(tmp_path / "r.tar", os.urandom(5000)))[0]][0].startswith("corrupt_shard")
    assert rows(write_tar(tmp_path / "empty.tar", b""))[0] == []
    assert rows(write_tar(tmp_path / "zeros.tar", bytes(10240)))[0] == []


def _header(name: bytes, size_field: bytes, flag: bytes = b"0") -> bytes:
    block = bytearray(512)
    block[: len(name)] = name
    block[100:108], block[156:157], block[257:263] = b"0000644\0", flag, b"ustar\0"
    block[124:136] = size_field.ljust(12, b"\0")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_a_header_with_a_valid_checksum_and_a_lying_size(tmp_path):
    good = tar_bytes(samples("a"))[: offsets(tar_bytes(samples("a")))["a.txt"] + 1024]
    huge = _header(b"b.jpg", b"77777777777\0") + b"x" * 600
    out, _ = rows(write_tar(tmp_path / "huge.tar", good + huge))
    assert out[-1][1] == (f"undecodable: member 'b.jpg' of '{tmp_path / 'huge.tar'}' is truncated at byte "
                          f"{len(good) + 1112} (the shard ends 600 bytes into its 8589934591)")
    out, _ = rows(write_tar(tmp_path / "nan.tar", good + _header(b"b.jpg", b"12x4\0") + bytes(1024)))
    assert out[-1][1].endswith(f"from byte {len(good)} on: its size field b'12x4\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
                               "\\x00' is not an octal number")
    out, _ = rows(write_tar(tmp_path / "neg.tar", good + _header(b"b.jpg", b"\xff" * 12) + bytes(1024)))
    assert out[-1][1].endswith("its size field is negative (-1)")


def test_a_corrupt_shard_is_followed_by_the_next_shard(tmp_path):
    data, spans = _three_samples(tmp_path)
    write_tar(tmp_path / "d/0.tar", data[: spans[2][1]] + os.urandom(512) + data[spans[2][1]:])
    write_tar(tmp_path / "d/1.tar", samples("z"))
    out, reader = rows(tmp_path / "d", n=2)
    assert [(c["__key__"], c["__shard__"], r.split(":")[0]) for c, r, _ in out] == [
        ("a", str(tmp_path / "d/0.tar"), ""), (None, str(tmp_path / "d/0.tar"), "corrupt_shard"),
        ("z", str(tmp_path / "d/1.tar"), "")]
    assert reader.n_rows == 3


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.integers(0, 4096))
def test_any_damage_gives_rows_never_an_exception(tmp_path, edits, cut):
    data = bytearray(tar_bytes(samples("a", "b", image=b"I" * 300) + [("b.json", b'{"w": 1}')]))
    for where, value in edits:
        data[where % len(data)] = value
    out, reader = rows(write_tar(tmp_path / "f.tar", bytes(data[: max(cut, 1)])), WdsOptions(keep=("w",)), n=2)
    assert all(r == "" or r.split(":")[0] in (*errors.IMAGE_CODES, *errors.TEXT_CODES, errors.BAD_ENCODING,
                                              *errors.SHARD_CODES) for _, r, _ in out)
    assert sum(r.startswith("corrupt_shard") for _, r, _ in out) <= 1


# -- text from json, kept fields -----------------------------------------------------------------------------------
def test_text_from_a_json_field_and_kept_fields_with_mixed_types(tmp_path):
    def sample(key, meta):
        return [(f"{key}.jpg", b"i"), (f"{key}.json", meta if isinstance(meta, bytes) else json.dumps(meta).encode())]

    shard = write_tar(tmp_path / "s.tar", [
        *sample("a", {"caption": "a cat", "meta": {"caption": "deep"}, "w": 640, "mix": 1, "tags": ["x"]}),
        *sample("b", {"caption": "a dog", "w": 480, "mix": "one", "tags": ["y", "z"]}),
        *sample("c", {"caption": 3, "w": None}),
        *sample("d", {"caption": None}),
        *sample("e", {"other": 1}),
        *sample("f", b"{not json"),
        *sample("g", [1, 2]),
        *sample("h", b'{"caption": "caf\xe9"}'),
        ("i.jpg", b"i"),
    ])
    opts = WdsOptions(text="json:caption", keep=("w", "mix", "tags", "meta.caption"))
    out, reader = rows(shard, opts)
    assert reader.columns == ["__key__", "__shard__", "image_path", "text", "w", "mix", "tags", "meta.caption"]
    assert [(c["text"], r) for c, r, _ in out] == [
        ("a cat", ""), ("a dog", ""),
        ("3", f"not_text: sample 'c' in '{shard}': its json field 'caption' is not a string: int 3"),
        (None, f"null_text: sample 'd' in '{shard}': its json field 'caption' is null"),
        (None, f"null_text: sample 'e' in '{shard}': its json member has no field 'caption'"),
        (None, f"null_text: member 'f.json' of '{shard}' is not valid JSON (Expecting property name enclosed in "
               "double quotes: line 1 column 2 (char 1))"),
        (None, f"null_text: member 'g.json' of '{shard}' is a JSON list, not an object"),
        (None, f"bad_encoding: member 'h.json' of '{shard}' is not valid UTF-8 (byte 0xe9 at 16)"),
        (None, f"null_text: sample 'i' in '{shard}' has no json member"),
    ]
    assert [c["w"] for c, _, _ in out] == [640, 480, None, *[ABSENT] * 6]
    assert [c["mix"] for c, _, _ in out][:3] == [1, "one", ABSENT] and out[0][0]["tags"] == ["x"]
    assert [c["meta.caption"] for c, _, _ in out][:2] == ["deep", ABSENT]
    assert {f.name: str(f.type) for f in reader.schema} == {
        "__key__": "string", "__shard__": "string", "image_path": "string", "text": "string", "w": "int64",
        "mix": "string", "tags": "list<item: string>", "meta.caption": "string"}
    kept = rows(shard, WdsOptions(keep=("w",)))[0]  # text from .txt: a bad json costs only its kept fields
    assert [c["w"] for c, _, _ in kept][:3] == [640, 480, None] and kept[5][0]["w"] is ABSENT


def test_dotted_json_text(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.jpg", b"i"), ("a.json", b'{"meta": {"caption": "deep"}}')])
    assert rows(shard, WdsOptions(text="json:meta.caption"))[0][0][0]["text"] == "deep"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"image_ext": "jpg"}, "give one or more extensions"),
    ({"image_ext": ()}, "give one or more extensions"),
    ({"image_ext": ("jpg", "JPG")}, "image_ext names 'jpg' more than once"),
    ({"image_ext": ("a/b",)}, "is not a member extension"),
    ({"text": "jpg"}, "text 'jpg' is also an image extension"),
    ({"text": "json:"}, "text '' is not a json field"),
    ({"text": "json:a..b"}, "text 'a..b' is not a json field"),
    ({"text": "csv:caption"}, "text 'csv:caption' is not a member extension"),
    ({"keep": "url"}, "give a tuple of json fields"),
    ({"keep": ("url", "url")}, "keep names 'url' more than once"),
])
def test_options_are_checked(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        WdsOptions(**kwargs)


def test_column_names_that_clash_are_refused(tmp_path):
    shard = write_tar(tmp_path / "s.tar", samples("a"))
    with pytest.raises(InputError, match="column '__key__' would be both"):
        WdsReader(shard, WdsOptions(keep=("__key__",)))
    with pytest.raises(InputError, match="column 'text' would be both"):
        WdsReader(shard, image_key="text")
    assert WdsReader(shard, image_key="jpg", text_key="caption").columns == ["__key__", "__shard__", "jpg", "caption"]


# -- tar formats, hashing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_and_unicode_names_read_as_tarfile_reads_them(tmp_path, fmt):
    folder = "/".join(["deep-folder-name"] * 8)  # 135 characters: ustar prefix, GNU long name, PAX path
    names = [f"{folder}/000001.jpg", f"{folder}/000001.txt", "x" * 120 + ".jpg", "x" * 120 + ".txt"]
    if fmt == tarfile.USTAR_FORMAT:
        names = names[:2]
    if fmt == tarfile.PAX_FORMAT:
        names += ["café/ünï.jpg", "café/ünï.txt"]
    data = tar_bytes([(n, n.encode()) for n in names], fmt)
    stream = TarStream(io.BytesIO(data), len(data))
    assert [(e.name, stream.read(e)) for e in stream.entries()] == [(n, n.encode()) for n in names]
    assert stream.stop is None
    out, _ = rows(write_tar(tmp_path / "s.tar", data))
    assert [c["image_path"] for c, r, _ in out if not r] == names[::2]


def test_sha256_covers_every_byte_of_every_shard_in_order(tmp_path):
    a = write_tar(tmp_path / "d/a.tar", samples("a"))
    b = write_tar(tmp_path / "d/b.tar", samples("b"))
    expected = hashlib.sha256(hashlib.sha256(a.read_bytes()).digest() + hashlib.sha256(b.read_bytes()).digest())
    assert WdsReader(tmp_path / "d").sha256 == expected.hexdigest()
    before = WdsReader(tmp_path / "d").sha256
    write_tar(b, samples("b", text=b"a kaption"))  # the same size, the same rows but one letter
    assert b.stat().st_size == len(tar_bytes(samples("b"))) and WdsReader(tmp_path / "d").sha256 != before
    assert WdsReader(tmp_path / "d/{b,a}.tar").sha256 != WdsReader(tmp_path / "d/{a,b}.tar").sha256


# -- flat memory, the same pixels ----------------------------------------------------------------------------------
def test_ten_thousand_samples_stream_in_flat_memory(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    shard = tmp_path / "big.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(10_000):
            for ext, data in (("jpg", image), ("txt", f"caption {i}".encode()), ("json", b'{"w": %d}' % i)):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    size = shard.stat().st_size
    tracemalloc.start()
    try:
        reader = WdsReader(shard, WdsOptions(keep=("w",)))
        _, scan_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        count = sum(len(chunk.frame) for chunk in reader.read_chunks(256))
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.n_rows == count == 10_000 and size > 50e6
    # a pass that kept the samples would hold ~30 MB of image bytes; one 256-row chunk holds ~0.8 MB
    assert scan_peak < 3e6 and read_peak < 6e6, (scan_peak, read_peak)


def test_images_as_members_decode_to_the_same_pixels_as_image_files(tmp_path):
    rng = np.random.default_rng(3)
    members = []
    for key, fmt in (("p", "PNG"), ("j", "JPEG"), ("w", "WEBP"), ("g", "PNG")):
        mode = "L" if key == "g" else "RGB"
        image = Image.fromarray(rng.integers(0, 256, (37, 53, 3 if mode == "RGB" else 1), dtype=np.uint8).squeeze(),
                                mode)
        ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[fmt]
        image.save(tmp_path / f"{key}.{ext}", fmt)
        members += [(f"{key}.{ext}", (tmp_path / f"{key}.{ext}").read_bytes()), (f"{key}.txt", b"x")]
    out, _ = rows(write_tar(tmp_path / "s.tar", members))
    assert len(out) == 4
    for cells, reason, data in out:
        assert reason == ""
        np.testing.assert_array_equal(decode_image(data, 32), decode_image(tmp_path / cells["image_path"], 32))


def test_a_member_too_large_to_read_costs_its_row_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(webdataset, "MAX_MEMBER_BYTES", 64)
    write_tar(tmp_path / "s.tar", [("a.jpg", b"I" * 65), ("a.txt", b"fine"),  # the image: too large
                                   ("b.jpg", b"IMG"), ("b.txt", b"T" * 65),  # the text: too large
                                   ("c.png", b"P" * 65), ("c.jpg", b"IMG"), ("c.txt", b"ok")])  # png unused
    out, _ = rows(tmp_path / "s.tar")
    (_, a, a_image), (_, b, b_image), (_, c, c_image) = out
    assert a.startswith(f"{errors.TOO_MANY_PIXELS}: member 'a.jpg' of ") and "is 65 bytes, more than the 64" in a
    assert b.startswith(f"{errors.BAD_TEXT}: member 'b.txt' of ") and "it was not read" in b
    assert (a_image, b_image, c, c_image) == (None, None, "", b"IMG")


def test_shards_already_found_are_taken_as_they_are_not_as_patterns(tmp_path):
    folder = tmp_path / "run[1]{a,b}"
    folder.mkdir()
    write_tar(folder / "00000.tar", samples("k"))
    with pytest.raises(InputError):
        WdsReader(str(folder / "00000.tar"))  # as a pattern, it names other files
    out, _ = rows([folder / "00000.tar"])
    assert [r for _, r, _ in out] == [""]


def test_the_reports_member_reader_reads_what_the_rows_were_read_from(tmp_path):
    from longclip.runtime.contract.errors import ImageError
    from longclip.runtime.inputs.tarshards import MemberReader

    shard = tmp_path / "s.tar"
    write_tar(shard, [("a.jpg", b"FIRST"), ("b.jpg", b"B"), ("a.jpg", b"SECOND")])
    assert [cells["image_path"] for cells, _, _ in rows(shard)[0]] == ["a.jpg", "b.jpg", "a.jpg"]
    reader = MemberReader()
    try:
        assert reader.read(shard, "b.jpg") == b"B"
        with pytest.raises(ImageError, match=r"^duplicate_member: member 'a.jpg' of shard .* is there 2 times"):
            reader.read(shard, "a.jpg")  # never the other sample's image
        with pytest.raises(ImageError, match=r"^missing_file: .*'c.jpg'.*no such member"):
            reader.read(shard, "c.jpg")
    finally:
        reader.close()
