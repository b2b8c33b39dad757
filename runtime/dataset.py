"""Tables in, tables out: score rows in chunks, one reason per row that cannot be scored."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ImageError, InputError, RowError, TextError
from .model import LongCLIP
from .prefetch import input_pool, prefetch
from .preprocess import MAX_PIXELS, decode_image
from .scoring import score_rows

CHUNK_ROWS = 1024


def check_columns(columns: Sequence[object], *keys: str) -> None:
    """Raise :class:`InputError` naming a missing column and listing the columns there are."""
    for key in keys:
        if key not in columns:
            raise InputError(f"column {key!r} not in the input; columns are {[str(c) for c in columns]}")


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


_NULL = object()


def _key(value: object) -> Hashable:
    """Dictionary key of a cell: nulls share one sentinel, unhashable values (lists) key by their repr."""
    if _is_missing(value):
        return _NULL
    return value if isinstance(value, Hashable) else ("unhashable", repr(value))


def _distinct(values: list[object]) -> dict[Hashable, object]:
    """First value of each distinct key, in order of first appearance."""
    out: dict[Hashable, object] = {}
    for value in values:
        out.setdefault(_key(value), value)
    return out


def resolve_image_path(value: object, image_root: Path | None) -> Path:
    """The file a row's image value names; relative paths resolve against ``image_root`` (default: cwd)."""
    if _is_missing(value):
        raise ImageError("null_path", "image path is missing (null)")
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise ImageError("bad_path", f"image path must be a non-empty string, got {value!r:.60}")
    path = Path(os.fspath(value))
    return path if path.is_absolute() or image_root is None else image_root / path


def check_text(value: object) -> str:
    """The text itself, or :class:`TextError` for null, non-string, empty or whitespace-only values."""
    if _is_missing(value):
        raise TextError("null_text", "text is missing (null)")
    if not isinstance(value, str):
        raise TextError("not_text", f"text must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TextError("empty_text", "text is empty or whitespace")
    return value


@dataclass
class ChunkResult:
    """Per-row outcome of a chunk: score (``NaN`` when not scored), reason (``""`` when scored), truncation."""

    scores: np.ndarray  # (N,) float32
    errors: list[str]
    truncated: np.ndarray  # (N,) bool: the text passed 248 tokens and was cut


def _decoder(model: LongCLIP, image_root: Path | None, max_pixels: int
             ) -> Callable[[tuple[Hashable, object]], tuple[Hashable, np.ndarray | None, str]]:
    m = model.manifest

    def decode(item: tuple[Hashable, object]) -> tuple[Hashable, np.ndarray | None, str]:
        key, value = item
        try:
            path = resolve_image_path(value, image_root)
            return key, decode_image(path, m.image_size, m.mean, m.std, max_pixels), ""
        except RowError as exc:
            return key, None, str(exc)

    return decode


def _embed_images(model: LongCLIP, values: list[object], image_root: Path | None, batch_size: int,
                  max_pixels: int, pool: Executor | None) -> tuple[dict[Hashable, np.ndarray], dict[Hashable, str]]:
    """Each distinct image once. Decoding runs up to two batches ahead on ``pool`` while the model embeds the
    current batch; memory follows the batch size, not the chunk."""
    embeds: dict[Hashable, np.ndarray] = {}
    failed: dict[Hashable, str] = {}
    keys: list[Hashable] = []
    pixels: list[np.ndarray] = []

    def flush() -> None:
        if pixels:
            embeds.update(zip(keys, model.embed_pixels(np.stack(pixels), batch_size)))
            keys.clear()
            pixels.clear()

    decode = _decoder(model, image_root, max_pixels)
    for key, image, reason in prefetch(pool, decode, _distinct(values).items(), depth=2 * batch_size):
        if reason:
            failed[key] = reason
            continue
        keys.append(key)
        pixels.append(image)  # type: ignore[arg-type]
        if len(pixels) == batch_size:
            flush()
    flush()
    return embeds, failed


@dataclass
class _Tokens:
    texts: list[str]
    ids: np.ndarray
    lengths: np.ndarray
    failed: dict[Hashable, str]


def _tokenize(model: LongCLIP, values: list[object]) -> _Tokens:
    texts: list[str] = []
    failed: dict[Hashable, str] = {}
    for key, value in _distinct(values).items():
        try:
            texts.append(check_text(value))
        except RowError as exc:
            failed[key] = str(exc)
    ids, lengths = model.tokenizer.batch(texts, model.manifest.context_length)
    return _Tokens(texts, ids, lengths, failed)


def score_chunk(model: LongCLIP, images: list[object], texts: list[object], image_root: Path | None = None,
                batch_size: int = 32, max_pixels: int = MAX_PIXELS, pool: Executor | None = None) -> ChunkResult:
    """Score parallel lists of image values and texts; each distinct image and text is encoded once.

    With a ``pool``, tokenization and image decoding run on its threads, overlapped with inference.
    """
    tokens_future = pool.submit(_tokenize, model, texts) if pool is not None else None
    image_embeds, image_failed = _embed_images(model, images, image_root, batch_size, max_pixels, pool)
    tokens = tokens_future.result() if tokens_future is not None else _tokenize(model, texts)
    text_embeds = dict(zip(tokens.texts, model.embed_ids(tokens.ids, batch_size))) if tokens.texts else {}
    cut = {t for t, n in zip(tokens.texts, tokens.lengths) if n > model.manifest.context_length}
    image_keys, text_keys = [_key(v) for v in images], [_key(v) for v in texts]
    errors = [image_failed.get(i) or tokens.failed.get(t) or "" for i, t in zip(image_keys, text_keys)]
    good = [n for n, reason in enumerate(errors) if not reason]
    scores = np.full(len(images), np.nan, dtype=np.float32)
    if good:
        scores[good] = score_rows(np.stack([image_embeds[image_keys[n]] for n in good]),
                                  np.stack([text_embeds[text_keys[n]] for n in good]))
    truncated = np.array([k in cut for k in text_keys], dtype=bool)
    return ChunkResult(scores, errors, truncated)


def score_frame(
    model: LongCLIP,
    frame: pd.DataFrame,
    image_key: str = "image_path",
    text_key: str = "text",
    output_key: str = "longclip_score",
    image_root: str | os.PathLike[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    batch_size: int = 32,
) -> pd.DataFrame:
    """A copy of ``frame`` (index, order and columns kept) plus ``output_key`` and ``<output_key>_error``.

    Rows that cannot be scored get ``NaN`` and a reason; good rows get ``""`` as their error.
    """
    check_columns(list(frame.columns), image_key, text_key)
    root = Path(image_root) if image_root is not None else None
    scores = np.full(len(frame), np.nan, dtype=np.float32)
    errors: list[str] = []
    images, texts = frame[image_key].tolist(), frame[text_key].tolist()
    with input_pool() as pool:
        for start in range(0, len(frame), chunk_rows):
            stop = start + chunk_rows
            result = score_chunk(model, images[start:stop], texts[start:stop], root, batch_size, pool=pool)
            scores[start : start + len(result.scores)] = result.scores
            errors.extend(result.errors)
    return with_scores(frame, scores, errors, output_key)


def error_key(output_key: str) -> str:
    """The column holding each row's reason, beside the score column ``output_key``.

    >>> error_key("longclip_score")
    'longclip_score_error'
    """
    return f"{output_key}_error"


def no_rows(columns: list[str], output_key: str) -> pd.DataFrame:
    """An empty output: the input's columns plus the score and reason columns, so a header or schema is written."""
    return with_scores(pd.DataFrame(columns=columns), np.empty(0), [], output_key)


def with_scores(frame: pd.DataFrame, scores: np.ndarray, errors: list[str], output_key: str) -> pd.DataFrame:
    """``frame`` plus the score (float64, ``NaN`` when unscored) and ``<output_key>_error`` columns."""
    out = frame.copy()
    out[output_key] = np.asarray(scores, dtype=np.float64)
    out[error_key(output_key)] = errors
    return out
