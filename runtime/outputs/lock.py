"""One run per output at a time: an OS lock (``fcntl.flock``) on a small file beside the output.

The kernel drops the lock when its holder exits, however it exits (``kill -9`` included), so a dead run never
blocks the next one. The file holds the holder's pid and start time, for the refusal message. It is removed when
the run ends; a run that opened it just before it was removed sees the inode change and tries again, so two runs
can never both believe they hold it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType

from .errors import InputError, write_error


def lock_path_for(output: Path) -> Path:
    """``<folder>/.<name>.longclip-run.lock`` beside ``output``.

    >>> lock_path_for(Path("out/scored.parquet")).as_posix()
    'out/.scored.parquet.longclip-run.lock'
    """
    return output.parent / f".{output.name}.longclip-run.lock"


class OutputLock:
    """Hold the lock of ``output`` (a file or a folder) for a ``with`` block, or raise :class:`InputError` naming
    the run that holds it.

    >>> with OutputLock(Path("scored.jsonl")):       # doctest: +SKIP
    ...     ...                                      # work folder, chunks, the final write
    """

    def __init__(self, output: str | os.PathLike[str], what: str = "output"):
        self.output = Path(output)
        self.path = lock_path_for(self.output)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise InputError(f"cannot lock {self.what} {str(self.output)!r}: {self.path}: "
                                 f"{exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise InputError(f"cannot lock {self.what} {str(self.output)!r}: {exc.strerror}") from None
                raise InputError(f"{self.what} {str(self.output)!r} is being written by another run ({holder}); "
                                 "wait for it to finish, or choose another output") from None
            if _same_inode(fd, self.path):
                break
            os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        except OSError as exc:  # a full disk, a quota: the run cannot write anything there either
            self.release()
            raise write_error(self.path, exc) from None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: a waiting opener then sees a stale inode
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _same_inode(fd: int, path: Path) -> bool:
    try:
        held, named = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(info['pid'])}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"
