"""A continuous pipeline: chunks of rows in, their results out, in order; the model never waits for the CPU.

Reading (the caller's iterator), decoding and tokenization (a :mod:`..decode_pool`) and the model (one thread,
both towers) run at once, across chunk boundaries: while the model embeds chunk ``c``, chunk ``c + 1`` is being
decoded. Memory is bounded: at most ``max_chunks`` chunks in flight, images only decode into the pool's fixed
number of slots, and no image is sent to decode while ``MAX_VISION_QUEUED`` batches wait for the model.

Batches are a function of a chunk's contents only, never of timing: a chunk's distinct images, in order of first
appearance, those that decode in batches of ``batch_size`` (the last one shorter), its distinct texts in the
model's length buckets. So scores (an int8 model's per-batch activation scales included) are the same on every
run and every resume, whatever the number of workers.

Ctrl-C: the main thread only waits on events (never inside ONNX Runtime), so a ``KeyboardInterrupt`` reaches it at
once; the model's run is stopped (``RunOptions.terminate``) and the interrupt propagates within about a second,
with every chunk already returned kept by the caller.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..contract import errors
from ..contract.errors import EngineError, RowError
from ..contract.rows import cell_key, check_text
from ..decode.pool import DecodePool, ThreadPool
from ..embeddings.keys import text_sha256
from ..embeddings.store import EmbeddingStore
from ..model.baseline import content_hash
from ..model.longclip import LongCLIP
from ..model.scoring import l2_normalize
from .recording import Recorder
from .work import ChunkResult, RowEmbeds, Work, assemble, image_source

log = logging.getLogger(__name__)

MAX_CHUNKS = 3
"""Chunks in flight: one being finished by the model, the next ones decoding."""
MAX_VISION_QUEUED = 2
"""Batches of pixels (copied out of the slots) at the model: one running, one ready after it."""

TEXTS_PER_JOB = 128  # texts tokenized per worker job
_TEXT_CHARS_PER_JOB = 1 << 18  # ... or fewer, when they are long


@dataclass
class ChunkState:
    work: Work
    # images: distinct keys in order of first appearance; "seq" is a key's place in that order
    keys: list[Hashable] = field(default_factory=list)
    image_failed: dict[Hashable, str] = field(default_factory=dict)
    undispatched: collections.deque[tuple[int, str | bytes, str | None]] = field(default_factory=collections.deque)
    decoded: dict[int, int | None] = field(default_factory=dict)  # seq -> slot (None: failed)
    next_seq: int = 0  # the next seq to put in a batch
    batch: list[tuple[Hashable, int]] = field(default_factory=list)
    image_embeds: dict[Hashable, np.ndarray] = field(default_factory=dict)
    # texts: distinct valid texts, tokenized in parts
    texts: list[str] = field(default_factory=list)
    text_failed: dict[Hashable, str] = field(default_factory=dict)
    token_parts: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    token_jobs: int = 0
    lengths: np.ndarray | None = None
    text_embeds: dict[str, np.ndarray] = field(default_factory=dict)
    model_jobs: int = 0  # batches at the model, not back yet
    texts_sent: bool = False
    images_back: int = 0  # distinct images embedded, failed or found cached: the progress shown for this chunk
    rows_shown: int = 0  # rows of this chunk the progress callback was given
    # an embeddings run: each image's first row and source, its (sha256, size, mtime_ns), those found cached
    first_row: dict[Hashable, int] = field(default_factory=dict)
    sources: dict[Hashable, str | bytes] = field(default_factory=dict)
    meta: dict[Hashable, tuple[str, int, int | None]] = field(default_factory=dict)
    cached: list[Hashable] = field(default_factory=list)
    cached_texts: set[str] = field(default_factory=set)
    text_shas: dict[str, str] = field(default_factory=dict)  # text -> its sha256 (an embeddings run)

    @property
    def images_done(self) -> bool:
        return self.next_seq == len(self.keys) and not self.batch

    def finished(self) -> bool:
        return self.work.done is not None or (self.images_done and self.texts_sent and self.model_jobs == 0)


class Pipeline:
    """``run(works)`` scores each :class:`Work` with ``model``, decoding on ``pool``; results come in order.

    >>> with make_pool(spec, 32, 2) as pool:                                   # doctest: +SKIP
    ...     results = list(Pipeline(model, pool, image_root=None).run(works))
    """

    def __init__(self, model: LongCLIP, pool: DecodePool | ThreadPool, image_root: Path | None = None,
                 batch_size: int = 32, max_chunks: int = MAX_CHUNKS, store: EmbeddingStore | None = None,
                 cache: bool = True, progress: Callable[[int], object] | None = None,
                 keep_embeds: bool = False):
        self.model, self.pool, self.root = model, pool, image_root
        self.keep_embeds = keep_embeds  # each result carries its scored rows' embeddings (RowEmbeds)
        # progress(rows): called as each image batch comes back, with the rows it stands for (a chunk's rows in
        # proportion to its distinct images); the calls of a chunk add up to its rows by the time it is yielded
        self.progress = progress
        # an embeddings folder: every embedding computed goes there; with ``cache``, what it has is not computed
        self.store = store
        self._cache = None if store is None else (str(store.root) if cache else "")
        self.recorder = Recorder(store)  # what goes into the folder, and what was found there
        self.counts = self.recorder.counts
        self.batch_size, self.max_chunks = batch_size, max_chunks
        self.context_length = model.manifest.context_length
        self._free = list(range(pool.n_slots))[::-1]
        self._jobs: dict[int, tuple[ChunkState, int, int]] = {}  # pool job -> (chunk, seq or token part, slot or -1)
        self._vision_queued = 0
        self.busy = {"image": 0.0, "text": 0.0}  # seconds each tower spent running

    # -- the caller's side ------------------------------------------------------------------------------------
    def run(self, works: Iterable[Work]) -> Iterator[ChunkResult]:
        if self.pool.broken:  # its workers may still write into slots this run would hand out
            raise EngineError(f"this decode pool cannot be used again: {self.pool.broken}; make a new one")
        source = iter(works)
        active: collections.deque[ChunkState] = collections.deque()
        model_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        stop = ort.RunOptions()
        model_thread = threading.Thread(target=self._model_loop, args=(model_queue, stop), daemon=True,
                                        name="longclip-model")
        model_thread.start()
        exhausted = False
        try:
            while active or not exhausted:
                while not exhausted and len(active) < self.max_chunks:
                    work = next(source, None)
                    if work is None:
                        exhausted = True
                    else:
                        active.append(self._admit(work, model_queue))
                self._dispatch(active)
                if active and active[0].finished():
                    done = active.popleft()
                    self._show(done, finished=True)
                    yield self._result(done)
                elif active:
                    self._handle(self._next_event(), model_queue)
        except BaseException:
            stop.terminate = True  # a batch inside ONNX Runtime stops now, not when it would have finished
            raise
        finally:
            model_queue.put(None)
            model_thread.join(timeout=5)
            if self._jobs or self._vision_queued:
                self.pool.broken = f"a run on it stopped with {len(self._jobs)} jobs outstanding"

    def _next_event(self) -> tuple[Any, ...]:
        while True:  # short waits: Ctrl-C is seen between them
            try:
                return self.pool.events.get(timeout=0.2)
            except queue.Empty:
                continue

    # -- admitting a chunk ------------------------------------------------------------------------------------
    def _admit(self, work: Work, model_queue: queue.SimpleQueue[Any]) -> ChunkState:
        chunk = ChunkState(work)
        if work.done is not None:
            return chunk
        seen: set[Hashable] = set()
        for row, value in enumerate(work.images):
            key = cell_key(value)
            if key in seen:
                continue
            seen.add(key)
            try:
                source = image_source(value, self.root)
            except RowError as exc:
                chunk.image_failed[key] = str(exc)
                continue
            name = work.names[row] if work.names is not None else None
            chunk.undispatched.append((len(chunk.keys), source, name))
            chunk.keys.append(key)
            if self.store is not None:
                chunk.first_row[key], chunk.sources[key] = row, source
        texts: dict[Hashable, str] = {}
        for value in work.texts:
            key = cell_key(value)
            if key in texts or key in chunk.text_failed:
                continue
            try:
                texts[key] = check_text(value)
            except RowError as exc:
                chunk.text_failed[key] = str(exc)
        chunk.texts = list(texts.values())
        if self.store is not None:
            chunk.text_shas = {t: text_sha256(t) for t in chunk.texts}
        if self._cache:  # texts in the embeddings folder are tokenized (their length is counted), not encoded
            shas = {sha: t for t, sha in chunk.text_shas.items()}
            for sha, embedding in self.store.get_texts(list(shas)).items():  # type: ignore[union-attr]
                chunk.text_embeds[shas[sha]] = embedding
                chunk.cached_texts.add(shas[sha])
        for part, (start, stop) in enumerate(_text_jobs(chunk.texts)):
            job = next(self.pool.ids)
            self._jobs[job] = (chunk, part, -1)
            chunk.token_jobs += 1
            self.pool.submit(("text", job, chunk.texts[start:stop], self.context_length))
        if not chunk.texts:
            self._send_texts(chunk, model_queue)
        return chunk

    def _dispatch(self, active: Iterable[ChunkState]) -> None:
        """Send images to decode, in global order (a chunk's before the next one's), while slots are free."""
        if self._vision_queued >= MAX_VISION_QUEUED:  # the model is behind: pixels would pile up in its queue
            return
        for chunk in active:
            while chunk.undispatched and self._free:
                seq, source, name = chunk.undispatched.popleft()
                job, slot = next(self.pool.ids), self._free.pop()
                self._jobs[job] = (chunk, seq, slot)
                self.pool.submit(("image", job, source, slot, name, self._cache))
            if chunk.undispatched:
                return

    # -- events -----------------------------------------------------------------------------------------------
    def _handle(self, event: tuple[Any, ...], model_queue: queue.SimpleQueue[Any]) -> None:
        kind = event[0]
        if kind == "image":
            _, job, reason, meta, cached = event
            chunk, seq, slot = self._jobs.pop(job)
            if meta is not None:
                chunk.meta[chunk.keys[seq]] = meta
            if cached:  # in the embeddings folder already: read from there when the chunk is done
                chunk.cached.append(chunk.keys[seq])
                self._free.append(slot)
                chunk.decoded[seq] = None
                chunk.images_back += 1
            elif reason:
                chunk.image_failed[chunk.keys[seq]] = reason
                self._free.append(slot)
                chunk.decoded[seq] = None
                chunk.images_back += 1
            else:
                chunk.decoded[seq] = slot
            self._batch_images(chunk, model_queue)
        elif kind == "text":
            _, job, ids, lengths = event
            chunk, part, _ = self._jobs.pop(job)
            if ids is None:  # the worker failed: tokenize here (pure Python, cannot crash the process)
                start, stop = _text_jobs(chunk.texts)[part]
                ids, lengths = self.model.tokenizer.batch(chunk.texts[start:stop], self.context_length)
            chunk.token_parts[part] = (ids, lengths)
            if len(chunk.token_parts) == chunk.token_jobs:
                self._send_texts(chunk, model_queue)
        elif kind in ("vision", "text_embeds"):
            _, chunk, keys, embeds, zeros = event
            if kind == "vision":
                self._vision_queued -= 1
            embedded, failed = (chunk.image_embeds, chunk.image_failed) if kind == "vision" else \
                (chunk.text_embeds, chunk.text_failed)
            for key, embedding, finite, zero in zip(keys, embeds, np.isfinite(embeds).all(axis=1), zeros):
                if finite:
                    embedded[key] = embedding
                else:  # never scored, nor kept in an embeddings folder
                    what = "image" if kind == "vision" else "text"
                    gave = "a vector of zeros (no direction)" if zero else "NaN or inf"
                    failed[key if kind == "vision" else cell_key(key)] = (
                        f"{errors.NON_FINITE}: the model gave {gave} for this {what}")
            chunk.model_jobs -= 1
            if kind == "vision":
                chunk.images_back += len(keys)
                self._show(chunk)
        elif kind == "model_failed":
            exc = event[1]
            detail = " ".join(str(exc).split())[:300]
            raise EngineError(f"the model failed on a batch: {type(exc).__name__}: {detail}") from exc
        elif kind == "pool_failed":
            raise EngineError(f"the decode workers failed: {event[1]}")

    def _show(self, chunk: ChunkState, finished: bool = False) -> None:
        """Advance the progress callback to this chunk's share of rows done: all of them once ``finished``, else
        its rows times the fraction of its distinct images back (never all before the texts are done too)."""
        if self.progress is None:
            return
        rows = len(chunk.work.done.errors) if chunk.work.done is not None else len(chunk.work.images)
        if finished:
            target = rows
        else:
            target = min(rows - 1, rows * chunk.images_back // max(1, len(chunk.keys)))
        if target > chunk.rows_shown:
            self.progress(target - chunk.rows_shown)
            chunk.rows_shown = target

    def _batch_images(self, chunk: ChunkState, model_queue: queue.SimpleQueue[Any]) -> None:
        """Batches in seq order: the decoded images from ``next_seq`` on, as far as every one has come back."""
        while chunk.next_seq in chunk.decoded:
            slot = chunk.decoded.pop(chunk.next_seq)
            if slot is not None:
                chunk.batch.append((chunk.keys[chunk.next_seq], slot))
            chunk.next_seq += 1
            if len(chunk.batch) == self.batch_size:
                self._send_images(chunk, model_queue)
        if chunk.next_seq == len(chunk.keys) and chunk.batch:
            self._send_images(chunk, model_queue)

    def _send_images(self, chunk: ChunkState, model_queue: queue.SimpleQueue[Any]) -> None:
        keys, slots = zip(*chunk.batch)
        pixels = np.take(self.pool.slots, list(slots), axis=0)  # a copy: the slots are free again at once
        self._free.extend(slots)
        chunk.batch = []
        chunk.model_jobs += 1
        self._vision_queued += 1
        model_queue.put(("vision", chunk, list(keys), pixels))

    def _send_texts(self, chunk: ChunkState, model_queue: queue.SimpleQueue[Any]) -> None:
        chunk.texts_sent = True
        if not chunk.texts:
            chunk.lengths = np.zeros(0, dtype=np.int64)
            return
        parts = [chunk.token_parts[p] for p in range(chunk.token_jobs)]
        ids = np.concatenate([p[0] for p in parts])
        chunk.lengths = np.concatenate([p[1] for p in parts])
        chunk.token_parts.clear()
        todo = [n for n, text in enumerate(chunk.texts) if text not in chunk.cached_texts]
        for rows, batch in self.model.text_batches(ids[todo], self.batch_size):
            chunk.model_jobs += 1
            model_queue.put(("text_embeds", chunk, [chunk.texts[todo[r]] for r in rows], batch))

    # -- the model thread -------------------------------------------------------------------------------------
    def _model_loop(self, tasks: queue.SimpleQueue[Any], stop: ort.RunOptions) -> None:
        while (task := tasks.get()) is not None:
            kind, chunk, keys, batch = task
            start = time.perf_counter()
            try:
                run = self.model.run_vision if kind == "vision" else self.model.run_text
                # normalized once, here: an embedding kept (or read back from an embeddings folder) scores exactly
                # as one just computed, and as LongCLIP.encode_* gives it. A row that comes out NaN (NaN, inf or
                # zeros in; huge finite values are scaled, not lost) is the row's reason, on the main thread.
                raw = run(batch, stop)
                embeds = l2_normalize(raw)
                zeros = ~np.asarray(raw).any(axis=1)
            except Exception as exc:  # noqa: BLE001 - raised again on the main thread
                self.pool.events.put(("model_failed", exc))
                return
            self.busy["image" if kind == "vision" else "text"] += time.perf_counter() - start
            self.pool.events.put((kind, chunk, keys, embeds, zeros))

    # -- a finished chunk -------------------------------------------------------------------------------------
    def _result(self, chunk: ChunkState) -> ChunkResult:
        if chunk.work.done is not None:
            return chunk.work.done
        if self.store is not None:
            self.recorder.keep(chunk)
        cut = {t for t, n in zip(chunk.texts, chunk.lengths) if n > self.context_length}
        result = assemble(chunk.work.images, chunk.work.texts, chunk.image_embeds, chunk.image_failed,
                          chunk.text_embeds, chunk.text_failed, cut)
        if chunk.work.reasons is not None:
            result.errors[:] = [read or error for read, error in zip(chunk.work.reasons, result.errors)]
        if self.keep_embeds:
            result.embeds = row_embeds(chunk.work.images, chunk.work.texts, result.errors, chunk.image_embeds,
                                       chunk.text_embeds)
        return result


def row_embeds(images: list[object], texts: list[object], errors: list[str],
               image_embeds: dict[Hashable, np.ndarray], text_embeds: dict[str, np.ndarray]) -> RowEmbeds:
    """The scored rows' embeddings and content hashes (each distinct cell hashed once)."""
    valid = np.array([not e for e in errors], dtype=bool)
    rows = np.flatnonzero(valid)
    image_keys, text_keys = [cell_key(images[r]) for r in rows], [cell_key(texts[r]) for r in rows]
    hashes: dict[Hashable, int] = {}
    for key in (*image_keys, *text_keys):
        if key not in hashes:
            hashes[key] = content_hash(key)
    return RowEmbeds(valid, _stack(image_embeds, image_keys), _stack(text_embeds, text_keys),
                     np.array([hashes[k] for k in image_keys], dtype=np.uint64),
                     np.array([hashes[k] for k in text_keys], dtype=np.uint64))


def _stack(found: dict[Any, np.ndarray], keys: list[Any]) -> np.ndarray:
    return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


def _text_jobs(texts: list[str]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each tokenize job: up to ``TEXTS_PER_JOB`` texts, fewer when they are long."""
    jobs, start, chars = [], 0, 0
    for i, text in enumerate(texts):
        if i > start and (i - start == TEXTS_PER_JOB or chars + len(text) > _TEXT_CHARS_PER_JOB):
            jobs.append((start, i))
            start, chars = i, 0
        chars += len(text)
    if start < len(texts):
        jobs.append((start, len(texts)))
    return jobs
