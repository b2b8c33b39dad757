"""Scoring rows without an engine around them: one chunk, or a whole DataFrame (the operator), through the
pipeline. Every way in scores through :class:`.pipeline.Pipeline`, so rows, reasons and scores are the same
whichever runs them."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..contract.constants import BATCH_SIZE, CHUNK_ROWS, MAX_PIXELS
from ..contract.rows import IMAGE_KEY, OUTPUT_KEY, TEXT_KEY, with_scores
from ..decode.cpus import plan_cpus
from ..decode.pool import DecodePool, ImageSpec, ThreadPool, make_pool
from ..embeddings.store import EmbeddingStore
from ..model.device import on_gpu
from ..model.longclip import LongCLIP
from .assemble import start_pool
from .pipeline import Pipeline
from .work import ChunkResult, Work

__all__ = ["CHUNK_ROWS", "ChunkResult", "score_chunk", "score_frame", "default_pool"]


def default_pool(model: LongCLIP, batch_size: int = BATCH_SIZE, max_pixels: int = MAX_PIXELS,
                 decode_workers: int | None = None) -> DecodePool | ThreadPool:
    """Decode workers sized for ``model``'s device and this process's CPUs (``cpus.plan_cpus``)."""
    return start_pool(model.manifest, plan_cpus(on_gpu(model.provider), decode_workers), batch_size, max_pixels)


def score_chunk(model: LongCLIP, images: list[object], texts: list[object], image_root: Path | None = None,
                batch_size: int = BATCH_SIZE, max_pixels: int = MAX_PIXELS,
                pool: DecodePool | ThreadPool | None = None) -> ChunkResult:
    """Score parallel lists of image values and texts; each distinct image and text is encoded once. Decodes on
    ``pool`` (whose spec must be ``model``'s), else on two threads of this process."""
    owned = make_pool(ImageSpec.of(model.manifest, max_pixels), batch_size, 0) if pool is None else None
    with contextlib.nullcontext() if owned is None else owned:
        pipeline = Pipeline(model, pool or owned, image_root, batch_size)  # type: ignore[arg-type]
        return next(pipeline.run([Work(images, texts)]))


def score_frame(
    model: LongCLIP,
    frame: pd.DataFrame,
    image_key: str = IMAGE_KEY,
    text_key: str = TEXT_KEY,
    output_key: str = OUTPUT_KEY,
    image_root: str | os.PathLike[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    batch_size: int = BATCH_SIZE,
    decode_workers: int | None = None,
    store: EmbeddingStore | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """A copy of ``frame`` (index, order and columns kept) plus ``output_key`` and ``<output_key>_error``.

    Rows that cannot be scored get ``NaN`` and a reason; good rows get ``""`` as their error. The columns are
    the caller's to check (the operator's plan does). ``decode_workers``: processes (0: threads), default sized
    from the CPUs this process may use. ``store``: an embeddings folder to keep and reuse embeddings in.
    ``progress``: a bar over the rows on stderr, advanced per image batch (``None``: when stderr is a terminal).
    """
    from tqdm import tqdm

    root = Path(image_root) if image_root is not None else None
    images, texts = frame[image_key].tolist(), frame[text_key].tolist()
    works = (Work(images[s : s + chunk_rows], texts[s : s + chunk_rows]) for s in range(0, len(frame), chunk_rows))
    scores, errors = np.full(len(frame), np.nan, dtype=np.float32), []
    show = sys.stderr.isatty() if progress is None else progress
    with default_pool(model, batch_size, decode_workers=decode_workers) as pool, \
            tqdm(total=len(frame), unit="rows", file=sys.stderr, disable=not show, dynamic_ncols=True) as bar:
        pipeline = Pipeline(model, pool, root, batch_size, store=store, progress=bar.update)
        for start, result in zip(range(0, len(frame), chunk_rows), pipeline.run(works)):
            scores[start : start + len(result.scores)] = result.scores
            errors.extend(result.errors)
    return with_scores(frame, scores, errors, output_key)
