"""The report's one streaming pass over a scored file.

Exact counts on a fine score grid (so a threshold slider on that grid counts kept rows exactly), running
count/mean/M2, min/max, every score while there are at most ``exact_cap`` of them (exact quantiles), and bounded
samples of rows: the lowest and highest scores, a uniform pool to draw pairs from, and examples of each failure.
Memory follows those sizes and the chunk size, never the number of rows.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..contract.errors import InputError, error_code
from ..contract.rows import Columns, check_columns, error_key, is_null
from ..inputs.tables import TableReader
from ..inputs.tarshards import SHARD_COLUMN, ShardMember

BINS = 10_000
"""Score grid: bin ``k`` holds ``k/BINS <= s < (k+1)/BINS``; bin ``BINS`` holds ``s >= 1``. Slider step ``1/BINS``."""

QUANTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
RANGE_SLACK = 1e-3  # float rounding may put a score a hair outside [0, 1]; more than this is not a LongCLIP score
MAX_CODES = 100  # distinct failure codes counted one by one; the rest are counted as "other"


@dataclass(frozen=True, kw_only=True)
class ReportOptions(Columns):
    """Columns, where images live, and the sizes that bound the report's memory and file size."""

    title: str | None = None
    extremes: int = 24  # lowest and highest pairs shown
    sample: int = 400  # pairs (with thumbnails) behind the threshold slider's boundary view
    pool: int = 4000  # uniform sample the slider and quantile pairs are drawn from (no images loaded for it)
    exact_cap: int = 200_000  # up to this many scores, quantiles are exact; beyond, read off the fine grid
    failure_examples: int = 5  # per failure code
    chunk_rows: int = 8192
    seed: int = 0  # the same file gives the same report


@dataclass(frozen=True)
class Pair:
    """One row as the report shows it: ``score`` is NaN and ``error`` non-empty for a failed row."""

    row: int  # 0-based, as pandas' iloc
    score: float
    image: object  # the cell as read
    text: object
    error: str = ""


def grid_bins(scores: np.ndarray) -> np.ndarray:
    """Each score's bin on the grid: ``k`` with ``k/BINS <= s < (k+1)/BINS``, clipped to ``0..BINS``."""
    edges = np.arange(BINS + 1) / BINS
    return np.clip(np.searchsorted(edges, np.asarray(scores, dtype=np.float64), side="right") - 1, 0, BINS)


def grid_counts(scores: np.ndarray | None) -> np.ndarray:
    """``(BINS + 1,) int64``: how many of ``scores`` (finite) fall in each grid bin."""
    if scores is None:
        return np.zeros(BINS + 1, dtype=np.int64)
    return np.bincount(grid_bins(scores), minlength=BINS + 1).astype(np.int64)


@dataclass
class ScoreStats:
    """Streaming statistics of finite scores."""

    exact_cap: int
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS + 1, dtype=np.int64))
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    _all: list[np.ndarray] | None = field(default_factory=list, repr=False)

    def add(self, scores: np.ndarray) -> None:
        """Fold in a ``(N,) float64`` array of finite scores (Chan et al.'s parallel mean/M2 update)."""
        if not len(scores):
            return
        bins = grid_bins(scores)
        self.counts += np.bincount(bins, minlength=BINS + 1)
        n_b, mean_b = len(scores), float(scores.mean())
        m2_b = float(((scores - mean_b) ** 2).sum())
        delta, total = mean_b - self.mean, self.n + n_b
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.n * n_b / total
        self.n = total
        self.min, self.max = min(self.min, float(scores.min())), max(self.max, float(scores.max()))
        if self._all is not None:
            self._all.append(scores.copy())
            if self.n > self.exact_cap:
                self._all = None  # from here on quantiles come from the grid

    @property
    def std(self) -> float:
        """Population standard deviation (``numpy.std``'s default)."""
        return math.sqrt(self.m2 / self.n) if self.n else math.nan

    @property
    def exact(self) -> bool:
        return self._all is not None

    def quantiles(self, percents: tuple[int, ...] = QUANTILES) -> dict[int, float]:
        """``numpy.quantile`` (linear) of the scores: exact up to ``exact_cap`` scores, else within ``1/BINS``."""
        if not self.n:
            return {p: math.nan for p in percents}
        if self._all is not None:
            values = np.quantile(np.concatenate(self._all), [p / 100 for p in percents])
            return {p: float(v) for p, v in zip(percents, values)}
        return {p: self._grid_quantile(p / 100) for p in percents}

    def _grid_quantile(self, q: float) -> float:
        cum = np.cumsum(self.counts)

        def at_rank(j: int) -> float:  # the j-th smallest score, placed uniformly inside its bin
            b = int(np.searchsorted(cum, j, side="right"))
            before = int(cum[b - 1]) if b else 0
            value = (b + (j - before + 0.5) / int(self.counts[b])) / BINS
            return min(max(value, self.min), self.max)

        h = q * (self.n - 1)
        lo = math.floor(h)
        return at_rank(lo) + (h - lo) * (at_rank(min(lo + 1, self.n - 1)) - at_rank(lo))


class _Bounded:
    """The ``size`` rows with the smallest keys seen so far (ties broken by row number)."""

    def __init__(self, size: int):
        self.size = size
        self._heap: list[tuple[float, int, Pair]] = []  # max-heap by (key, row) through negation

    def offer(self, key: float, pair: Pair) -> None:
        item = (-key, -pair.row, pair)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def worst(self) -> float:
        """Keys at or above this cannot get in (``inf`` while not full)."""
        return -self._heap[0][0] if len(self._heap) >= self.size else math.inf

    def pairs(self) -> list[Pair]:
        return [p for _, _, p in sorted(self._heap, key=lambda item: (-item[0], -item[1]))]


@dataclass
class ReportData:
    """Everything the HTML needs, gathered in one pass."""

    path: Path
    options: ReportOptions
    stats: ScoreStats
    rows: int = 0
    lowest: list[Pair] = field(default_factory=list)
    highest: list[Pair] = field(default_factory=list)  # highest first
    pool: list[Pair] = field(default_factory=list)  # by score
    failures: Counter[str] = field(default_factory=Counter)
    failure_examples: dict[str, list[Pair]] = field(default_factory=dict)
    baseline: np.ndarray | None = None  # (P,) float32: mismatched pairs' scores (model.baseline); None: absent

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def _blank(value: object) -> bool:
    if is_null(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "null", "none", "na", "<na>")


def _scores(column: pd.Series, key: str, offset: int) -> np.ndarray:
    """``(N,) float64`` with NaN for null cells; CSV strings are parsed; anything else non-numeric is an error."""
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    parsed = pd.to_numeric(column.astype(object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    for at in np.flatnonzero(np.isnan(parsed)):  # empty and null cells are unscored rows; text is a mistake
        if not _blank(column.iloc[at]):
            raise InputError(f"score column {key!r} holds {column.iloc[at]!r} at row {offset + at}, not a number; "
                             "pass --output-key naming the column longclip-run wrote")
    return parsed


def _errors(frame: pd.DataFrame, key: str) -> np.ndarray:
    """``(N,) object``: the reason, or ``""`` when the row was scored (also for a missing column or null cell)."""
    if key not in frame.columns:
        return np.full(len(frame), "", dtype=object)
    return frame[key].astype(object).fillna("").to_numpy(dtype=object)


def _check_range(scores: np.ndarray, key: str, offset: int) -> None:
    bad = (scores < -RANGE_SLACK) | (scores > 1 + RANGE_SLACK)
    if bad.any():
        at = int(np.argmax(bad))
        raise InputError(f"score column {key!r} holds {float(scores[at])!r} at row {offset + at}, outside [0, 1]: "
                         "not a LongCLIP score; pass --output-key naming the column longclip-run wrote")


class _Collector:
    def __init__(self, opts: ReportOptions):
        self.opts = opts
        self.stats = ScoreStats(opts.exact_cap)
        self.low, self.high, self.pool = _Bounded(opts.extremes), _Bounded(opts.extremes), _Bounded(opts.pool)
        self.rng = np.random.default_rng(opts.seed)
        self.failures: Counter[str] = Counter()
        self.examples: dict[str, list[Pair]] = {}
        self.rows = 0

    def add(self, chunk: pd.DataFrame) -> None:
        o, offset = self.opts, self.rows
        scores = _scores(chunk[o.output_key], o.output_key, offset)
        errors = _errors(chunk, error_key(o.output_key))
        ok = np.isfinite(scores) & (errors == "")
        _check_range(np.where(ok, scores, 0.5), o.output_key, offset)
        self.stats.add(scores[ok])
        good = np.flatnonzero(ok)
        offers: list[tuple[_Bounded, float, int]] = []  # filtered against the queues as they stand; offer() decides
        for queue, sign in ((self.low, 1.0), (self.high, -1.0)):
            best = good[np.argsort(sign * scores[good], kind="stable")[: o.extremes]]
            offers += [(queue, sign * float(scores[i]), int(i)) for i in best if sign * scores[i] <= queue.worst()]
        keys = self.rng.random(len(good))
        chosen = keys < self.pool.worst()
        offers += [(self.pool, float(k), int(i)) for i, k in zip(good[chosen], keys[chosen])]
        examples: list[tuple[str, int]] = []
        pending: Counter[str] = Counter()
        for i in np.flatnonzero(~ok):
            code = self._code(str(errors[i]))
            self.failures[code] += 1
            if len(self.examples.setdefault(code, [])) + pending[code] < o.failure_examples:
                examples.append((code, int(i)))
                pending[code] += 1
        pair = self._pairs(chunk, sorted({i for *_, i in offers} | {i for _, i in examples}), scores, errors, offset)
        for queue, key, i in offers:
            queue.offer(key, pair[i])
        for code, i in examples:
            self.examples[code].append(pair[i])
        self.rows += len(chunk)

    def _pairs(self, chunk: pd.DataFrame, rows: list[int], scores: np.ndarray, errors: np.ndarray, offset: int
               ) -> dict[int, Pair]:
        """Pairs for the few rows that may be shown: their image and text cells are read in one take each."""
        images = chunk[self.opts.image_key].take(rows).tolist()
        texts = chunk[self.opts.text_key].take(rows).tolist()
        if SHARD_COLUMN in chunk.columns:  # a WebDataset run: the image column names a member of __shard__
            shards = chunk[SHARD_COLUMN].take(rows).tolist()
            images = [ShardMember(s, m) if isinstance(s, str) and isinstance(m, str) else m
                      for s, m in zip(shards, images)]
        out = {}
        for i, image, text in zip(rows, images, texts):
            error = str(errors[i])
            if not error and not np.isfinite(scores[i]):
                error = "no_score: the score is empty and the error column gives no reason"
            out[i] = Pair(offset + i, math.nan if error else float(scores[i]), image, text, error)
        return out

    def _code(self, error: str) -> str:
        code = (error_code(error).strip() if error else "no_score") or "unknown"
        return code if code in self.failures or len(self.failures) < MAX_CODES else "other"

    def result(self, path: Path) -> ReportData:
        return ReportData(path, self.opts, self.stats, self.rows, self.low.pairs(), self.high.pairs(),
                          sorted(self.pool.pairs(), key=lambda p: (p.score, p.row)), self.failures, self.examples)


def check_report_columns(reader: TableReader, opts: ReportOptions) -> None:
    """Raise :class:`InputError` naming a missing column, the columns there are, and the option to change."""
    check_columns(reader.columns, {opts.output_key: "--output-key", opts.image_key: "--image-key",
                                   opts.text_key: "--text-key"}, where=repr(str(reader.path)))


def collect(reader: TableReader, opts: ReportOptions = ReportOptions()) -> ReportData:
    """One streaming pass over a scored file (see the module doc); no image is opened here."""
    check_report_columns(reader, opts)
    collector = _Collector(opts)
    for chunk in reader.chunks(opts.chunk_rows):
        collector.add(chunk)
    return collector.result(reader.path)
