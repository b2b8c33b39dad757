"""Runs stopped on cue: what a stopped run leaves behind, and how it resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from longclip.runtime.engines import local


@contextmanager
def stopped_after_first_chunk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A run inside keeps its first chunk, then stops as Ctrl-C stops it (the ``KeyboardInterrupt`` is expected
    here: none raised fails the test); chunks are saved as usual after."""
    real, saved = local._save_part, []

    def stop_after_one(*args, **kwargs):
        if saved:
            raise KeyboardInterrupt
        saved.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "_save_part", stop_after_one)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(local, "_save_part", real)


def killed_part_way(args: list[object], cwd: Path, output: Path, chunks: int) -> int:
    """``longclip-run ARGS`` killed (SIGKILL) once it has kept ``chunks`` chunks for ``output``; the chunks kept."""
    cmd = [sys.executable, "-m", "longclip.runtime.cli.run", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = local.work_dir_for(output)
    deadline = time.time() + 600  # a hang guard (minutes: CI machines are loaded)
    while len(list(work.glob("chunk-*.npz"))) < chunks and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list(work.glob("chunk-*.npz")))
