"""Files that appear whole or not at all: the one home of "temporary sibling, (fsync), rename, (sync the folder)".

Every file the runtime writes for a reader to find (outputs, reports, manifests, graph stamps, resume chunks,
embedding parts and ``model.json``) is written to a private temporary file beside it (``.<name>.<random><suffix>``:
hidden, so pyarrow, pandas and DuckDB skip it, and never shared by two writers) and renamed over the target only
when complete. A reader sees the old file or the new one, never part of one; whatever fails, the temporary file is
removed. The finished file gets the mode an ordinary new file gets under the user's umask (0644 under 022, 0600
under 077); the temporary one is 0600 while it is written. ``durable=True`` also fsyncs the file and then its
folder, so the rename survives a power loss (the embeddings folder, whose index records a part only once it is
there).

Errors are the caller's to translate: each names its own path and fix (``errors.write_error``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def umask() -> int:
    """This process's umask, read without setting it (``os.umask`` sets it, racing threads that create files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Move the finished private temporary file ``tmp`` (mkstemp makes it 0600) to ``path`` with the mode an
    ordinary new file gets under the user's umask. A file system that cannot set modes (vfat, some FUSE and SMB
    mounts refuse ``chmod``) keeps its own: the file is still written."""
    try:
        os.chmod(tmp, 0o666 & ~umask())
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    os.replace(tmp, path)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """fsync ``folder``: a rename into it survives a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # a file system that cannot sync a folder (EINVAL): the rename is as durable as it gets
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def temporary_sibling(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new private file beside ``path`` (descriptor and name) that no other writer can be given."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    return fd, Path(tmp)


@contextmanager
def replacing(path: str | os.PathLike[str], *, durable: bool = False, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """``with replacing(path) as f: f.write(data)``: ``path`` holds exactly what was written once the block ends
    without an error, and is untouched (no temporary file left) when anything up to the rename raises. With
    ``durable``, a folder that fails to sync after the rename raises with the new file in place (not yet safe from
    a power loss: the caller treats it as not written, and writing it again is harmless)."""
    path = Path(path)
    fd, tmp = temporary_sibling(path, suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        publish(tmp, path)
        if durable:
            sync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> None:
    """``data`` as the whole of ``path``, atomically (see :func:`replacing`)."""
    with replacing(path, durable=durable) as f:
        f.write(data)
