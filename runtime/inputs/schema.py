"""Parquet column types for a JSON input, decided over the whole up-front scan, so a parquet OUTPUT never fails
late on a value it cannot hold.

The rule, per column (README, "Command line"): only strings -> string; only booleans -> bool; only integers within
int64 -> int64; integers and floats -> float64 (while every integer is exact as a float64, up to 2**53); only
lists, or only objects, that Arrow can hold as one nested type and parquet can write -> that type; only nulls ->
null. Anything else (a column that mixes kinds, an integer beyond int64, nested values of clashing types, an empty
object ``{}`` that no other value gives a field) is written as strings: each string as itself, every other value
as its JSON text. Absent keys and nulls are nulls in every case.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from .rows import ABSENT

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

_INT64 = (-(2**63), 2**63 - 1)
_EXACT_FLOAT = 2**53
_NESTED_BUFFER = 4096  # nested values converted (checked) at a time during the scan


class _Column:
    __slots__ = ("kinds", "low", "high", "nested", "pending")

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.low, self.high = 0, 0  # integer range seen
        self.nested: pa.DataType | None = None  # the unified type of the nested values so far
        self.pending: list[Any] = []


class ColumnKinds:
    """What kinds of value each column of a JSON input holds; :meth:`schema` turns them into parquet types.

    >>> kinds = ColumnKinds()
    >>> for row in ({"a": 1, "b": "x", "c": [1]}, {"a": 2.5, "b": 3, "c": [2, 3]}):
    ...     kinds.add(row)
    >>> [str(f.type) for f in kinds.schema(["a", "b", "c", "d"])]
    ['double', 'string', 'list<item: int64>', 'null']
    """

    def __init__(self) -> None:
        self._columns: dict[str, _Column] = {}

    def add(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            column = self._columns.get(key)
            if column is None:
                column = self._columns[key] = _Column()
            kind = _kind(value)
            if kind is None:
                continue
            column.kinds.add(kind)
            if kind == "int":
                column.low, column.high = min(column.low, value), max(column.high, value)
            elif kind == "nested" and "json" not in column.kinds:
                column.pending.append(value)
                if len(column.pending) >= _NESTED_BUFFER:
                    _fold_nested(column)

    def schema(self, columns: list[str]) -> pa.Schema:
        """The parquet type of each of ``columns`` (in that order), by the module's rule."""
        import pyarrow as pa

        return pa.schema([(name, self._type(self._columns.get(name))) for name in columns])

    def _type(self, column: _Column | None) -> pa.DataType:
        import pyarrow as pa

        if column is None or not column.kinds:
            return pa.null()
        _fold_nested(column)
        kinds = column.kinds
        exact_ints = -_EXACT_FLOAT <= column.low and column.high <= _EXACT_FLOAT
        in_int64 = _INT64[0] <= column.low and column.high <= _INT64[1]
        if kinds == {"str"}:
            return pa.string()
        if kinds == {"bool"}:
            return pa.bool_()
        if kinds == {"int"} and in_int64:
            return pa.int64()
        if kinds <= {"int", "float"} and exact_ints:
            return pa.float64()
        if kinds == {"nested"} and column.nested is not None and _parquet_can_write(column.nested):
            return column.nested
        return pa.string()


def _kind(value: Any) -> str | None:
    if value is None or value is ABSENT:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, dict)):
        return "nested"
    return "json"


def _fold_nested(column: _Column) -> None:
    """Convert the pending nested values (so a value Arrow cannot hold is found now) and unify their type with the
    column's; a failure makes the column JSON text."""
    if not column.pending:
        return
    import pyarrow as pa

    try:
        kind = pa.array(column.pending).type
        if column.nested is not None:
            kind = pa.unify_schemas([pa.schema([("x", column.nested)]), pa.schema([("x", kind)])],
                                    promote_options="permissive").field("x").type
        column.nested = kind
    except (pa.ArrowException, OverflowError, TypeError, ValueError, UnicodeEncodeError):
        column.kinds.add("json")
        column.nested = None
    column.pending = []


def _parquet_can_write(kind: pa.DataType) -> bool:
    """Whether parquet can hold ``kind``: it cannot write a struct without fields (all of a column's objects
    empty, at any depth), and would fail only when the output is written, after every row is scored.

    >>> import pyarrow as pa
    >>> _parquet_can_write(pa.list_(pa.struct([("a", pa.int64())]))), _parquet_can_write(pa.list_(pa.struct([])))
    (True, False)
    """
    import pyarrow as pa

    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(_parquet_can_write(field.type) for field in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _parquet_can_write(kind.value_type)
    return True


def as_json_text(value: Any) -> str | None:
    """A value of a column written as strings: a string as itself, null as null, anything else as its JSON text.

    >>> as_json_text("a"), as_json_text(3), as_json_text({"k": [1]}), as_json_text(None)
    ('a', '3', '{"k": [1]}', None)
    """
    if value is None or value is ABSENT:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return json.dumps(value, ensure_ascii=False, default=str)


def json_column_values(frame: pd.DataFrame, name: str, kind: pa.DataType) -> list[Any]:
    """A JSON input column's cells, ready for ``kind``: absent keys as nulls, JSON text for a string column."""
    import pyarrow as pa

    values = frame[name].tolist()
    if kind == pa.string():
        return [as_json_text(v) for v in values]
    return [None if v is ABSENT else v for v in values]
