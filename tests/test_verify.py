"""Graphs hashed against their manifest once, then trusted by their stat stamp until a file changes."""

import logging
import os
import shutil
import time

import pytest

from conftest import copy_model
from longclip.runtime import LongCLIP, ModelDirError
from longclip.runtime.contract.manifest import read_manifest
from longclip.runtime.model import verify


@pytest.fixture()
def folder(tiny_model_dir, tmp_path, monkeypatch):
    """A copy of the tiny model, settled: its files changed longer ago than ``SETTLE_NS`` (here 50 ms)."""
    monkeypatch.setenv("LONGCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(verify, "SETTLE_NS", 50_000_000)
    copied = copy_model(tiny_model_dir, tmp_path / "tiny")
    time.sleep(0.06)
    return copied


@pytest.fixture()
def hashed(monkeypatch):
    """The names of the files hashed, in order."""
    seen = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda path: seen.append(path.name) or real(path))
    return seen


def _check(folder, tower="vision"):
    verify.verify_graph(read_manifest(folder).graphs[tower])


def test_a_second_load_hashes_nothing(folder, hashed, tmp_path):
    LongCLIP(folder, device="cpu")
    assert sorted(hashed) == ["text.onnx", "vision.onnx"]
    assert len(list((tmp_path / "cache" / "verified").glob("*.json"))) == 2  # under $LONGCLIP_CACHE
    LongCLIP(folder, device="cpu")
    assert sorted(hashed) == ["text.onnx", "vision.onnx"]


def _settle():
    time.sleep(0.06)  # past the fixture's SETTLE_NS


def test_touching_or_replacing_a_graph_hashes_it_again(folder, hashed):
    _check(folder)
    stat = (folder / "vision.onnx").stat()
    os.utime(folder / "vision.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _settle()
    _check(folder)
    _check(folder)
    assert hashed == ["vision.onnx", "vision.onnx"]
    shutil.copy(folder / "vision.onnx", folder / "copy")
    os.replace(folder / "copy", folder / "vision.onnx")  # the same bytes in a new inode
    _settle()
    _check(folder)
    _check(folder)
    assert hashed == ["vision.onnx"] * 3
    shutil.copy(folder / "text.onnx", folder / "copy")
    os.replace(folder / "copy", folder / "vision.onnx")
    with pytest.raises(ModelDirError, match="graph vision.onnx's sha256 is "):
        _check(folder)


def test_same_size_and_a_restored_mtime_are_still_caught(folder, hashed):
    """Writing a file sets its ctime to now, and os.utime cannot set it back: the stamp no longer matches. (The
    write comes more than a clock tick after the stamped ctime: what ``SETTLE_NS`` guarantees.)"""
    _check(folder)
    _check(folder)
    path = folder / "vision.onnx"
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert after.st_ctime_ns != before.st_ctime_ns
    with pytest.raises(ModelDirError, match="graph vision.onnx's sha256 is "):
        _check(folder)
    with pytest.raises(ModelDirError, match="graph vision.onnx's sha256 is "):  # a failed check stamps nothing
        _check(folder)
    assert hashed == ["vision.onnx"] * 3  # once to stamp, then twice for the changed file


def test_a_graph_written_just_now_is_hashed_until_it_settles(folder, hashed, monkeypatch):
    monkeypatch.setattr(verify, "SETTLE_NS", 2_000_000_000)
    (folder / "vision.onnx").write_bytes((folder / "vision.onnx").read_bytes())  # the same bytes, a new ctime
    _check(folder)
    _check(folder)
    assert hashed == ["vision.onnx", "vision.onnx"]


def test_an_unwritable_cache_still_loads(folder, hashed, tmp_path, monkeypatch, caplog):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("LONGCLIP_CACHE", str(tmp_path / "a-file" / "cache"))
    caplog.set_level(logging.DEBUG, logger="longclip.runtime.model.verify")
    assert LongCLIP(folder, device="cpu").encode_texts(["a cat"]).shape == (1, 32)
    LongCLIP(folder, device="cpu")
    assert sorted(hashed) == ["text.onnx", "text.onnx", "vision.onnx", "vision.onnx"]  # hashed every time
    assert "cannot write the stamp" in caplog.text


def test_an_unreadable_stamp_means_hashing_again(folder, hashed, tmp_path, caplog):
    _check(folder)
    (stamp,) = (tmp_path / "cache" / "verified").glob("*.json")
    stamp.write_text("{not json")
    caplog.set_level(logging.DEBUG, logger="longclip.runtime.model.verify")
    _check(folder)
    _check(folder)  # the stamp was rewritten
    assert hashed == ["vision.onnx", "vision.onnx"] and "cannot read the stamp" in caplog.text
    assert [p.name for p in stamp.parent.iterdir()] == [stamp.name]  # no temporary file left


def test_an_unreadable_graph_is_one_line(folder, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(verify, "sha256_file", denied)
    with pytest.raises(ModelDirError, match=r"cannot read graph '.*vision.onnx': Permission denied: check"):
        _check(folder)
