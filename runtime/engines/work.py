"""A chunk's row contract in the engines: what goes in (:class:`Work`: image cells or bytes, texts, read reasons),
what comes out (:class:`ChunkResult`: the contract's :class:`..rows.ItemScores`, plus what the baseline needs), and
how each row's score and reason are assembled from its image's and its text's outcomes."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract.rows import ItemScores, cell_key, resolve_image_path, row_reason
from ..inputs.tarshards import SHARD_COLUMN
from ..model.baseline import Fragment
from ..model.scoring import score_rows

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class RowEmbeds:
    """The embeddings of a chunk's scored rows, for the mismatched-pair baseline (:mod:`..model.baseline`)."""

    valid: np.ndarray  # (N,) bool: the row was scored
    image_embeds: np.ndarray  # (M, D) float32, M = valid.sum(), in row order
    text_embeds: np.ndarray  # (M, D) float32
    image_keys: np.ndarray  # (M,) uint64: content_hash of the image cell
    text_keys: np.ndarray  # (M,) uint64: content_hash of the text

    def to_cells(self) -> list[bytes]:
        """One ``bytes`` cell per row, to travel in a table (a Ray batch): a scored row's two keys and two
        embeddings (little-endian uint64 and float32), ``b""`` for a row that was not scored.

        >>> e = RowEmbeds(np.array([True, False]), np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32),
        ...               np.array([7], np.uint64), np.array([9], np.uint64))
        >>> [len(c) for c in e.to_cells()]
        [32, 0]
        >>> back = RowEmbeds.from_cells(e.to_cells())
        >>> back.valid.tolist(), back.image_embeds.tolist(), back.text_keys.tolist()
        ([True, False], [[1.0, 1.0]], [9])
        """
        cells = [b""] * len(self.valid)
        if len(self.image_keys):
            keys = np.stack([self.image_keys, self.text_keys], axis=1).astype("<u8")
            packed = np.concatenate([keys.view(np.uint8), self.image_embeds.astype("<f4").view(np.uint8),
                                     self.text_embeds.astype("<f4").view(np.uint8)], axis=1)
            for row, cell in zip(np.flatnonzero(self.valid), packed):
                cells[row] = cell.tobytes()
        return cells

    @classmethod
    def from_cells(cls, cells: list[bytes | None]) -> RowEmbeds:
        """The embeddings :meth:`to_cells` packed (a null cell is a row that was not scored)."""
        valid = np.array([isinstance(c, bytes) and len(c) > 0 for c in cells], dtype=bool)
        kept = [c for c, v in zip(cells, valid) if v]
        if not kept:
            return cls(valid, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.uint64),
                       np.zeros(0, np.uint64))
        raw = np.frombuffer(b"".join(kept), np.uint8).reshape(len(kept), -1)
        width = (raw.shape[1] - 16) // 8
        keys = raw[:, :16].copy().view("<u8")
        image = raw[:, 16:16 + 4 * width].copy().view("<f4")
        text = raw[:, 16 + 4 * width:].copy().view("<f4")
        return cls(valid, image.astype(np.float32, copy=False), text.astype(np.float32, copy=False),
                   keys[:, 0].astype(np.uint64), keys[:, 1].astype(np.uint64))


@dataclass
class ChunkResult(ItemScores):
    """Per-row outcome of a chunk: the row contract's :class:`..rows.ItemScores`, plus ``embeds`` when the
    pipeline keeps them and ``baseline`` (the chunk's mismatched pairs and block fragments, as
    :func:`..model.baseline.split_chunk` gives them) once an engine drew them."""

    embeds: RowEmbeds | None = None
    baseline: tuple[tuple[np.ndarray, np.ndarray], list[Fragment]] | None = None


@dataclass
class Work:
    """One chunk to score: parallel lists of image cells (paths, or an image's bytes) and texts; ``names``: what
    reasons call each image (default: its path, or ``<bytes>``); ``done`` passes a finished (resumed) chunk
    through in order without scoring it."""

    images: list[object]
    texts: list[object]
    done: ChunkResult | None = None
    names: list[str] | None = None
    reasons: list[str] | None = None  # why each row could not be read ("": it could); such a row keeps its reason

    @classmethod
    def of(cls, frame: pd.DataFrame, images: list[object] | None, reasons: list[str], image_key: str,
           text_key: str) -> Work:
        """A chunk of rows as work: the image column's cells, or ``images`` (a shard's member bytes, which reasons
        name ``shard:member``), and the text column's (a column the frame lacks: nulls); a row with a read reason
        is neither decoded nor encoded and keeps that reason."""
        n, names = len(frame), None
        if images is not None:
            names = [f"{s}:{m}" for s, m in zip(frame[SHARD_COLUMN], frame[image_key])]
            images = list(images)
        else:
            images = frame[image_key].tolist() if image_key in frame.columns else [None] * n
        texts = frame[text_key].tolist() if text_key in frame.columns else [None] * n
        for i, reason in enumerate(reasons):
            if reason:
                images[i] = texts[i] = None
        return cls(images, texts, names=names, reasons=list(reasons) if any(reasons) else None)


def image_source(value: object, root: Path | None) -> str | bytes:
    """What a decode worker reads for an image cell: the bytes themselves (an image column of bytes), or the path
    it names; :class:`ImageError` for a cell that is neither."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(resolve_image_path(value, root))


def assemble(images: list[object], texts: list[object], image_embeds: dict[Hashable, np.ndarray],
             image_failed: dict[Hashable, str], text_embeds: dict[str, np.ndarray], text_failed: dict[Hashable, str],
             cut: set[str]) -> ChunkResult:
    """Each row's score and reason from its image's and its text's outcome (the image's reason first)."""
    image_keys, text_keys = [cell_key(v) for v in images], [cell_key(v) for v in texts]
    errors = [row_reason(image_failed.get(i, ""), text_failed.get(t, "")) for i, t in zip(image_keys, text_keys)]
    good = [n for n, reason in enumerate(errors) if not reason]
    scores = np.full(len(images), np.nan, dtype=np.float32)
    if good:
        scores[good] = score_rows(np.stack([image_embeds[image_keys[n]] for n in good]),
                                  np.stack([text_embeds[text_keys[n]] for n in good]))
    truncated = np.array([k in cut for k in text_keys], dtype=bool)
    return ChunkResult(scores, errors, truncated)
