"""Where a Ray job reads and writes: one file, a folder or glob of shards, local or remote (pyarrow filesystems).

Inputs are resolved on the driver into a sorted list of files, so the row order is defined: shards in path order,
rows in file order. Outputs are a single local file (gathered on the driver) or a folder of parquet shards.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..contract.atomic import partial_folder
from ..contract.errors import InputError
from ..inputs.folder import is_file_folder
from ..inputs.tables import FORMATS
from ..inputs.tarshards import is_hidden

if TYPE_CHECKING:
    import pyarrow.fs

_GLOB = "*?["


@dataclass(frozen=True)
class Shards:
    """Input files of one format, in row order: ``paths`` are in ``filesystem``'s own form."""

    filesystem: "pyarrow.fs.FileSystem"
    paths: list[str]
    format: str  # one of FORMATS, or ".tar" (WebDataset)
    names: list[str] | None = None  # what rows call each shard, where that is not its path (WebDataset)


@dataclass(frozen=True)
class Target:
    """An output: a local file (``folder`` False) or a folder of parquet shards, local or remote."""

    location: str
    filesystem: "pyarrow.fs.FileSystem"
    path: str
    folder: bool

    @property
    def local(self) -> bool:
        import pyarrow.fs as pafs

        return isinstance(self.filesystem, pafs.LocalFileSystem)


def _is_uri(location: str) -> bool:
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.isalnum()


def _filesystem(location: str) -> tuple["pyarrow.fs.FileSystem", str]:
    """``(filesystem, path)`` for a local path or any URI pyarrow knows (``s3://``, ``gs://``, ``file://``...)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if not _is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"cannot open {location!r}: {str(exc).splitlines()[0]}") from None


def _visible(path: str, base: str) -> bool:
    """Not hidden below ``base``: skips ``.name`` and ``_name`` entries (``_SUCCESS``, ``.crc``, partial writes)."""
    return not any(is_hidden(part) for part in PurePosixPath(path).relative_to(base).parts)


def _list_files(fs: "pyarrow.fs.FileSystem", base: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return [i.path for i in infos if i.type == pafs.FileType.File and _visible(i.path, base)]


def _glob(location: str) -> tuple["pyarrow.fs.FileSystem", list[str]]:
    """Files matching a glob; ``*``, ``?`` and ``[...]`` match within one path component."""
    cut = location.rfind("/", 0, min(location.index(c) for c in _GLOB if c in location))
    base_location = location[: cut + 1] or "."
    fs, base = _filesystem(base_location)
    pattern = PurePosixPath(base, location[cut + 1 :]).parts
    try:
        found = _list_files(fs, base)
    except FileNotFoundError:
        found = []
    return fs, [p for p in found if len(PurePosixPath(p).parts) == len(pattern) and
                all(fnmatch.fnmatchcase(a, b) for a, b in zip(PurePosixPath(p).parts, pattern))]


def find_shards(location: str) -> Shards:
    """A file, a folder (every ``.jsonl/.json/.csv/.parquet`` below it) or a glob, local or a URI -> shards.

    >>> find_shards("data/pairs.jsonl").paths                # doctest: +SKIP
    ['/home/me/data/pairs.jsonl']
    """
    import pyarrow.fs as pafs

    if any(c in location for c in _GLOB):
        fs, files = _glob(location)
    else:
        fs, path = _filesystem(location)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.NotFound:
            raise InputError(f"input {location!r} does not exist")
        files = [path] if kind == pafs.FileType.File else [
            p for p in _list_files(fs, path) if PurePosixPath(p).suffix.lower() in FORMATS]
    if not files and is_file_folder(location):
        raise InputError(f"INPUT {location!r} is a folder of image files, which the local engine reads (img2dataset's "
                         "files layout): leave out --engine ray, or give Ray tar shards (img2dataset --output_format "
                         "webdataset)")
    if not files:
        raise InputError(f"no input files match {location!r}: expected {', '.join(FORMATS)} files")
    formats = sorted({PurePosixPath(p).suffix.lower() for p in files})
    if len(formats) > 1 or formats[0] not in FORMATS:
        raise InputError(f"{location!r} holds {', '.join(formats) or '(no suffix)'} files: give shards of one of "
                         f"{', '.join(FORMATS)}")
    return Shards(fs, sorted(files), formats[0])


_SAMPLE_BYTES = 1 << 20


def _columns_of(shards: Shards, path: str) -> list[str]:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    fs = shards.filesystem
    if shards.format == ".parquet":
        return list(pq.read_schema(path, filesystem=fs).names)
    with fs.open_input_stream(path) as f:
        if shards.format == ".csv":
            return list(pacsv.open_csv(f).schema.names)
        if shards.format == ".json":
            rows = json.load(f)
            return list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))
        sample = f.read(_SAMPLE_BYTES)
        sample = sample if len(sample) < _SAMPLE_BYTES else sample[: sample.rfind(b"\n") + 1] or sample + f.read()
    return list(pajson.read_json(io.BytesIO(sample)).schema.names) if sample.strip() else []


def shard_columns(shards: Shards) -> list[str]:
    """The columns of the first shard that has any, read on the driver: a parquet footer, a CSV header, the keys
    of a JSON array or of the first MiB of JSON lines. Raises :class:`InputError` naming the file."""
    import pyarrow as pa

    for path in shards.paths:
        try:
            columns = _columns_of(shards, path)
        except (pa.ArrowException, OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise InputError(f"cannot read {path!r}: {str(exc).splitlines()[0]}") from None
        if columns:
            return columns
    return []


def output_target(location: str) -> Target:
    """A folder of parquet shards when ``location`` ends with ``/``, has no suffix or is a folder; else a file.

    A folder must be empty or absent and its parent must exist; a single file must be local.
    """
    import pyarrow.fs as pafs

    remote = _is_uri(location) and not location.startswith("file://")
    suffix = PurePosixPath(location).suffix
    if not (location.endswith("/") or not suffix or (not remote and os.path.isdir(location))):
        if remote:
            raise InputError(f"cannot write {location!r}: a single output file must be local; end the URI with / "
                             "to write a folder of parquet shards there")
        if suffix.lower() not in FORMATS:
            raise InputError(f"{location!r}: unsupported file type {suffix!r}; use {', '.join(FORMATS)}, or end it "
                             "with / for a folder of parquet shards")
        fs, path = _filesystem(location)
        return Target(location, fs, path, folder=False)
    fs, path = _filesystem(location)
    path = path.rstrip("/") or "/"
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise InputError(f"cannot write a folder of shards at {location!r}: it is a file")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path)):
        raise InputError(f"output folder {location!r} is not empty: remove it or choose another")
    if isinstance(fs, pafs.LocalFileSystem) and not Path(path).parent.is_dir():
        raise InputError(f"cannot write {location!r}: folder {str(Path(path).parent)!r} does not exist")
    return Target(location, fs, path, folder=True)


class Staging:
    """Where shards are written: a hidden sibling folder moved into place by ``commit`` for local targets (the
    output appears complete or not at all); the target itself for remote ones (object stores cannot rename)."""

    def __init__(self, target: Target):
        self.target = target
        if target.local:
            self.path = str(partial_folder(Path(target.path)))
        else:
            self.path = target.path

    def commit(self) -> None:
        if self.target.local:
            os.chmod(self.path, 0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
            os.replace(self.path, self.target.path)

    def abort(self) -> None:
        if self.target.local:
            shutil.rmtree(self.path, ignore_errors=True)
