"""Row files in, chosen by extension: ``.jsonl``, ``.json``, ``.csv``, ``.parquet`` (writers: :mod:`.writers`).

A :class:`TableReader` checks the whole input before any work (a malformed line is named up front), hashes its
bytes (a resume is refused when they changed) and, for JSON, learns each column's kinds of value (so a parquet
output gets types that hold them); then it hands out chunks of a fixed number of rows, the same chunks on every
pass. A line or record that is not valid UTF-8 costs only that row: it comes with the reason ``bad_encoding``, and
so does a JSON row with a key that UTF-8 cannot hold (that key is left out: no output format could name it).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import errors
from .errors import InputError
from .manifest import sha256_file
from .rows import ABSENT, is_utf8
from .schema import ColumnKinds

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Chunk:
    """``n`` rows of an input: their ``frame`` (every column), why a row could not be read (``reasons``: ``""``, or
    e.g. ``bad_encoding: ...``, and the row is not scored), and, where the images are not in the frame's image
    column as paths or bytes (WebDataset shards), what to decode for each row (``images``)."""

    frame: pd.DataFrame
    reasons: list[str]
    images: list[object] | None = None


def table_format(path: Path) -> str:
    """The format of ``path`` from its suffix, or :class:`InputError` naming the formats there are."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{str(path)!r}: unsupported file type {suffix or '(none)'!r}; use {', '.join(FORMATS)}")
    return suffix


class TableReader:
    """A checked input file: ``columns``, ``n_rows``, ``sha256``, ``schema`` (parquet types for the columns), and
    ``chunks(n)`` yielding DataFrames of ``n`` rows.

    Cells are as parsed: JSON values as Python objects (a key a row does not have is ``rows.ABSENT``), CSV fields
    as strings exactly as written, parquet columns as Arrow-backed pandas columns of their own types.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.format = table_format(self.path)
        if not self.path.is_file():
            raise InputError(f"input {str(self.path)!r} does not exist or is not a file")
        self.columns: list[str] = []
        self.n_rows = 0
        self.sha256 = ""
        self._records: list[dict[str, Any]] | None = None
        self._record_reasons: list[str] = []
        self._kinds = ColumnKinds()
        self._arrow_schema: pa.Schema | None = None
        try:
            getattr(self, f"_scan_{self.format[1:]}")()
        except InputError:
            raise
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # pyarrow's parse errors are ValueErrors
            raise InputError(f"cannot read {str(self.path)!r}: {str(exc).splitlines()[0]}") from None

    @property
    def schema(self) -> pa.Schema:
        """The parquet types of ``columns``: the file's own for parquet, strings for CSV, the rule of
        :mod:`.schema` for JSON."""
        import pyarrow as pa

        if self._arrow_schema is not None:
            return self._arrow_schema
        if self.format == ".csv":
            return pa.schema([(c, pa.string()) for c in self.columns])
        return self._kinds.schema(self.columns)

    # -- JSON lines ------------------------------------------------------------------------------------------
    def _scan_jsonl(self) -> None:
        digest = hashlib.sha256()
        seen: dict[str, None] = {}
        for _, row, _ in self._jsonl_rows(digest):
            seen.update(dict.fromkeys(row))
            self._kinds.add(row)
            self.n_rows += 1
        self.columns, self.sha256 = list(seen), digest.hexdigest()

    def _jsonl_rows(self, digest: Any = None) -> Iterator[tuple[int, dict[str, Any], str]]:
        """``(line, row, reason)`` per non-blank line; ``reason`` is ``""`` unless the line is not UTF-8."""
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if digest is not None:
                    digest.update(raw)
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                reason = ""
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    line = raw.decode("utf-8", "surrogateescape")
                    reason = (f"{errors.BAD_ENCODING}: line {number} of {str(self.path)!r} is not valid UTF-8 "
                              f"(byte 0x{raw[exc.start]:02x} at {exc.start})")
                if not line.strip():
                    continue
                try:
                    row = _loads(line)
                except ValueError as exc:
                    if reason:  # not UTF-8 and not JSON either: the row is lost, the run goes on
                        yield number, {}, reason
                        continue
                    raise InputError(f"{str(self.path)!r} line {number} is not valid JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise InputError(f"{str(self.path)!r} line {number} is a JSON {type(row).__name__}, not an object")
                yield number, *_without_bad_keys(row, f"line {number} of {str(self.path)!r}", reason)

    # -- one JSON array ----------------------------------------------------------------------------------------
    def _scan_json(self) -> None:
        raw = self.path.read_bytes()
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            data = _loads(raw.decode("utf-8-sig"))
        except ValueError as exc:  # UnicodeDecodeError too: one array cannot lose one row
            raise InputError(f"{str(self.path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(f"{str(self.path)!r} must hold a JSON array of objects (one per row)")
        seen: dict[str, None] = {}
        for number, row in enumerate(data, 1):
            data[number - 1], reason = _without_bad_keys(row, f"row {number} of {str(self.path)!r}", "")
            seen.update(dict.fromkeys(data[number - 1]))
            self._kinds.add(data[number - 1])
            self._record_reasons.append(reason)
        self.columns, self._records, self.n_rows = list(seen), data, len(data)

    # -- CSV ----------------------------------------------------------------------------------------------------
    def _scan_csv(self) -> None:
        self.sha256 = sha256_file(self.path)
        for _ in self._csv_records():
            self.n_rows += 1

    def _csv_records(self) -> Iterator[tuple[list[str], str]]:
        """``(fields, reason)`` of each record, every field a string exactly as written (an empty cell is ``""``);
        ``reason`` is ``""`` unless the record is not UTF-8.

        Python's ``csv`` reads both passes, so the scan and the chunks cannot disagree; a record whose field count
        differs from the header's is refused (pandas would shift it into an index or pad it, silently).
        """
        _raise_csv_field_limit()
        # surrogateescape: an invalid byte becomes a lone surrogate, which UTF-8 text itself can never hold
        with open(self.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, strict=True)
            line, record, header = 0, 0, False
            try:
                for fields in reader:
                    start, line = line + 1, reader.line_num
                    if not fields:  # a blank line is not a record (pandas skips them too)
                        continue
                    if not header:
                        self._set_header(fields)
                        header = True
                        continue
                    record += 1
                    if len(fields) != len(self.columns):
                        raise InputError(
                            f"{str(self.path)!r} record {record} (line {start}) has {len(fields)} fields, the header "
                            f"has {len(self.columns)}: fix the file (quote fields that hold commas)")
                    reason = ""
                    if not all(is_utf8(v) for v in fields):
                        reason = (f"{errors.BAD_ENCODING}: record {record} (line {start}) of {str(self.path)!r} is "
                                  "not valid UTF-8")
                    yield fields, reason
            except csv.Error as exc:
                raise InputError(f"{str(self.path)!r} line {reader.line_num} is not valid CSV: {exc}") from None

    def _set_header(self, fields: list[str]) -> None:
        if not all(is_utf8(v) for v in fields):
            raise InputError(f"{str(self.path)!r}: the header is not valid UTF-8; fix the file's column names")
        self._refuse_repeated(fields, "in its header")
        self.columns = fields

    def _refuse_repeated(self, names: list[str], where: str) -> None:
        """A name twice would make its column ambiguous in every output (pandas selects both)."""
        repeated = sorted(name for name, n in Counter(names).items() if n > 1)
        if repeated:
            raise InputError(f"{str(self.path)!r} has the column name(s) {repeated} more than once {where}: give "
                             "every column its own name")

    # -- parquet ------------------------------------------------------------------------------------------------
    def _scan_parquet(self) -> None:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(self.path)
        self._arrow_schema = meta.schema_arrow.remove_metadata()
        self.columns, self.n_rows = list(meta.schema_arrow.names), meta.metadata.num_rows
        self._refuse_repeated(self.columns, "in its schema")
        self.sha256 = sha256_file(self.path)  # the whole file, not only the footer
        # Every page decoded now, one row group at a time: a corrupt one is named before any work, not after the
        # model has scored the rows before it (the footer alone says nothing about the pages).
        for group in range(meta.num_row_groups):
            try:
                meta.read_row_group(group)
            except (OSError, ValueError) as exc:  # pyarrow's IO and parse errors
                raise InputError(f"cannot read {str(self.path)!r}: row group {group} (of {meta.num_row_groups}) is "
                                 f"corrupt: {str(exc).splitlines()[0]}") from None

    # -- chunks -------------------------------------------------------------------------------------------------
    def chunks(self, n: int) -> Iterator[pd.DataFrame]:
        """Consecutive DataFrames of ``n`` rows (the last may be shorter), with every column of the file."""
        for chunk in self.read_chunks(n):
            yield chunk.frame

    def read_chunks(self, n: int) -> Iterator[Chunk]:
        """As :meth:`chunks`, each with the rows' read reasons (``""``, or ``bad_encoding: ...``)."""
        if self.format == ".parquet":
            for frame in self._parquet_frames(n):
                yield Chunk(frame, [""] * len(frame))
        elif self.format == ".csv":
            for group in _groups(self._csv_records(), n):
                frame = pd.DataFrame([f for f, _ in group], columns=self.columns, dtype=object)
                yield Chunk(frame, [r for _, r in group])
        elif self._records is not None:
            for group in _groups(zip(self._records, self._record_reasons), n):
                yield Chunk(self._frame([row for row, _ in group]), [reason for _, reason in group])
        else:
            for group in _groups(self._jsonl_rows(), n):
                yield Chunk(self._frame([row for _, row, _ in group]), [reason for *_, reason in group])

    def _parquet_frames(self, n: int) -> Iterator[pd.DataFrame]:
        import pyarrow.parquet as pq

        # One row group at a time: iter_batches over the whole file reads ahead across row groups, and its
        # memory then grows with the file (Arrow's pool peaked at 87 MB for 1.2M rows, 8 MB for 30k).
        file = pq.ParquetFile(self.path)
        batches = (b for g in range(file.num_row_groups) for b in file.iter_batches(batch_size=n, row_groups=[g]))
        yield from _rechunk((b.to_pandas(types_mapper=pd.ArrowDtype) for b in batches), n)

    def _frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        # object columns keep every value as parsed (ints stay ints, a NaN stays NaN); an absent key is ABSENT
        return pd.DataFrame({c: [row.get(c, ABSENT) for row in rows] for c in self.columns}, dtype=object,
                            columns=self.columns)


def _loads(text: str) -> Any:
    """``json.loads``, with a value nested deeper than Python's parser goes as a ``ValueError`` (named like any
    malformed line) instead of a ``RecursionError``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply for Python's JSON parser") from None


def _without_bad_keys(row: dict[str, Any], where: str, reason: str) -> tuple[dict[str, Any], str]:
    """``row`` less its keys that UTF-8 cannot hold (a lone surrogate: a ``"\\ud800"`` escape, or a byte that was not
    UTF-8), and its reason saying so: such a key would be a column that no output format can name.

    >>> _without_bad_keys({"text": "a", "k\\udcffy": 1}, "line 2 of 'in.jsonl'", "")
    ({'text': 'a'}, "bad_encoding: line 2 of 'in.jsonl' has a key that is not valid unicode, left out: ['k\\\\udcffy']")
    """
    bad = [key for key in row if not is_utf8(key)]
    if not bad:
        return row, reason
    left_out = f"{bad!r:.200}"
    reason = (f"{reason}; keys left out: {left_out}" if reason
              else f"{errors.BAD_ENCODING}: {where} has a key that is not valid unicode, left out: {left_out}")
    return {key: value for key, value in row.items() if key not in bad}, reason


def _raise_csv_field_limit() -> None:
    """Python's csv refuses fields over 128 KiB, and a crawled caption may be longer. The limit is process-wide;
    it is only ever raised, never lowered."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def _groups(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, n)):
        yield batch


def _rechunk(frames: Iterator[pd.DataFrame], n: int) -> Iterator[pd.DataFrame]:
    """Exactly ``n`` rows per frame, whatever sizes the source yields (parquet row groups)."""
    pending: list[pd.DataFrame] = []
    size = 0
    for frame in frames:
        pending.append(frame)
        size += len(frame)
        while size >= n:
            merged = pd.concat(pending, ignore_index=True)
            yield merged.iloc[:n].reset_index(drop=True)
            rest = merged.iloc[n:]
            pending, size = ([rest] if len(rest) else []), size - n  # an empty slice would pin merged
    if size:
        yield pd.concat(pending, ignore_index=True)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file however spelled: the same device and inode when both exist (hard
    links, symlinks, ``./`` and ``..`` detours), else the same absolute path with symlinks resolved.

    >>> same_file("scored.csv", "./sub/../scored.csv")
    True
    >>> same_file("scored.csv", "report.html")
    False
    """
    try:
        first, second = os.stat(a), os.stat(b)
    except (OSError, ValueError):  # one is missing (or unreadable, or names a NUL): compare where they point
        return _resolved(a) == _resolved(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _resolved(path: str | os.PathLike[str]) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop (RuntimeError before Python 3.13), a NUL
        return Path(os.path.abspath(path))


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A whole file as one DataFrame (small files, tests)."""
    reader = TableReader(path)
    frames = list(reader.chunks(max(reader.n_rows, 1)))
    return frames[0] if frames else pd.DataFrame(columns=reader.columns)
