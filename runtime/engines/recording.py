"""What a pipeline records in an embeddings folder: the embeddings a chunk computed (once each, however often
the chunk holds them), what it found there, and, for a Ray worker whose store cannot see its own parts, what it
recorded lately (:class:`RecentKeys`, bounded)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..embeddings.store import EmbeddingStore
    from .pipeline import ChunkState

RECENT_KEYS = 1 << 19  # keys per generation of what a Ray worker's pipeline recorded: see RecentKeys


class RecentKeys:
    """The keys recorded lately, in at most ``2 * generation`` entries of 17 bytes (at most 86 MB at the
    default, measured): when the current generation fills it becomes the previous one, and the one before is
    forgotten; a key met again is kept in the current one. ``add`` says whether a key is new; one forgotten and met
    again is new once more (a second record of the same vector: readers take the newest), so memory no longer grows
    with a run's distinct images and texts.

    >>> recent = RecentKeys(generation=2)
    >>> [recent.add(k) for k in (b"a", b"b", b"a", b"c", b"d", b"e", b"a")]
    [True, True, False, True, True, True, True]
    """

    def __init__(self, generation: int = RECENT_KEYS):
        self.generation = generation
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def add(self, key: bytes) -> bool:
        if key in self._current:
            return False
        seen = key in self._previous
        if len(self._current) >= self.generation:
            self._previous, self._current = self._current, set()
        self._current.add(key)
        return not seen


class Recorder:
    """The embeddings folder's side of a pipeline (``store`` None: nothing is recorded); ``counts``: images and
    texts found in the folder and added to it, for the run's summary."""

    def __init__(self, store: EmbeddingStore | None):
        self.store = store
        self.counts = {"images cached": 0, "texts cached": 0, "images added": 0, "texts added": 0}
        self._recorded = RecentKeys()  # what this pipeline added to a shared store lately: see unrecorded

    def keep(self, chunk: ChunkState) -> None:
        """Read the chunk's cached image embeddings; add the ones it computed to the embeddings folder (an image
        whose row failed for its text included)."""
        store = self.store
        assert store is not None
        found = store.get_images([chunk.meta[key][0] for key in chunk.cached])
        for key in chunk.cached:
            chunk.image_embeds[key] = found[chunk.meta[key][0]]
        cached = set(chunk.cached)
        computed = [key for key in chunk.keys if key in chunk.image_embeds and key not in cached and key in chunk.meta]
        new, fresh = self.unrecorded("i", [chunk.meta[key][0] for key in computed]), []
        for key in computed:
            if chunk.meta[key][0] in new:
                new.discard(chunk.meta[key][0])  # the same bytes under two paths: recorded once
                fresh.append(key)
        if fresh:
            names = chunk.work.names
            paths = [record_path(chunk.work.images[chunk.first_row[k]], chunk.sources[k],
                                  names[chunk.first_row[k]] if names else None) for k in fresh]
            store.add_images([p for p, _ in paths], [r for _, r in paths], [chunk.meta[k][1] for k in fresh],
                             [chunk.meta[k][2] for k in fresh], [chunk.meta[k][0] for k in fresh],
                             np.stack([chunk.image_embeds[k] for k in fresh]))
        computed_texts = [t for t in chunk.texts if t in chunk.text_embeds and t not in chunk.cached_texts]
        new_texts = self.unrecorded("t", [chunk.text_shas[t] for t in computed_texts])
        texts = [t for t in computed_texts if chunk.text_shas[t] in new_texts]
        if texts:
            store.add_texts(texts, [chunk.text_shas[t] for t in texts],
                            np.stack([chunk.text_embeds[t] for t in texts]))
        self.counts["images cached"] += len(chunk.cached)
        self.counts["texts cached"] += len(chunk.cached_texts)
        self.counts["images added"] += len(fresh)
        self.counts["texts added"] += len(texts)

    def unrecorded(self, kind: str, shas: list[str]) -> set[str]:
        """Which of ``shas`` (``kind``: ``"i"`` images, ``"t"`` texts) the store has no record of yet. A
        local store is asked (its pending records and index: nothing kept in memory grows with the run). A Ray
        worker's store does not see its own parts until the driver indexes them: what this pipeline recorded lately
        is remembered instead (:class:`RecentKeys`, bounded). An image met again before its record reached the
        decode workers' lookups is encoded again, and recorded again only if over half a million other keys came
        between."""
        store = self.store
        assert store is not None
        if not store.shared:
            known = store.has_images(shas) if kind == "i" else store.has_texts(shas)
            return set(shas) - known
        return {sha for sha in shas if self._recorded.add(kind.encode() + bytes.fromhex(sha[:32]))}


def record_path(value: object, source: str | bytes, name: str | None) -> tuple[str | None, str | None]:
    """``(image_path, resolved_path)`` of an image's record: the cell as given and the file it named; for bytes,
    the name its reasons use (``shard:member``) and no file."""
    if isinstance(source, bytes):
        return name, None
    return (str(value) if not isinstance(value, str) else value), source
