"""The parquet side of an embeddings folder (layout: :mod:`.embeddings`): part names, one part written whole, and
a part's keys and embeddings for the index.

Writing: text and integers snappy; embeddings uncompressed (left out of the codec map): unit vectors' floats gain
nothing from snappy and read 25% faster without it (zstd: 16% smaller, twice as slow to read); no dictionaries
(every value differs) nor statistics (no reader prunes on a hash or a vector).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import replacing
from .errors import write_error
from .writers import utf8_safe

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = {"images": ("image_path", "resolved_path", "size", "mtime_ns", "sha256"), "texts": ("text", "sha256")}
"""Each kind's columns before ``embedding``."""
METADATA = b"longclip.embeddings"
"""The schema metadata key of each part: the folder's ``model.json`` content."""
_NAME = re.compile(r"part-(\d{8}T\d{12})Z-\d+-\d+\.parquet")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_INTEGERS = {"size", "mtime_ns"}


def part_names(folder: Path) -> list[str]:
    """The parts of ``folder`` in write order (their names sort so); temporary files and other names left out."""
    try:
        return sorted(name for name in os.listdir(folder) if _NAME.fullmatch(name))
    except FileNotFoundError:
        return []


class PartNamer:
    """``part-<UTC YYYYmmddTHHMMSSffffff>Z-<pid>-<n>.parquet``: each name sorts after the newest of ``existing``
    and the ones before it, even when the clock goes back, and holds the pid: no two processes make the same.

    >>> namer = PartNamer(["part-20300101T000000000000Z-1-000001.parquet"])
    >>> namer.next().startswith("part-20300101T000000000001Z-")
    True
    """

    def __init__(self, existing: list[str]):
        self._last_us = max((_stamp_us(name) for name in existing), default=0)
        self._count = 0

    def next(self) -> str:
        self._last_us = max(_now_us(), self._last_us + 1)
        self._count += 1
        stamp = (_EPOCH + dt.timedelta(microseconds=self._last_us)).strftime("%Y%m%dT%H%M%S%f")
        return f"part-{stamp}Z-{os.getpid()}-{self._count:06d}.parquet"


def _stamp_us(name: str) -> int:
    match = _NAME.fullmatch(name)
    assert match is not None, name
    stamp = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%f").replace(tzinfo=dt.timezone.utc)
    return (stamp - _EPOCH) // dt.timedelta(microseconds=1)


def _now_us() -> int:
    return (dt.datetime.now(dt.timezone.utc) - _EPOCH) // dt.timedelta(microseconds=1)


def part_table(kind: str, columns: dict[str, list[Any]], embeddings: np.ndarray, identity: dict[str, Any]) -> pa.Table:
    """A part's table: ``columns`` (as :data:`COLUMNS`), ``embeddings`` ``(N, D)`` float32 or float16, and the
    identity as schema metadata."""
    import pyarrow as pa

    arrays = [pa.array(columns[c], pa.int64()) if c in _INTEGERS else _strings(columns[c]) for c in COLUMNS[kind]]
    dim = embeddings.shape[1]
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), dim))
    return pa.Table.from_arrays(arrays, names=[*COLUMNS[kind], "embedding"],
                                metadata={METADATA: json.dumps(identity)})


def write_part(path: Path, table: pa.Table) -> None:
    """``table`` as the parquet file ``path``, one row group, through ``atomic.replacing`` (a hidden temporary file
    beside it, fsynced, renamed, the folder synced): no reader ever sees it half-written; :class:`WriteError`
    (nothing left behind) when that fails."""
    import pyarrow.parquet as pq

    codecs = {name: "snappy" for name in table.schema.names if name != "embedding"}
    try:
        # durable: the rename too is synced before the index records the part, so a power loss keeps both; a Python
        # file, as pyarrow takes names as UTF-8 and a folder's need not be
        with replacing(path, durable=True) as sink:
            pq.write_table(table, sink, row_group_size=max(1, table.num_rows), use_dictionary=False, compression=codecs,
                           write_statistics=False)
    except OSError as exc:
        raise write_error(path, exc, ": the records stay pending; free space and flush() again") from None


def part_identity(path: Path) -> dict[str, Any]:
    """The identity a part's schema metadata records; ``ValueError`` (or an Arrow error) if it cannot say."""
    import pyarrow.parquet as pq

    with _source(path) as source:
        return _identity(pq.read_schema(source))


def part_records(path: Path) -> tuple[dict[str, Any], list[bytes], np.ndarray]:
    """A part's recorded identity, its rows' sha256 (32 bytes each) and ``(N, D)`` embeddings, in row order."""
    import pyarrow.parquet as pq

    with _source(path) as source:
        part = pq.ParquetFile(source)
        identity = _identity(part.schema_arrow)
        table = part.read(columns=["sha256", "embedding"], use_threads=False)
    column = table.column("embedding")
    values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    keys = [bytes.fromhex(key) for key in table.column("sha256").to_pylist()]
    return identity, keys, values.reshape(len(keys), column.type.list_size)


def arrow_errors() -> tuple[type[Exception], ...]:
    """What reading a damaged part raises: OSError, ValueError, KeyError, TypeError and Arrow's own errors."""
    import pyarrow as pa

    return OSError, ValueError, KeyError, TypeError, pa.ArrowException


def _identity(schema: pa.Schema) -> dict[str, Any]:
    meta = schema.metadata or {}
    if METADATA not in meta:
        raise ValueError(f"its schema metadata has no {METADATA.decode()}")
    return json.loads(meta[METADATA])


def _source(path: Path) -> Any:
    """``path`` opened for pyarrow: its own file (opened 3x faster than a Python file), or a Python file when the
    name is not UTF-8 (pyarrow takes names as UTF-8 text)."""
    import pyarrow as pa

    try:
        return pa.OSFile(str(path))
    except UnicodeEncodeError:
        return open(path, "rb")


def _strings(values: list[str | None]) -> pa.Array:
    """Text as an Arrow string array; a lone surrogate (a file name that was not UTF-8) becomes U+FFFD."""
    import pyarrow as pa

    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        return pa.array([v if v is None else utf8_safe(v) for v in values], pa.string())
