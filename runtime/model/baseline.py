"""A baseline of mismatched pairs: what an image scores against the caption of another row, at no model cost.

While a run scores, each row's image and text embeddings are in memory. Rows are cut into fixed blocks of
``BLOCK`` rows by their GLOBAL row index (row ``i`` is in block ``i // BLOCK``), so the pairs never depend on the
chunk size, the engine, the workers or a resume. Inside a block, the rows with both embeddings are taken in row
order, and row ``a``'s image is paired with the text of the next such row (cyclically: a fixed permutation) whose
image and text both differ from row ``a``'s, by key and by embedding (web crawls repeat images and captions: an
image paired with its own caption under another row is not a mismatched pair). Up to ``TRIES`` shifts are tried,
then the row gives no pair.

A chunk yields the pairs of the blocks it holds whole (:func:`block_pairs`) and the rows of the blocks it holds
in part (a :class:`Fragment`: kept with the chunk, so a resumed chunk still gives them); :class:`Baseline`
joins fragments once a block is complete and keeps the ``cap`` pairs with the smallest hash of their
``(row, partner)`` indices: the same set whatever order chunks arrive in, and memory flat in rows.

>>> base = Baseline(n_rows=len(frame))                                           # doctest: +SKIP
>>> base.add_chunk(0, valid, image_embeds, text_embeds, image_keys, text_keys)   # doctest: +SKIP
>>> base.scores                                                                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .scoring import score_rows

BLOCK = 64
"""Rows per pairing block, counted from row 0 of the input."""
TRIES = 8
"""Shifts tried inside a block before a row gives no pair."""
CAP = 100_000
"""Mismatched pairs kept."""
ROUGH = 1_000
"""Fewer mismatched pairs than this: the thresholds read off them are rough."""
RATES = (0.01, 0.001)
"""Shares of mismatched pairs passing at which thresholds are suggested: 1 % and 0.1 %."""
SAMPLE_ROWS = 4096
"""Rows of a file scored earlier embedded again for its report's baseline (``longclip-report -m``): up to as many
pairs, well above the ~1,000 below which a baseline is rough."""
GRID = 10_000
"""Thresholds are multiples of ``1 / GRID`` (the report's slider step)."""

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def content_hash(key: object) -> int:
    """A 64-bit hash of an image or text key (a path, a caption, an image's bytes) to compare content by.

    >>> content_hash("a.jpg") == content_hash("a.jpg") != content_hash("b.jpg")
    True
    """
    if isinstance(key, (bytes, bytearray, memoryview)):
        data = bytes(key)
    elif isinstance(key, str):
        data = b"s" + key.encode("utf-8", "surrogatepass")
    else:
        data = b"r" + repr(key).encode("utf-8", "backslashreplace")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def pair_hash(rows: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """``(N,) uint64``: splitmix64 of ``row << 32 | partner``, a bijection: no two pairs tie.

    >>> pair_hash(np.array([0]), np.array([1])).tolist() == pair_hash(np.array([0]), np.array([1])).tolist()
    True
    """
    with np.errstate(over="ignore"):
        z = (rows.astype(np.uint64) << np.uint64(32)) | partners.astype(np.uint64)
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return z ^ (z >> np.uint64(31))


@dataclass
class Fragment:
    """The rows of one block that one chunk holds: ``covered`` rows (scored or not) and, for those with both
    embeddings, their global ``rows``, embeddings and content hashes."""

    block: int
    covered: int
    rows: np.ndarray  # (M,) int64
    image_embeds: np.ndarray  # (M, D) float32
    text_embeds: np.ndarray  # (M, D) float32
    image_keys: np.ndarray  # (M,) uint64
    text_keys: np.ndarray  # (M,) uint64


def pair_block(rows: np.ndarray, image_embeds: np.ndarray, text_embeds: np.ndarray, image_keys: np.ndarray,
               text_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(hashes (P,) uint64, scores (P,) float32)`` of one whole block's mismatched pairs (see the module doc).

    >>> e = np.eye(3, dtype=np.float32)
    >>> h, s = pair_block(np.arange(3), e, e, np.arange(3, dtype=np.uint64), np.arange(3, dtype=np.uint64))
    >>> s.tolist()
    [0.5, 0.5, 0.5]
    """
    m = len(rows)
    partner = np.full(m, -1)
    todo = np.arange(m)
    for shift in range(1, min(TRIES, m - 1) + 1):  # all rows at once, shift by shift: the loop is over TRIES
        b = (todo + shift) % m
        # neither the same image nor the same caption: by key, or by identical embedding (the same bytes, two names)
        ok = ((image_keys[todo] != image_keys[b]) & (text_keys[todo] != text_keys[b])
              & ~(image_embeds[todo] == image_embeds[b]).all(axis=1)
              & ~(text_embeds[todo] == text_embeds[b]).all(axis=1))
        partner[todo[ok]] = b[ok]
        todo = todo[~ok]
        if not len(todo):
            break
    i = np.flatnonzero(partner >= 0)
    if not len(i):
        return np.zeros(0, np.uint64), np.zeros(0, np.float32)
    p = partner[i]
    return pair_hash(rows[i], rows[p]), score_rows(image_embeds[i], text_embeds[p])


def _join(parts: list[Fragment]) -> Fragment:
    having = [f for f in parts if len(f.rows)] or parts[:1]  # a fragment without scored rows has no width
    order = np.argsort(np.concatenate([f.rows for f in having]), kind="stable")
    return Fragment(parts[0].block, sum(f.covered for f in parts),
                    *(np.concatenate([getattr(f, name) for f in having])[order]
                      for name in ("rows", "image_embeds", "text_embeds", "image_keys", "text_keys")))


def split_chunk(start: int, valid: np.ndarray, image_embeds: np.ndarray, text_embeds: np.ndarray,
                image_keys: np.ndarray, text_keys: np.ndarray, n_rows: int,
                block: int = BLOCK) -> tuple[tuple[np.ndarray, np.ndarray], list[Fragment]]:
    """A chunk of rows ``start .. start + len(valid) - 1`` (of ``n_rows`` in all): the pairs of the blocks it
    holds whole, and a :class:`Fragment` of each block it holds in part. ``valid`` ``(N,) bool``: the rows with
    both embeddings; the embeddings and keys are given for those rows only, in row order."""
    n = len(valid)
    rows = start + np.flatnonzero(valid)
    hashes, scores, fragments = [np.zeros(0, np.uint64)], [np.zeros(0, np.float32)], []
    first, last = start // block, (start + n - 1) // block if n else start // block - 1
    for b in range(first, last + 1):
        lo, hi = max(b * block, start), min((b + 1) * block, start + n)
        at = slice(*np.searchsorted(rows, [lo, hi]))
        part = Fragment(b, hi - lo, rows[at], image_embeds[at], text_embeds[at], image_keys[at], text_keys[at])
        if part.covered == _block_rows(b, n_rows, block):
            h, s = pair_block(part.rows, part.image_embeds, part.text_embeds, part.image_keys, part.text_keys)
            hashes.append(h)
            scores.append(s)
        else:
            fragments.append(part)
    return (np.concatenate(hashes), np.concatenate(scores)), fragments


def _block_rows(b: int, n_rows: int, block: int) -> int:
    return min((b + 1) * block, n_rows) - b * block


class Baseline:
    """The ``cap`` mismatched pairs with the smallest pair hashes, from chunks given in any order.

    ``add_chunk`` takes a chunk's embeddings; ``add`` takes what :func:`split_chunk` gave for one (a resumed
    chunk's kept pairs and fragments). Fragments wait until their block is whole (at most the blocks that chunks
    in flight cut: memory flat in rows)."""

    def __init__(self, n_rows: int | None, cap: int = CAP, block: int = BLOCK):
        # None: not known until the input ends (an engine that streams its rows): call finish(n_rows) then
        self.n_rows, self.cap, self.block = n_rows, cap, block
        self._hashes, self._scores = np.zeros(0, np.uint64), np.zeros(0, np.float32)
        self._waiting: dict[int, list[Fragment]] = {}

    def add_chunk(self, start: int, valid: np.ndarray, image_embeds: np.ndarray, text_embeds: np.ndarray,
                  image_keys: np.ndarray, text_keys: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                           list[Fragment]]:
        """Fold in a chunk (see :func:`split_chunk`); returns what to keep with the chunk for a resume."""
        part = split_chunk(start, valid, image_embeds, text_embeds, image_keys, text_keys, self._rows, self.block)
        self.add(*part)
        return part

    def add(self, pairs: tuple[np.ndarray, np.ndarray], fragments: list[Fragment]) -> None:
        self._keep(*pairs)
        for fragment in fragments:
            self._waiting.setdefault(fragment.block, []).append(fragment)
            self._pair_if_whole(fragment.block)

    def finish(self, n_rows: int) -> None:
        """The input had ``n_rows`` rows (for a baseline made with ``n_rows=None``): the block the input's end cut
        short is paired now."""
        self.n_rows = n_rows
        for b in list(self._waiting):
            self._pair_if_whole(b)

    @property
    def _rows(self) -> int:
        return self.n_rows if self.n_rows is not None else (1 << 62)  # unknown yet: every block is a whole one

    def _pair_if_whole(self, b: int) -> None:
        if sum(f.covered for f in self._waiting[b]) == _block_rows(b, self._rows, self.block):
            whole = _join(self._waiting.pop(b))
            self._keep(*pair_block(whole.rows, whole.image_embeds, whole.text_embeds, whole.image_keys,
                                   whole.text_keys))

    def _keep(self, hashes: np.ndarray, scores: np.ndarray) -> None:
        if not len(hashes):
            return
        self._hashes = np.concatenate([self._hashes, hashes])
        self._scores = np.concatenate([self._scores, scores])
        if len(self._hashes) > 2 * self.cap:  # trimmed now and then: amortized, and at most 2 * cap held
            self._trim()

    def _trim(self) -> None:
        if len(self._hashes) > self.cap:
            keep = np.argpartition(self._hashes, self.cap - 1)[: self.cap]
            self._hashes, self._scores = self._hashes[keep], self._scores[keep]

    @property
    def pending(self) -> int:
        """Blocks waiting for the rest of their rows."""
        return len(self._waiting)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(hashes, scores)`` of the kept pairs, by hash: the same whatever the chunking and order."""
        self._trim()
        order = np.argsort(self._hashes)
        return self._hashes[order], self._scores[order]

    @property
    def scores(self) -> np.ndarray:
        """``(P,) float32``: the kept pairs' scores, by pair hash."""
        return self.result()[1]


def suggest_threshold(scores: np.ndarray, rate: float, grid: int = GRID) -> float:
    """The smallest multiple of ``1 / grid`` that at most ``rate`` of the mismatched pairs' ``scores`` reach
    (``score >= t``); NaN without scores.

    >>> suggest_threshold(np.array([0.1, 0.2, 0.3, 0.4], np.float32), 0.25)
    0.3001
    """
    if not len(scores):
        return float("nan")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    edges = np.arange(grid + 1) / grid
    passing = len(ordered) - np.searchsorted(ordered, edges, side="left")  # scores >= each edge
    k = int(np.argmax(passing <= rate * len(ordered)))
    if passing[k] > rate * len(ordered):  # only a score of 1.0 or more stays: nothing on the grid is enough
        return float("nan")
    return float(edges[k])


def describe(scores: np.ndarray, rates: tuple[float, ...] = RATES) -> str:
    """One summary line: the baseline's size and the thresholds at ``rates``.

    >>> describe(np.linspace(0.4, 0.6, 2000, dtype=np.float32))
    'baseline: 2,000 mismatched pairs; 1% pass score >= 0.5980 (cos 0.1960), 0.1% pass >= 0.5998 (cos 0.1996)'
    """
    if not len(scores):
        return "baseline: no mismatched pairs (too few scored rows with distinct images and texts)"
    cuts = [(rate, suggest_threshold(scores, rate)) for rate in rates]
    said = ", ".join(f"{100 * r:g}% pass{' score' if i == 0 else ''} >= {t:.4f} (cos {2 * t - 1:.4f})"
                     for i, (r, t) in enumerate(cuts))
    rough = f" (rough: fewer than {ROUGH:,} pairs)" if len(scores) < ROUGH else ""
    return f"baseline: {len(scores):,} mismatched pairs{rough}; {said}"
