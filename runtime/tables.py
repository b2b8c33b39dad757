"""Row files in and out, chosen by extension: ``.jsonl``, ``.json``, ``.csv``, ``.parquet``.

Readers check the whole input before any work (a malformed line is named up front) and then hand out chunks of
a fixed number of rows, the same chunks on every pass. Writers stream chunk by chunk into a temporary file
beside the output and move it into place only when complete, so a killed run never leaves a partial file.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import InputError

FORMATS = (".jsonl", ".json", ".csv", ".parquet")


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{str(path)!r}: unsupported file type {suffix or '(none)'!r}; use {', '.join(FORMATS)}")
    return suffix


class TableReader:
    """A checked input file: ``columns``, ``n_rows``, and ``chunks(n)`` yielding DataFrames of ``n`` rows."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.format = _format(self.path)
        if not self.path.is_file():
            raise InputError(f"input {str(self.path)!r} does not exist or is not a file")
        self.columns: list[str] = []
        self._seen: set[str] = set()
        self.n_rows = 0
        self._records: list[dict[str, Any]] | None = None
        try:
            getattr(self, f"_scan_{self.format[1:]}")()
        except InputError:
            raise
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas / pyarrow parse errors are ValueErrors
            raise InputError(f"cannot read {str(self.path)!r}: {str(exc).splitlines()[0]}") from None

    def _add_columns(self, keys: Any) -> None:
        for key in keys:
            if key not in self._seen:
                self._seen.add(key)
                self.columns.append(key)

    def _scan_jsonl(self) -> None:
        for _, row in self._jsonl_rows():
            self._add_columns(row)
            self.n_rows += 1

    def _jsonl_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{str(self.path)!r} line {number} is not valid JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise InputError(f"{str(self.path)!r} line {number} is a JSON {type(row).__name__}, not an object")
                yield number, row

    def _scan_json(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except ValueError as exc:
                raise InputError(f"{str(self.path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(f"{str(self.path)!r} must hold a JSON array of objects (one per row)")
        for row in data:
            self._add_columns(row)
        self._records, self.n_rows = data, len(data)

    def _scan_csv(self) -> None:
        for _, _ in self._csv_records():
            self.n_rows += 1

    def _csv_records(self) -> Iterator[tuple[int, list[str]]]:
        """``(line, fields)`` of each record, every field a string exactly as written (an empty cell is ``""``).

        Python's ``csv`` reads both passes, so the scan and the chunks cannot disagree; a record whose field count
        differs from the header's is refused (pandas would shift it into an index or pad it, silently).
        """
        _raise_csv_field_limit()
        with open(self.path, encoding="utf-8-sig", newline="") as f:
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
                    yield start, fields
            except csv.Error as exc:
                raise InputError(f"{str(self.path)!r} line {reader.line_num} is not valid CSV: {exc}") from None

    def _set_header(self, fields: list[str]) -> None:
        repeated = sorted({c for c in fields if fields.count(c) > 1})
        if repeated:
            raise InputError(f"{str(self.path)!r} has the column name(s) {repeated} more than once in its header: "
                             "give every column its own name")
        self.columns = fields

    def _scan_parquet(self) -> None:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(self.path)
        self.columns, self.n_rows = list(meta.schema_arrow.names), meta.metadata.num_rows

    def chunks(self, n: int) -> Iterator[pd.DataFrame]:
        """Consecutive DataFrames of ``n`` rows (the last may be shorter), with every column of the file."""
        if self.format == ".parquet":
            import pyarrow.parquet as pq

            # One row group at a time: iter_batches over the whole file reads ahead across row groups, and its
            # memory then grows with the file (Arrow's pool peaked at 87 MB for 1.2M rows, 8 MB for 30k).
            file = pq.ParquetFile(self.path)
            batches = (b for g in range(file.num_row_groups) for b in file.iter_batches(batch_size=n, row_groups=[g]))
            yield from _rechunk((b.to_pandas(types_mapper=pd.ArrowDtype) for b in batches), n)
        elif self.format == ".csv":
            for rows in _groups((fields for _, fields in self._csv_records()), n):
                yield pd.DataFrame(rows, columns=self.columns, dtype=object)
        else:
            rows = self._records if self._records is not None else (r for _, r in self._jsonl_rows())
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(row)
                if len(batch) == n:
                    yield self._frame(batch)
                    batch = []
            if batch:
                yield self._frame(batch)

    def _frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        # object dtype keeps every value as parsed (ints stay ints); a key absent from a row reads as NaN
        return pd.DataFrame(rows, columns=self.columns, dtype=object)


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


def _json_cell(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class TableWriter:
    """Stream DataFrames into ``path`` through a temporary sibling; ``commit()`` moves it into place."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = self.check(path)
        self.format = _format(self.path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
        except OSError as exc:
            raise InputError(f"cannot write {str(self.path)!r}: {exc.strerror}") from None
        os.close(fd)
        self._tmp = Path(tmp)
        self._done = False
        self._count = 0
        self._parts: list[Path] = []
        self._file = open(self._tmp, "w", encoding="utf-8", newline="") if self.format != ".parquet" else None

    @staticmethod
    def check(path: str | os.PathLike[str]) -> Path:
        """``path`` if a table can be written there (a known format, an existing folder, not a folder itself),
        else :class:`InputError`; nothing is created."""
        out = Path(path)
        _format(out)
        if not out.parent.is_dir():
            raise InputError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not exist")
        if out.is_dir():
            raise InputError(f"cannot write {str(out)!r}: it is a folder; name a file ({', '.join(FORMATS)})")
        return out

    def write(self, frame: pd.DataFrame) -> None:
        if self.format in (".jsonl", ".json"):
            self._write_json(frame)
        elif self.format == ".csv":
            frame.to_csv(self._file, header=self._count == 0, index=False)
        else:
            self._write_parquet_part(frame)
        self._count += len(frame)

    def _write_json(self, frame: pd.DataFrame) -> None:
        assert self._file is not None
        columns = [str(c) for c in frame.columns]
        # In object columns (JSON input) NaN means "key absent from this row": leave it out, as it came in.
        absent = [frame[c].dtype == object for c in frame.columns]
        for values in frame.itertuples(index=False, name=None):
            row = {c: _json_cell(v) for c, v, a in zip(columns, values, absent)
                   if not (a and isinstance(v, float) and math.isnan(v))}
            line = json.dumps(row, ensure_ascii=False, default=str)
            if self.format == ".jsonl":
                self._file.write(line + "\n")
            else:
                self._file.write(("[\n" if not self._file.tell() else ",\n") + line)

    def _write_parquet_part(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(f"cannot write {str(self.path)!r} as parquet: {exc}; write .jsonl or .csv instead") from None
        part = self._tmp.with_name(f"{self._tmp.name}.{len(self._parts):06d}")
        pq.write_table(table, part)
        self._parts.append(part)

    def _merge_parquet(self) -> None:
        """Parts may infer different types (an all-null chunk); unify them, then stream into one file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schemas = [pq.read_schema(p) for p in self._parts]
        schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
        with pq.ParquetWriter(self._tmp, schema) as writer:
            for part in self._parts:
                writer.write_table(pq.read_table(part).cast(schema))

    def commit(self) -> None:
        """Finish the file and move it to ``path`` atomically."""
        if self._file is not None:
            if self.format == ".json":
                self._file.write("[]\n" if not self._file.tell() else "\n]\n")
            self._file.close()
        else:
            self._merge_parquet()
        os.chmod(self._tmp, 0o644)  # mkstemp made it private; the output is an ordinary file
        os.replace(self._tmp, self.path)
        self._done = True
        self._cleanup_parts()

    def abort(self) -> None:
        """Drop everything written so far (nothing once committed)."""
        if self._done:
            return
        self._done = True
        if self._file is not None:
            self._file.close()
        self._tmp.unlink(missing_ok=True)
        self._cleanup_parts()

    def _cleanup_parts(self) -> None:
        for part in self._parts:
            part.unlink(missing_ok=True)


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
