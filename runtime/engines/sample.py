"""A baseline of mismatched pairs for a file scored earlier (``longclip-report FILE -m MODEL``): a bounded sample of
its rows is embedded again and paired as a run pairs them (:mod:`..model.baseline`), in blocks of the sample.

The sample is the ``size`` rows with the smallest hash of their row number: the same rows on every call, spread
over the whole file, chosen without reading it (memory follows ``size``, never the number of rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract.constants import BATCH_SIZE
from ..contract.errors import InputError
from ..contract.rows import Columns
from ..decode.pool import DecodePool, ThreadPool
from ..inputs.tables import TableReader
from ..inputs.tarshards import SHARD_COLUMN
from ..model.baseline import SAMPLE_ROWS, Baseline, pair_hash
from ..model.longclip import LongCLIP
from .pipeline import Pipeline
from .work import Work

_SPAN = 1 << 20  # row numbers hashed at a time


def sample_rows(n_rows: int, size: int = SAMPLE_ROWS) -> np.ndarray:
    """``(min(size, n_rows),) int64``: the rows with the smallest hashes of their row numbers, in file order.

    >>> sample_rows(5, 10).tolist()
    [0, 1, 2, 3, 4]
    """
    best_h, best_r = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    for start in range(0, n_rows, _SPAN):
        rows = np.arange(start, min(start + _SPAN, n_rows), dtype=np.int64)
        best_h = np.concatenate([best_h, pair_hash(rows, rows)])
        best_r = np.concatenate([best_r, rows])
        if len(best_h) > size:
            keep = np.argpartition(best_h, size - 1)[:size]
            best_h, best_r = best_h[keep], best_r[keep]
    return np.sort(best_r)


def sample_baseline(model: LongCLIP, reader: TableReader, columns: Columns, pool: DecodePool | ThreadPool,
                    size: int = SAMPLE_ROWS, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """The mismatched pairs' scores (``(P,) float32``) of a sample of ``reader``'s rows, embedded with ``model``
    (decoding on ``pool``); :class:`InputError` for a WebDataset run's output (its images are shard members)."""
    if SHARD_COLUMN in reader.columns:
        raise InputError(f"{str(reader.path)!r} is the output of a WebDataset run: -m cannot read its images from "
                         "the shards; draw the baseline while scoring (longclip-run --report)")
    wanted = sample_rows(reader.n_rows, size)
    images: list[object] = []
    texts: list[object] = []
    start = 0
    for chunk in reader.chunks(8192):
        at = wanted[(wanted >= start) & (wanted < start + len(chunk))] - start
        if len(at):
            images += chunk[columns.image_key].take(at).tolist()
            texts += chunk[columns.text_key].take(at).tolist()
        start += len(chunk)
    root = Path(columns.image_root) if columns.image_root is not None else None
    baseline = Baseline(len(images))
    pipeline = Pipeline(model, pool, root, batch_size, keep_embeds=True)
    step = 1024
    works = (Work(images[s : s + step], texts[s : s + step]) for s in range(0, len(images), step))
    for s, result in zip(range(0, len(images), step), pipeline.run(works)):
        e = result.embeds
        assert e is not None
        baseline.add_chunk(s, e.valid, e.image_embeds, e.text_embeds, e.image_keys, e.text_keys)
    return baseline.scores
