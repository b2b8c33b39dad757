"""The row contract, in one place: which columns a row file has, what a usable cell is, and what comes back.

Every input row comes back, in order, with its columns, plus the score column (``NaN`` when unscored) and
``<output_key>_error`` (``""`` when scored, else ``"<code>: <detail>"`` with a code from :mod:`.errors`). This
module imports no model code: the report and the planners use it without loading ONNX Runtime.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import errors
from .errors import ImageError, InputError, TextError

if TYPE_CHECKING:
    import pyarrow as pa

IMAGE_KEY = "image_path"
TEXT_KEY = "text"
OUTPUT_KEY = "longclip_score"


@dataclass(frozen=True, kw_only=True)
class Columns:
    """Where a row file keeps its image paths, texts and scores, and what relative image paths resolve against;
    the first fields of the local engine's ``RunOptions`` and the report's ``ReportOptions``."""

    image_key: str = IMAGE_KEY
    text_key: str = TEXT_KEY
    output_key: str = OUTPUT_KEY
    image_root: str | None = None  # relative image paths resolve against it; None: the current directory


def error_key(output_key: str) -> str:
    """The column holding each row's reason, beside the score column ``output_key``.

    >>> error_key("longclip_score")
    'longclip_score_error'
    """
    return f"{output_key}_error"


def check_columns(columns: Sequence[object], keys: dict[str, str], where: str = "the input") -> None:
    """Raise :class:`InputError` for the first of ``keys`` (column -> the option that names it) missing from
    ``columns``, listing the columns there are and suggesting a near name.

    >>> try:
    ...     check_columns(["image", "text"], {"image_path": "--image-key"})
    ... except InputError as error:
    ...     print(error)
    column 'image_path' not in the input; columns are ['image', 'text']; did you mean 'image'? (pass --image-key image)
    """
    names = [str(c) for c in columns]
    for key, option in keys.items():
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}? (pass {option} {near[0]})" if near else f"; pass {option} naming one"
            raise InputError(f"column {key!r} not in {where}; columns are {names}{hint}")


def check_output_columns(columns: Sequence[object], output_key: str, overwrite: bool = False,
                         option: str = "--overwrite-columns") -> None:
    """Raise :class:`InputError` when the score or reason column is already an input column, unless ``overwrite``:
    scoring would replace that column's values."""
    for key in (output_key, error_key(output_key)):
        if key in columns and not overwrite:
            raise InputError(f"column {key!r} is already in the input, and scoring would replace it: choose another "
                             f"output key, or pass {option} to replace it")


def check_image_root(image_root: str | os.PathLike[str] | None, option: str = "--image-root") -> None:
    """Raise :class:`InputError` unless ``image_root`` is None (the current directory) or an existing folder: a
    missing one would turn every relative image path into ``missing_file``.

    >>> try:
    ...     check_image_root("/nonexistent")
    ... except InputError as error:
    ...     print(error)
    --image-root '/nonexistent' does not exist: pass the folder that the relative image paths are relative to
    """
    if image_root is None:
        return
    root = os.fspath(image_root)
    if not os.path.exists(root):
        raise InputError(f"{option} {root!r} does not exist: pass the folder that the relative image paths are "
                         "relative to")
    if not os.path.isdir(root):
        raise InputError(f"{option} {root!r} is not a folder: pass the folder that the relative image paths are "
                         "relative to")


class _Absent:
    """The cell of a key that a JSON row does not have: null when scored, left out again when written as JSON (a
    ``NaN`` the row does have is kept)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<absent>"

    def __reduce__(self) -> str:  # one instance, also across processes
        return "ABSENT"


ABSENT = _Absent()


def is_null(value: object) -> bool:
    """A missing cell: ``None``, ``pd.NA``, ``NaT``, a float NaN, or a key absent from its JSON row.

    >>> [is_null(v) for v in (None, float("nan"), np.float32("nan"), pd.NA, ABSENT, "", 0)]
    [True, True, True, True, True, False, False]
    """
    return (value is None or value is pd.NA or value is pd.NaT or value is ABSENT
            or (isinstance(value, (float, np.floating)) and math.isnan(value)))  # np.float32 is no float


_NULL = object()


def cell_key(value: object) -> Hashable:
    """Dictionary key of a cell, so equal cells are encoded once: nulls share one key, other values that are not
    strings key by their type too (``1``, ``1.0`` and ``True`` are equal in Python, but each gets a reason that
    names it), and values that cannot be hashed (a list, a tuple holding one) by their repr.

    >>> cell_key("a.jpg") == cell_key("a.jpg"), cell_key(None) == cell_key(float("nan")), cell_key(1) == cell_key(True)
    (True, True, False)
    """
    if is_null(value):
        return _NULL
    if isinstance(value, str):
        return value
    try:
        hash(value)
    except TypeError:  # isinstance(value, Hashable) holds for a tuple that holds a list
        return ("unhashable", type(value), repr(value))
    return (type(value), value)


def resolve_image_path(value: object, image_root: Path | None) -> Path:
    """The file a row's image value names; relative paths resolve against ``image_root`` (default: cwd).

    >>> resolve_image_path("a/b.jpg", Path("/data")).as_posix()
    '/data/a/b.jpg'
    """
    if is_null(value):
        raise ImageError(errors.NULL_PATH, "image path is missing (null)")
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise ImageError(errors.BAD_PATH, f"image path must be a non-empty string, got {value!r:.60}")
    if not is_utf8(os.fspath(value)):
        raise ImageError(errors.BAD_PATH, f"image path is not valid unicode (a lone surrogate): {value!r:.80}")
    path = Path(os.fspath(value))
    return path if path.is_absolute() or image_root is None else image_root / path


def check_text(value: object) -> str:
    """The text itself, or :class:`TextError` for null, non-string, empty or whitespace-only values.

    >>> check_text("a cat")
    'a cat'
    """
    if is_null(value):
        raise TextError(errors.NULL_TEXT, "text is missing (null)")
    if not isinstance(value, str):
        raise TextError(errors.NOT_TEXT, f"text must be a string, got {type(value).__name__} ({value!r:.60})")
    if not value.strip():
        raise TextError(errors.EMPTY_TEXT, "text is empty or whitespace")
    if not is_utf8(value):
        raise TextError(errors.BAD_TEXT, f"text is not valid unicode (a lone surrogate): {value!r:.80}")
    return value


def is_utf8(text: str) -> bool:
    """Whether UTF-8 can hold ``text``: no lone surrogates (a JSON ``"\\ud800"`` escape, or a byte that was not
    UTF-8).

    >>> is_utf8("café"), is_utf8("a\\ud800")
    (True, False)
    """
    return text.isascii() or not any("\ud800" <= ch <= "\udfff" for ch in text)


def row_reason(image_reason: str, text_reason: str) -> str:
    """A row's one reason when its image and its text may both be at fault: the image's comes first (it is the
    costlier input, and the one a data team usually fixes).

    >>> row_reason("missing_file: x", "empty_text: y"), row_reason("", "empty_text: y")
    ('missing_file: x', 'empty_text: y')
    """
    return image_reason or text_reason


def with_scores(frame: pd.DataFrame, scores: np.ndarray, reasons: list[str], output_key: str) -> pd.DataFrame:
    """``frame`` plus the score (float64, ``NaN`` when unscored) and ``<output_key>_error`` columns."""
    out = frame.copy()
    out[output_key] = np.asarray(scores, dtype=np.float64)
    out[error_key(output_key)] = reasons
    return out


def output_schema(schema: pa.Schema, output_key: str) -> pa.Schema:
    """The parquet types of an output: the input's columns, then the score (float64) and the reason (string);
    a score or reason column the input already had (``--overwrite-columns``) keeps its place with the new type."""
    import pyarrow as pa

    ours = {output_key: pa.float64(), error_key(output_key): pa.string()}
    fields = [pa.field(f.name, ours[f.name]) if f.name in ours else f for f in schema]
    fields += [pa.field(name, kind) for name, kind in ours.items() if name not in schema.names]
    return pa.schema(fields)


def no_rows(columns: list[str], output_key: str) -> pd.DataFrame:
    """An empty output: the input's columns plus the score and reason columns, so a header or schema is written."""
    return with_scores(pd.DataFrame(columns=columns), np.empty(0), [], output_key)
