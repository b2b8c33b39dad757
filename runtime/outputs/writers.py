"""Row files out: stream DataFrames into a temporary file beside the output and move it into place only when
complete, so a killed run never leaves a partial file.

Text that UTF-8 cannot hold (lone surrogates, from a JSON ``"\\ud800"`` escape or a byte that was not UTF-8) never
loses the output: jsonl / json keep it as a ``\\uXXXX`` escape (the line is written ASCII-only), CSV and parquet
write U+FFFD in its place. Binary cells are written as base64 text in jsonl / json / CSV. A write that fails (a
full disk, a lost permission) is a :class:`WriteError` naming the path and the errno; nothing partial is left.
"""

from __future__ import annotations

import base64
import codecs
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .atomic import publish, temporary_sibling
from .errors import InputError, write_error
from .rows import ABSENT
from .schema import json_column_values
from .tables import FORMATS, table_format

if TYPE_CHECKING:
    import pyarrow as pa

_REPLACE = "longclip-replace"


def _replace_surrogates(error: UnicodeError) -> tuple[bytes, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return "\ufffd".encode() * (error.end - error.start), error.end  # bytes: the UTF-8 encoder takes no non-ASCII str


def _text_errors() -> str:
    """The codec error handler that writes U+FFFD for each character UTF-8 cannot hold (registered on first use)."""
    try:
        codecs.lookup_error(_REPLACE)
    except LookupError:
        codecs.register_error(_REPLACE, _replace_surrogates)
    return _REPLACE


def utf8_safe(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD.

    >>> utf8_safe("a\\ud800b")
    'a�b'
    """
    return text.encode("utf-8", _text_errors()).decode("utf-8")


class TableWriter:
    """Stream DataFrames into ``path`` through a temporary sibling; ``commit()`` moves it into place.

    ``schema``: for parquet, the column types to write (every chunk is converted to them, so the file has one
    schema from its first row group); without it the chunks' own types are unified at the end.
    """

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema | None = None):
        self.path = self.check(path)
        self.format = table_format(self.path)
        self.schema = schema
        try:
            fd, self._tmp = temporary_sibling(self.path, ".partial")
        except OSError as exc:
            raise write_error(self.path, exc) from None
        os.close(fd)
        self._done = False
        self._rows = 0
        self._header = False
        self._parts: list[Path] = []
        self._parquet: Any = None
        self._sink: IO[bytes] | None = None  # the parquet writer's file
        self._file: IO[Any] | None = None
        if self.format in (".jsonl", ".json"):
            self._file = open(self._tmp, "wb")
        elif self.format == ".csv":
            self._file = open(self._tmp, "w", encoding="utf-8", errors=_text_errors(), newline="")

    @staticmethod
    def check(path: str | os.PathLike[str]) -> Path:
        """``path`` if a table can be written there (a known format, an existing folder, not a folder itself),
        else :class:`InputError`; nothing is created."""
        out = Path(path)
        table_format(out)
        if not out.parent.is_dir():
            raise InputError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not exist")
        if out.is_dir():
            raise InputError(f"cannot write {str(out)!r}: it is a folder; name a file ({', '.join(FORMATS)})")
        return out

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame``'s rows (a frame without rows still fixes the CSV header / parquet schema)."""
        try:
            if self.format in (".jsonl", ".json"):
                self._write_json(frame)
            elif self.format == ".csv":
                assert self._file is not None
                # CRLF, as RFC 4180: Python's csv quotes a field holding a character of the line terminator, and
                # only then; with "\n" alone, a caption holding a bare "\r" split its record in two for any reader
                _csv_cells(frame).to_csv(self._file, header=not self._header, index=False, lineterminator="\r\n")
                self._header = True
            else:
                self._write_parquet(frame)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self._rows += len(frame)

    def _write_json(self, frame: pd.DataFrame) -> None:
        assert self._file is not None
        columns = [str(c) for c in frame.columns]
        objects = [frame[c].dtype == object for c in frame.columns]
        out = self._file
        for values in frame.itertuples(index=False, name=None):
            row = {c: _json_cell(v, o) for c, v, o in zip(columns, values, objects) if v is not ABSENT}
            try:
                line = json.dumps(row, ensure_ascii=False, default=_json_default).encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: keep it, as an escape
                line = json.dumps(row, ensure_ascii=True, default=_json_default).encode("ascii")
            if self.format == ".jsonl":
                out.write(line + b"\n")
            else:
                out.write((b"[\n" if not out.tell() else b",\n") + line)

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = self._arrow(frame)
        if self.schema is None:
            part = self._tmp.with_name(f"{self._tmp.name}.{len(self._parts):06d}")
            self._parts.append(part)
            with open(part, "wb") as sink:
                pq.write_table(table, sink)
            return
        if self._parquet is None:
            self._open_parquet(self.schema)
        if table.num_rows:
            self._parquet.write_table(table)

    def _open_parquet(self, schema: pa.Schema) -> None:
        """A ParquetWriter on the temporary file, opened here as a Python file: pyarrow takes a path as UTF-8 text,
        and a file's name need not be (an OUTPUT named with a byte that is not UTF-8)."""
        import pyarrow.parquet as pq

        self._sink = open(self._tmp, "wb")
        self._parquet = pq.ParquetWriter(self._sink, schema)

    def _arrow(self, frame: pd.DataFrame) -> pa.Table:
        """``frame`` as an Arrow table of ``self.schema`` (when given), without pandas metadata: a nested or
        Arrow-typed column then reads back with ``pd.read_parquet`` as well as with ``pyarrow``."""
        import pyarrow as pa

        try:
            return _to_arrow(frame, self.schema)
        except UnicodeEncodeError:  # a lone surrogate somewhere in the text: U+FFFD, as documented
            return _to_arrow(_utf8_cells(frame), self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise InputError(f"cannot write {str(self.path)!r} as parquet: {exc}; write .jsonl instead") from None

    def _merge_parquet(self) -> None:
        """Parts may infer different types (an all-null chunk); unify them, then stream into one file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schemas = []
        for part in self._parts:
            with open(part, "rb") as f:
                schemas.append(pq.read_schema(f))
        schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
        self._open_parquet(schema)
        for part in self._parts:
            with open(part, "rb") as f:
                self._parquet.write_table(pq.read_table(f).cast(schema))
        self._close_parquet()

    def _close_parquet(self) -> None:
        assert self._sink is not None
        self._parquet.close()  # writes the footer into the sink, which pyarrow does not close
        self._sink.close()

    def commit(self) -> None:
        """Finish the file and move it to ``path`` atomically; on failure nothing is left behind."""
        try:
            if self._file is not None:
                if self.format == ".json":
                    self._file.write(b"[]\n" if not self._file.tell() else b"\n]\n")
                self._file.close()
            elif self.schema is None:
                self._merge_parquet()
            else:
                if self._parquet is None:  # no rows: the file still has the schema
                    self._open_parquet(self.schema)
                self._close_parquet()
            publish(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from None
        self._done = True
        self._cleanup_parts()

    def abort(self) -> None:
        """Drop everything written so far (nothing once committed); never raises."""
        if self._done:
            return
        self._done = True
        for close in (getattr(self._file, "close", None), getattr(self._parquet, "close", None),
                      getattr(self._sink, "close", None)):
            try:
                if close is not None:
                    close()
            except OSError:  # a full disk fails the last flush too: the file is deleted anyway
                pass
        self._tmp.unlink(missing_ok=True)
        self._cleanup_parts()

    def _cleanup_parts(self) -> None:
        for part in self._parts:
            part.unlink(missing_ok=True)


def _to_arrow(frame: pd.DataFrame, schema: pa.Schema | None) -> pa.Table:
    import pyarrow as pa

    if schema is None:
        frame = frame.copy()
        for name in frame.columns:
            if frame[name].dtype == object:
                frame[name] = _cells(frame[name], lambda v: None if v is ABSENT else v)
        return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    typed = [f.name for f in schema if frame[f.name].dtype != object]  # numpy and Arrow-backed columns
    converted = pa.Table.from_pandas(frame[typed], preserve_index=False) if typed else None
    arrays = [converted.column(f.name).cast(f.type) if converted is not None and f.name in typed
              else pa.array(json_column_values(frame, f.name, f.type), type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _csv_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns as CSV text: absent keys empty, binary as base64, lists and objects as JSON."""
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object or isinstance(out[name].dtype, pd.ArrowDtype):
            out[name] = _cells(out[name], _csv_cell)  # a lone surrogate left in: the file writes U+FFFD for it
    return out


def _cells(column: pd.Series, convert: Callable[[Any], Any]) -> pd.Series:
    """``convert`` of each cell, as object cells. ``Series.map`` would infer a dtype from the results: an integer
    beside a float becomes a float (2**53 + 1 loses its last digit), and pandas 3 turns strings into its string
    dtype, which cannot hold a lone surrogate. ``tolist`` also reads Arrow types pandas cannot cast (string_view)."""
    return pd.Series([convert(v) for v in column.tolist()], index=column.index, dtype=object)


def _csv_cell(value: Any) -> Any:
    if value is ABSENT:
        return None
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, dict, np.ndarray)):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return value


def _utf8_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns with each lone surrogate replaced by U+FFFD, in strings and inside lists and objects."""
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object:
            out[name] = _cells(out[name], _utf8_cell)
    return out


def _utf8_cell(value: Any) -> Any:
    if isinstance(value, str):
        return utf8_safe(value)
    if isinstance(value, (list, dict)):
        return json.loads(utf8_safe(json.dumps(value, ensure_ascii=False)))
    return value


def _json_cell(value: Any, from_json: bool) -> Any:
    """A cell as JSON: a NaN that a JSON input had stays ``NaN``; other missing values (an unscored row's score,
    ``pd.NA``) are ``null``."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return value if from_json else None
    if isinstance(value, np.generic):
        return _json_cell(value.item(), from_json)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "tolist"):  # numpy arrays (parquet lists)
        return value.tolist()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
