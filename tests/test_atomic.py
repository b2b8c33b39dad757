"""runtime/contract/atomic.py, the one home of atomic writes: a target holds the old bytes or the new ones, never part of
either; nothing temporary is left, whatever fails; the finished file has the umask's mode; ``durable`` syncs the
file before the rename and the folder after it."""

import os
import stat

import pytest

from longclip.runtime.contract import atomic


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_replaces_the_whole_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old and longer than the new bytes")
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _listing(tmp_path) == ["state.json"]


@pytest.mark.parametrize(("mask", "mode"), [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_the_finished_file_has_the_mode_of_a_new_file_under_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic.write_bytes(tmp_path / "out", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode


def test_an_error_in_the_block_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "part.parquet"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.replacing(target) as f:
            f.write(b"half of the new")
            assert len(_listing(tmp_path)) == 2  # the hidden temporary file, beside the target
            assert [n for n in _listing(tmp_path) if n != "part.parquet"][0].startswith(".part.parquet.")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and _listing(tmp_path) == ["part.parquet"]


def test_a_failed_rename_is_an_oserror_and_leaves_nothing(tmp_path):
    (tmp_path / "taken").mkdir()  # a folder cannot be replaced by a file
    with pytest.raises(OSError):
        atomic.write_bytes(tmp_path / "taken", b"x")
    assert _listing(tmp_path) == ["taken"]


def test_two_writers_of_one_target_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "model.json"
    with atomic.replacing(target) as first, atomic.replacing(target) as second:
        first.write(b"first")
        second.write(b"second")
        assert len(_listing(tmp_path)) == 2
    assert target.read_bytes() == b"first" and _listing(tmp_path) == ["model.json"]  # the outer block ends last


def test_durable_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "model.json"
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_bytes(target, b"{}", durable=True)
    assert synced == [("file", False), ("folder", True)]
    synced.clear()
    atomic.write_bytes(tmp_path / "chunk.npz", b"x")
    assert synced == []  # resume chunks and stamps: no sync asked, none paid for


def test_a_file_system_that_cannot_set_modes_still_gets_the_file(tmp_path, monkeypatch):
    def refuse(path, mode):
        raise PermissionError(1, "Operation not permitted", str(path))  # vfat without "quiet"

    monkeypatch.setattr(os, "chmod", refuse)
    atomic.write_bytes(tmp_path / "manifest.json", b"{}")
    assert (tmp_path / "manifest.json").read_bytes() == b"{}" and _listing(tmp_path) == ["manifest.json"]
