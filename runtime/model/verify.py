"""Graph files checked against their manifest's sha256 before first use, then remembered by a stamp.

Hashing an L/14-336 folder (about 1.7 GB) takes seconds, so a graph that hashed right is stamped: a small JSON
file under ``<longclip cache>/verified`` records the (device, inode, size, mtime_ns, ctime_ns) of each of its files
and the sha256 found. A later load whose files stat the same skips the hashing. Any write to a file changes its
ctime, which no user can set back (``os.utime`` sets mtime and atime only), and a replaced file has a new inode, so
a stamp never vouches for changed bytes, provided the first write and the hash were not within one tick of
the filesystem's clock (see ``SETTLE_NS``). A stamp that cannot be read or written only means hashing again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from .atomic import write_bytes
from .errors import ModelDirError
from .manifest import GraphFiles, sha256_file
from .resolve import cache_root

log = logging.getLogger(__name__)

SETTLE_NS = 2_000_000_000
"""A file whose ctime is less than this before it was hashed gets no stamp (it is hashed again next time): file
times are coarse (a kernel tick; whole seconds on some filesystems), so a second write within the same tick as the
stamped one would leave the ctime as it was."""


def stamp_dir() -> Path:
    """Where stamps live: ``<longclip cache>/verified``, one JSON file per graph."""
    return cache_root() / "verified"


def verify_graph(graph: GraphFiles) -> None:
    """Raise :class:`ModelDirError` unless each file of ``graph`` has the sha256 its manifest records; a graph
    whose files are unchanged since they last hashed right is not hashed again.

    >>> verify_graph(read_manifest("models/tiny").graphs["vision"])   # doctest: +SKIP
    """
    main = graph.files[0]
    now = time.time_ns()
    try:
        stamp = {"files": [str(p) for p in graph.files], "stat": _stat(graph.files),
                 "sha256": {str(p): digest for p, digest in graph.sha256.items()}}
        path = stamp_dir() / f"{hashlib.sha256(os.fsencode(main.resolve())).hexdigest()[:32]}.json"
        if _read(path) == stamp:
            return
        for file, want in graph.sha256.items():
            got = sha256_file(file)
            if got != want:
                raise ModelDirError(f"graph {file.name}'s sha256 is {got}, the manifest says {want}: the folder "
                                    f"{str(file.parent)!r} was modified or is incomplete; re-export or re-download it")
        unchanged = _stat(graph.files) == stamp["stat"]  # not written to while it was hashed
    except OSError as exc:
        raise ModelDirError(f"cannot read graph {str(main)!r}: {exc.strerror or exc}: check the folder's "
                            "permissions, or re-export it") from None
    if unchanged and all(now - ctime > SETTLE_NS for *_, ctime in stamp["stat"]):
        _write(path, stamp)


def _stat(files: tuple[Path, ...]) -> list[list[int]]:
    stats = [f.stat() for f in files]
    return [[s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns] for s in stats]


def _read(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.debug("cannot read the stamp %s (%s): hashing the graph", path, exc)
        return None


def _write(path: Path, stamp: dict[str, object]) -> None:
    """Atomically: a reader sees the old stamp or the new one, never half of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, json.dumps(stamp).encode())
    except OSError as exc:
        log.debug("cannot write the stamp %s (%s): the next load hashes the graph again", path, exc)
