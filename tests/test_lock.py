"""OutputLock: one holder at a time, a refusal that names the holder, released by the kernel when the holder dies."""

import os
import signal
import subprocess
import sys
import time

import pytest

from longclip.runtime.contract.errors import InputError
from longclip.runtime.outputs.lock import OutputLock, lock_path_for


def test_second_holder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "scored.jsonl"
    with OutputLock(out):
        assert lock_path_for(out).is_file()
        with pytest.raises(InputError, match=rf"'{out}' is being written by another run \(pid {os.getpid()}, started "):
            OutputLock(out).acquire()
    assert not lock_path_for(out).exists()  # removed when released
    with OutputLock(out):  # and free again
        pass


def test_a_killed_holder_releases_the_lock(tmp_path):
    out = tmp_path / "scored.parquet"
    code = ("import sys, time\nfrom pathlib import Path\nfrom longclip.runtime.outputs.lock import OutputLock\n"
            f"OutputLock(Path({str(out)!r})).acquire()\nprint('held', flush=True)\ntime.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"pid {holder.pid}"):
            OutputLock(out).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with OutputLock(out):  # the lock file is still there, but nobody holds it
        pass


def test_a_lock_file_removed_under_a_waiting_opener_is_not_trusted(tmp_path, monkeypatch):
    """A run that opened the lock file just before its holder removed it must lock the new file, not the old one."""
    from longclip.runtime.outputs import lock

    out = tmp_path / "scored.csv"
    first = OutputLock(out)
    first.acquire()
    real_flock = lock.fcntl.flock
    calls = []

    def flock_after_release(fd, op):
        if not calls:  # the holder finishes between our open and our flock
            calls.append(fd)
            first.release()
        return real_flock(fd, op)

    monkeypatch.setattr(lock.fcntl, "flock", flock_after_release)
    second = OutputLock(out)
    second.acquire()
    try:
        assert os.fstat(second._fd).st_ino == os.stat(lock_path_for(out)).st_ino  # the file that is there now
        monkeypatch.setattr(lock.fcntl, "flock", real_flock)
        with pytest.raises(InputError, match="being written by another run"):
            OutputLock(out).acquire()
    finally:
        second.release()


def test_unwritable_folder_is_one_line(tmp_path):
    with pytest.raises(InputError, match="cannot lock output"):
        OutputLock(tmp_path / "missing" / "out.jsonl").acquire()


def test_many_processes_at_once_one_wins(tmp_path):
    out = tmp_path / "scored.jsonl"
    code = ("import sys, time\nfrom pathlib import Path\nfrom longclip.runtime.outputs.lock import OutputLock\n"
            "from longclip.runtime.contract.errors import InputError\n"
            "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
            f"try:\n    OutputLock(Path({str(out)!r})).acquire()\nexcept InputError:\n    print('refused')\n"
            "else:\n    print('held', flush=True)\n    time.sleep(2)\n")
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", code, str(start)], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["held"] + ["refused"] * 5
