"""Issue 24, item 9: a damaged resume folder, through the real console script. A chunk that does not verify
(truncated, garbage, empty, a flipped byte, the wrong rows, a link, a folder) is scored again, said in one line,
and the output is the uninterrupted run's, byte for byte. A work folder that is a file or a symbolic link, or a
``state.json`` that cannot be trusted, is refused in one line naming it and the fix; a link is never followed.

| kind | cases |
| --- | ---: |
| a chunk that does not verify: recomputed, one line, the same bytes | 7 |
| the work folder a file or a link, with and without --resume | 4 |
| state.json garbage, a link, a FIFO | 3 |
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_fail_clean import interrupted
from test_hostile_rows import cli, refused, snapshot, succeeded

WORK = ".out.jsonl.longclip-run"


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, tiny_model_dir):
    """A run killed after 2 of its 4 chunks, its arguments, and the output of the same run uninterrupted."""
    folder = tmp_path_factory.mktemp("stopped")
    args = interrupted(folder, tiny_model_dir)
    whole = tmp_path_factory.mktemp("whole")
    shutil.copy(folder / "in.jsonl", whole)
    shutil.copy(folder / "ok.jpg", whole)
    succeeded(cli(*args, cwd=whole))
    return folder, args, (whole / "out.jsonl").read_bytes()


@pytest.fixture()
def case(stopped, tmp_path):
    folder, args, reference = stopped
    run = tmp_path / "run"
    shutil.copytree(folder, run, symlinks=True)
    state = json.loads((run / WORK / "state.json").read_text())  # the copy's input is at another path
    state["input"] = str((run / "in.jsonl").resolve())
    (run / WORK / "state.json").write_text(json.dumps(state, indent=1))
    return run, args, reference


def _npz(rows: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, scores=np.zeros(rows, np.float32), errors=np.array([b""] * rows), truncated=np.zeros(rows, bool))
    return buffer.getvalue()


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1:]


DAMAGE = {
    "truncated": lambda p, outside: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p, outside: p.write_bytes(os.urandom(3000)),
    "empty": lambda p, outside: p.write_bytes(b""),
    "a flipped byte": lambda p, outside: p.write_bytes(_flip(p.read_bytes())),
    "3 rows, not 10": lambda p, outside: p.write_bytes(_npz(3)),
    "a link out": lambda p, outside: (outside.write_bytes(p.read_bytes()), p.unlink(), p.symlink_to(outside)),
    "a folder": lambda p, outside: (p.unlink(), p.mkdir(), (p / "x").write_text("x")),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_chunk_that_does_not_verify_is_scored_again(case, tmp_path, damage):
    folder, args, reference = case
    chunk = folder / WORK / "chunk-0000001.npz"
    outside = tmp_path / "outside.npz"
    damage(chunk, outside)
    kept = outside.read_bytes() if outside.exists() else None
    run = succeeded(cli(*args, "--resume", cwd=folder))
    said = [line for line in run.stderr.splitlines() if "does not verify" in line]
    assert len(said) == 1 and said[0].startswith(f"chunk '{WORK}/chunk-0000001.npz' of the interrupted run does "
                                                 "not verify (") and said[0].endswith("): scoring its 10 rows again")
    assert "Traceback" not in run.stderr and "resumed: 10 rows were already scored" in run.stderr
    assert (folder / "out.jsonl").read_bytes() == reference
    assert not (folder / WORK).exists()
    if kept is not None:  # the link was removed, not followed: its target is as it was
        assert outside.read_bytes() == kept


def _as_file(work: Path, outside: Path) -> None:
    shutil.rmtree(work)
    work.write_text("not a folder\n")


def _as_link(work: Path, outside: Path) -> None:
    shutil.move(work, outside)
    work.symlink_to(outside, target_is_directory=True)


@pytest.mark.parametrize("resume", [True, False], ids=["--resume", "a fresh run"])
@pytest.mark.parametrize("replace, what", [(_as_file, "is not a folder"),
                                           (_as_link, "is a symbolic link (never followed)")], ids=["file", "link"])
def test_a_work_folder_that_is_not_a_folder_is_refused_in_one_line(case, tmp_path, resume, replace, what):
    folder, args, _ = case
    outside = tmp_path / "elsewhere"
    replace(folder / WORK, outside)
    before, before_outside = snapshot(folder), snapshot(outside) if outside.exists() else None
    run = cli(*args, *(["--resume"] if resume else []), cwd=folder)
    refused(run, f"work folder '{WORK}' of this output {what}: remove it (rm {WORK}) and run again")
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if not k.endswith((".partial", ".lock"))} == {
        k: v for k, v in before.items() if not k.endswith((".partial", ".lock"))}
    assert not (folder / "out.jsonl").exists()
    if before_outside is not None:
        assert snapshot(outside) == before_outside  # nothing read, written or removed through the link


def _garbage(state: Path, outside: Path) -> None:
    state.write_bytes(b"\x00{garbage")


def _state_link(state: Path, outside: Path) -> None:
    outside.write_bytes(state.read_bytes())
    state.unlink()
    state.symlink_to(outside)


def _fifo(state: Path, outside: Path) -> None:
    state.unlink()
    os.mkfifo(state)


@pytest.mark.parametrize("damage", [_garbage, _state_link, _fifo], ids=["garbage", "link", "fifo"])
def test_a_state_that_cannot_be_trusted_is_refused_in_one_line(case, tmp_path, damage):
    folder, args, _ = case
    state = folder / WORK / "state.json"
    damage(state, tmp_path / "outside.json")
    refused(cli(*args, "--resume", cwd=folder, timeout=300), f"cannot resume: '{WORK}/state.json' is damaged (")
    kept = sorted(p.name for p in (folder / WORK).iterdir() if not p.name.startswith("."))  # not the kill's .tmp
    assert kept == ["chunk-0000000.npz", "chunk-0000001.npz", "state.json"]
