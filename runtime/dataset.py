"""Tables in, tables out: score a DataFrame in chunks, one reason per row that cannot be scored."""

from __future__ import annotations

import math
import os
from collections.abc import Hashable
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ImageError, InputError, TextError
from .model import LongCLIP
from .preprocess import load_image, preprocess_image
from .scoring import score_rows

CHUNK_ROWS = 256


def check_columns(frame: pd.DataFrame, *keys: str) -> None:
    """Raise :class:`InputError` naming a missing column and listing the columns there are."""
    for key in keys:
        if key not in frame.columns:
            raise InputError(f"column {key!r} not in the input; columns are {list(map(str, frame.columns))}")


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _resolve(value: object, image_root: Path | None) -> Path:
    if _is_missing(value):
        raise ImageError("image path is missing (null)")
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise ImageError(f"image path must be a non-empty string, got {value!r:.60}")
    path = Path(os.fspath(value))
    return path if path.is_absolute() or image_root is None else image_root / path


def _check_text(value: object) -> str:
    if _is_missing(value):
        raise TextError("text is missing (null)")
    if not isinstance(value, str):
        raise TextError(f"text must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TextError("text is empty or whitespace")
    return value


def _key(value: object) -> Hashable:
    return value if isinstance(value, Hashable) else repr(value)


def _embed_unique_images(
    model: LongCLIP, values: list[object], image_root: Path | None
) -> tuple[np.ndarray, dict[Hashable, int], dict[Hashable, str]]:
    """Embeddings of each distinct image once: ``(embeds, row of each key, error of each failed key)``."""
    pixels: dict[Hashable, np.ndarray] = {}
    failed: dict[Hashable, str] = {}
    for value in values:
        key = _key(value)
        if key in pixels or key in failed:
            continue
        try:
            image = load_image(_resolve(value, image_root))
            pixels[key] = preprocess_image(image, model.image_size, model.manifest.mean, model.manifest.std)
        except ImageError as exc:
            failed[key] = str(exc)
    embeds = model.embed_pixels(np.stack(list(pixels.values()))) if pixels else np.empty((0, 0), np.float32)
    return embeds, {key: i for i, key in enumerate(pixels)}, failed


def _embed_unique_texts(
    model: LongCLIP, values: list[object]
) -> tuple[np.ndarray, dict[Hashable, int], dict[Hashable, str]]:
    """Embeddings of each distinct text once: ``(embeds, row of each key, error of each failed key)``."""
    index: dict[Hashable, int] = {}
    failed: dict[Hashable, str] = {}
    for value in values:
        key = _key(value)
        if key in index or key in failed:
            continue
        try:
            _check_text(value)
            index[key] = len(index)
        except TextError as exc:
            failed[key] = str(exc)
    texts = [str(key) for key in index]
    embeds = model.embed_ids(model.tokenizer(texts)) if texts else np.empty((0, 0), np.float32)
    return embeds, index, failed


def score_chunk(
    model: LongCLIP, images: list[object], texts: list[object], image_root: Path | None = None
) -> tuple[np.ndarray, list[str]]:
    """Scores and reasons (``""`` when scored) for parallel lists; each distinct image and text is encoded once."""
    image_embeds, image_row, image_failed = _embed_unique_images(model, images, image_root)
    text_embeds, text_row, text_failed = _embed_unique_texts(model, texts)
    errors = [image_failed.get(_key(i)) or text_failed.get(_key(t)) or "" for i, t in zip(images, texts)]
    good = [n for n, reason in enumerate(errors) if not reason]
    scores = np.full(len(images), np.nan, dtype=np.float32)
    if good:
        pairs_i = [image_row[_key(images[n])] for n in good]
        pairs_t = [text_row[_key(texts[n])] for n in good]
        scores[good] = score_rows(image_embeds[pairs_i], text_embeds[pairs_t])
    return scores, errors


def score_frame(
    model: LongCLIP,
    frame: pd.DataFrame,
    image_key: str = "image_path",
    text_key: str = "text",
    output_key: str = "longclip_score",
    image_root: str | os.PathLike[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> pd.DataFrame:
    """A copy of ``frame`` (index, order and columns kept) plus ``output_key`` and ``<output_key>_error``.

    Rows that cannot be scored get ``NaN`` and a reason; good rows get ``""`` as their error.
    """
    check_columns(frame, image_key, text_key)
    root = Path(image_root) if image_root is not None else None
    scores = np.full(len(frame), np.nan, dtype=np.float32)
    errors: list[str] = []
    images, texts = frame[image_key].tolist(), frame[text_key].tolist()
    for start in range(0, len(frame), chunk_rows):
        chunk_scores, chunk_errors = score_chunk(
            model, images[start : start + chunk_rows], texts[start : start + chunk_rows], root
        )
        scores[start : start + len(chunk_scores)] = chunk_scores
        errors.extend(chunk_errors)
    out = frame.copy()
    out[output_key] = scores.astype(np.float64)
    out[f"{output_key}_error"] = errors
    return out
