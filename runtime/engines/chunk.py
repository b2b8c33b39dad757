"""Score one chunk of rows: each distinct image and text encoded once, one reason per row that cannot be scored.

Every engine scores through here (the local engine chunk by chunk, each Ray actor its batches, the operator its
frame), so rows, reasons and scores are the same whichever runs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import BATCH_SIZE
from ..errors import RowError
from ..model import LongCLIP
from ..prefetch import input_pool, prefetch
from ..preprocess import MAX_PIXELS, decode_image
from ..rows import IMAGE_KEY, OUTPUT_KEY, TEXT_KEY, cell_key, check_text, resolve_image_path, row_reason, with_scores
from ..scoring import score_rows

CHUNK_ROWS = 1024
"""Rows scored (and, by the local engine, checkpointed) together."""


@dataclass
class ChunkResult:
    """Per-row outcome of a chunk: score (``NaN`` when not scored), reason (``""`` when scored), truncation."""

    scores: np.ndarray  # (N,) float32
    errors: list[str]
    truncated: np.ndarray  # (N,) bool: the text passed the context length and was cut


def _distinct(values: list[object]) -> dict[Hashable, object]:
    """First value of each distinct key, in order of first appearance."""
    out: dict[Hashable, object] = {}
    for value in values:
        out.setdefault(cell_key(value), value)
    return out


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
                batch_size: int = BATCH_SIZE, max_pixels: int = MAX_PIXELS, pool: Executor | None = None
                ) -> ChunkResult:
    """Score parallel lists of image values and texts; each distinct image and text is encoded once.

    With a ``pool``, tokenization and image decoding run on its threads, overlapped with inference.
    """
    tokens_future = pool.submit(_tokenize, model, texts) if pool is not None else None
    image_embeds, image_failed = _embed_images(model, images, image_root, batch_size, max_pixels, pool)
    tokens = tokens_future.result() if tokens_future is not None else _tokenize(model, texts)
    text_embeds = dict(zip(tokens.texts, model.embed_ids(tokens.ids, batch_size))) if tokens.texts else {}
    cut = {t for t, n in zip(tokens.texts, tokens.lengths) if n > model.manifest.context_length}
    image_keys, text_keys = [cell_key(v) for v in images], [cell_key(v) for v in texts]
    errors = [row_reason(image_failed.get(i, ""), tokens.failed.get(t, "")) for i, t in zip(image_keys, text_keys)]
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
    image_key: str = IMAGE_KEY,
    text_key: str = TEXT_KEY,
    output_key: str = OUTPUT_KEY,
    image_root: str | os.PathLike[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    batch_size: int = BATCH_SIZE,
) -> pd.DataFrame:
    """A copy of ``frame`` (index, order and columns kept) plus ``output_key`` and ``<output_key>_error``.

    Rows that cannot be scored get ``NaN`` and a reason; good rows get ``""`` as their error. The columns are
    the caller's to check (the operator's plan does).
    """
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
