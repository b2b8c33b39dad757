"""Reading and writing the row files ``longclip-run`` takes (JSON Lines for now), atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from .errors import InputError

SUPPORTED = (".jsonl",)


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in SUPPORTED:
        raise InputError(f"{str(path)!r}: unsupported file type {path.suffix!r}; use one of {', '.join(SUPPORTED)}")


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Rows of a ``.jsonl`` file, values exactly as written (no type guessing); blank lines skipped."""
    path = Path(path)
    _check_suffix(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{str(path)!r} line {number} is not valid JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise InputError(f"{str(path)!r} line {number} is a {type(row).__name__}, not a JSON object")
                rows.append(row)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc}") from None
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame()


def _json_value(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None  # JSON has no NaN: an unscored row reads as null, with its reason beside it
    return value.item() if hasattr(value, "item") else value


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``frame`` as ``.jsonl`` through a temporary file: a killed run never leaves a partial file."""
    path = Path(path)
    _check_suffix(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write {str(path)!r}: {exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            columns = [str(c) for c in frame.columns]
            for values in frame.itertuples(index=False, name=None):
                row = {c: _json_value(v) for c, v in zip(columns, values)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
