"""Graph files checked against their manifest's sha256 before first use, then remembered by a stamp.

Hashing an L/14-336 folder (about 1.7 GB) takes seconds, so a graph that hashed right is stamped: a small JSON
file under ``<longclip cache>/verified`` records the (device, inode, size, mtime_ns, ctime_ns) of each of its files
and the sha256 found. A later load whose files stat the same skips the hashing. Any write to a file changes its
ctime, which no user can set back (``os.utime`` sets mtime and atime only), and a replaced file has a new inode, so
a stamp never vouches for changed bytes, provided the first write and the hash were not within one tick of
the filesystem's clock (see ``SETTLE_NS``). A stamp that cannot be read or written only means hashing again.

Before ONNX Runtime sees a graph, :func:`check_external_data` checks where its tensors keep their data: ONNX
Runtime before 1.24 reads an external-data location of ``../``, an absolute path or a symlink out of the folder,
and that file's bytes would become weights. The graph's protobuf is walked here, without ``onnx`` and without
reading weights: only field tags and lengths are read (from a memory map; weight bytes are stepped over, never
touched), so a 1.7 GB graph costs milliseconds. It runs on every load (it is cheap, and a symlink it followed may
change without changing the graph).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from ..contract.atomic import write_bytes
from ..contract.errors import ModelDirError, files_limit
from ..contract.manifest import REEXPORT, GraphFiles, sha256_file
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
        raise _read_error(main, exc) from None
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


# Field numbers of onnx.proto (onnx/onnx.proto3) on the way to a tensor; every other field is stepped over.
_MODEL_GRAPH, _MODEL_TRAINING, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
_FUNCTION_NODE = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 1, 2, 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
               17: 1, 18: 1, 19: 1, 20: 1, 24: 1}  # TensorProto.DataType -> bytes per element (whole-byte types)
_MAX_DEPTH = 64  # subgraphs inside subgraphs: far beyond any real model, short of Python's recursion limit


class _Malformed(Exception):
    """The bytes are not a well-formed protobuf where a tensor was expected."""


def check_external_data(graph: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None) -> int:
    """Raise :class:`ModelDirError` unless every tensor of the ONNX graph at ``graph`` that keeps its data in an
    external file names a regular file inside ``model_dir`` (default: the graph's folder) or inside the folder
    the graph file really lives in (a Hugging Face snapshot's ``blobs``), with its offset and length within it.

    Initializers, sparse initializers, tensors of node attributes (``Constant``) and every subgraph (``If``,
    ``Loop``, ``Scan`` bodies; functions) are checked. Returns how many external tensors were found.

    >>> check_external_data("models/tiny/vision.onnx")   # doctest: +SKIP
    0
    """
    path = Path(graph)
    base = path.parent  # ONNX Runtime resolves locations against the folder of the path it is given
    homes = [Path(model_dir or base).resolve(), path.resolve().parent]
    found = 0
    try:
        with open(path, "rb") as file, _mapped(file) as data:
            for tensor in _tensors(data):
                _check_tensor(path, tensor, base, homes)
                found += 1
    except _Malformed as exc:
        raise ModelDirError(f"graph {str(path)!r} is not a readable ONNX file ({exc}): the file is damaged or "
                            f"incomplete; {REEXPORT}") from None
    except OSError as exc:
        raise _read_error(path, exc) from None
    return found


class _mapped:
    """The file's bytes as a read-only memory map (an empty file: empty bytes); pages are read only if touched."""

    def __init__(self, file: object):
        self.file, self.map = file, None

    def __enter__(self) -> memoryview | bytes:
        fd = self.file.fileno()  # type: ignore[attr-defined]
        if os.fstat(fd).st_size == 0:
            return b""
        self.map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        self.view = memoryview(self.map)
        return self.view

    def __exit__(self, *exc: object) -> None:
        if self.map is not None:
            self.view.release()
            self.map.close()


def _fields(data: memoryview | bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, value or start, end)`` of each field of the message in ``data[start:end]``: a varint's
    value (end unused), or where a length-delimited field's bytes start and end. Fixed-width fields are stepped
    over; groups (deprecated, never in ONNX) are malformed here."""
    at = start
    while at < end:
        key, at = _varint(data, at, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at, end)
            yield field, wire, value, at
        elif wire == 2:
            length, at = _varint(data, at, end)
            if length > end - at:
                raise _Malformed(f"a field of {length} bytes at byte {at} runs past its message")
            yield field, wire, at, at + length
            at += length
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
            if at > end:
                raise _Malformed(f"a fixed-width field runs past its message at byte {end}")
        else:
            raise _Malformed(f"wire type {wire} at byte {at}")


def _varint(data: memoryview | bytes, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise _Malformed(f"a truncated or overlong varint at byte {at}")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at


def _tensors(data: memoryview | bytes) -> Iterator[dict[str, object]]:
    """Every tensor of the model that keeps its data outside the graph file (see :func:`_external`)."""
    for field, wire, start, end in _fields(data, 0, len(data)):
        if wire != 2:
            continue
        if field == _MODEL_GRAPH:
            yield from _graph(data, start, end, 0)
        elif field == _MODEL_FUNCTIONS:
            yield from _nodes(data, start, end, _FUNCTION_NODE, 0)
        elif field == _MODEL_TRAINING:
            for f, w, s, e in _fields(data, start, end):
                if w == 2 and f in _TRAINING_GRAPHS:
                    yield from _graph(data, s, e, 0)


def _graph(data: memoryview | bytes, start: int, end: int, depth: int) -> Iterator[dict[str, object]]:
    if depth > _MAX_DEPTH:
        raise _Malformed(f"subgraphs nested over {_MAX_DEPTH} deep")
    yield from _nodes(data, start, end, _GRAPH_NODE, depth)
    for field, wire, s, e in _fields(data, start, end):
        if wire == 2 and field == _GRAPH_INITIALIZER:
            yield from _external(data, s, e)
        elif wire == 2 and field == _GRAPH_SPARSE:
            yield from _sparse(data, s, e)


def _nodes(data: memoryview | bytes, start: int, end: int, node_field: int,
           depth: int) -> Iterator[dict[str, object]]:
    """The tensors of the attributes of the nodes (field ``node_field``) of a graph or function."""
    for field, wire, s, e in _fields(data, start, end):
        if wire == 2 and field == node_field:
            for f, w, a_start, a_end in _fields(data, s, e):
                if w == 2 and f == _NODE_ATTRIBUTE:
                    yield from _attribute(data, a_start, a_end, depth)


def _attribute(data: memoryview | bytes, start: int, end: int, depth: int) -> Iterator[dict[str, object]]:
    for field, wire, s, e in _fields(data, start, end):
        if wire != 2:
            continue
        if field in (_ATTR_TENSOR, _ATTR_TENSORS):
            yield from _external(data, s, e)
        elif field in (_ATTR_GRAPH, _ATTR_GRAPHS):
            yield from _graph(data, s, e, depth + 1)
        elif field in (_ATTR_SPARSE, _ATTR_SPARSES):
            yield from _sparse(data, s, e)


def _sparse(data: memoryview | bytes, start: int, end: int) -> Iterator[dict[str, object]]:
    for field, wire, s, e in _fields(data, start, end):
        if wire == 2 and field in (_SPARSE_VALUES, _SPARSE_INDICES):
            yield from _external(data, s, e)


def _external(data: memoryview | bytes, start: int, end: int) -> Iterator[dict[str, object]]:
    """The tensor in ``data[start:end]`` as ``{"name", "entries", "dims", "type"}`` if it is external: its
    ``data_location`` is EXTERNAL or it has ``external_data`` entries (either one is taken at its word)."""
    name, entries, dims, dtype, external = "", {}, [], 0, False
    for field, wire, s, e in _fields(data, start, end):
        if field == _TENSOR_LOCATION and wire == 0:
            external = external or s == _EXTERNAL
        elif field == _TENSOR_EXTERNAL and wire == 2:
            key = value = ""
            for f, w, ks, ke in _fields(data, s, e):
                if w == 2 and f in (1, 2):
                    text = bytes(data[ks:ke]).decode("utf-8", "replace")
                    key, value = (text, value) if f == 1 else (key, text)
            entries[key] = value
            external = True
        elif field == _TENSOR_NAME and wire == 2:
            name = bytes(data[s:min(e, s + 200)]).decode("utf-8", "replace")
        elif field == _TENSOR_TYPE and wire == 0:
            dtype = s
        elif field == _TENSOR_DIMS:
            dims.extend([s] if wire == 0 else _packed(data, s, e))
    if external:
        yield {"name": name, "entries": entries, "dims": dims, "type": dtype}


def _packed(data: memoryview | bytes, start: int, end: int) -> list[int]:
    values, at = [], start
    while at < end:
        value, at = _varint(data, at, end)
        values.append(value)
    return values


def _check_tensor(graph: Path, tensor: dict[str, object], base: Path, homes: list[Path]) -> None:
    entries: dict[str, str] = tensor["entries"]  # type: ignore[assignment]
    location = entries.get("location", "")
    fix = (f"a model folder's graphs may keep tensor data only in regular files inside the folder "
           f"({str(homes[0])!r}); {REEXPORT}, and never load a folder from a source you do not trust")

    def refuse(why: str) -> ModelDirError:
        return ModelDirError(f"graph {str(graph)!r}: tensor {tensor['name']!r} keeps its data at {location!r}, "
                             f"{why}: {fix}")

    if not location:
        raise refuse("which names no file")
    try:
        target = (base / location).resolve(strict=True)
        inside = any(target.is_relative_to(home) for home in homes)
        mode_size = os.stat(target) if inside else None
    except FileNotFoundError:
        raise refuse("which does not exist") from None
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte, no permission
        raise refuse(f"which cannot be resolved ({exc})") from None
    if not inside or mode_size is None:
        raise refuse(f"which is {str(target)!r}, outside the model folder")
    if not stat.S_ISREG(mode_size.st_mode):
        raise refuse("which is not a regular file")
    _check_range(entries, tensor, mode_size.st_size, refuse)


def _check_range(entries: dict[str, str], tensor: dict[str, object], size: int, refuse: object) -> None:
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise refuse(f"with offset {entries.get('offset')!r} and length {entries.get('length')!r}, not "  # type: ignore[operator]
                     "whole numbers") from None
    if length is None:
        item = _ITEM_BYTES.get(tensor["type"])  # type: ignore[arg-type]
        dims: list[int] = tensor["dims"]  # type: ignore[assignment]
        length = item * math.prod(dims) if item is not None and all(d >= 0 for d in dims) else 0
    if offset < 0 or length < 0 or offset + length > size:
        raise refuse(f"bytes {offset} to {offset + length}, past the end of the file ({size} bytes)")  # type: ignore[operator]


def _read_error(path: object, exc: OSError) -> ModelDirError:
    """A graph that cannot be read: out of file descriptors (the limit, the way out), or the folder's problem."""
    limit = files_limit(exc, f"reading graph {str(path)!r}")
    return ModelDirError(limit or f"cannot read graph {str(path)!r}: {exc.strerror or exc}: check the folder's "
                         "permissions, or re-export it")
