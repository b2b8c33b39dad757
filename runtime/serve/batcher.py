"""One model worker draining a queue: the items of many requests batched together, up to ``--batch-size`` items
or ``--batch-wait-ms`` after the first one came.

Images are decoded by the project's decode pool (worker processes: off the event loop and off the GIL, a decoder
crash or a stalled image costs only its item), texts are tokenized and run in the model's length buckets. Which
requests share a batch never changes a bit of any result: a vision row is computed alone in its batch, a text at
its own bucket's length (``LongCLIP.text_batches``), and ``/v1/score`` pairs go through the same pipeline as
``LongCLIP.score_items`` and ``longclip-run``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contract.errors import EngineError
from ..contract.rows import ItemScores
from ..decode.pool import DecodePool, ThreadPool
from ..engines.pipeline import Pipeline
from ..engines.work import Work
from ..model.longclip import LongCLIP
from ..model.scoring import l2_normalize
from .limits import RequestError
from .metrics import Metrics

log = logging.getLogger(__name__)

_EVENT_WAIT = 600.0  # seconds without one decode event: the pool is stuck (its own timeout is per image)


@dataclass(eq=False)
class Job:
    """One request's items: ``("score", images, texts, reasons, names)`` or ``("embed", inputs)``."""

    kind: str
    payload: tuple[Any, ...]
    size: int
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the result to the request's task, on its event loop (called from the worker thread)."""
        def _set() -> None:
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(result)
        self.loop.call_soon_threadsafe(_set)


@dataclass
class Embedded:
    """``/v1/embeddings``' answer: L2-normalized ``(N, D) float32`` and the text tokens counted."""

    vectors: np.ndarray
    tokens: int


@dataclass
class Batcher:
    """The queue (bounded by ``max_queue`` items) and the one thread that runs the model on it."""

    model: LongCLIP
    make_pool: Callable[[], DecodePool | ThreadPool]
    metrics: Metrics
    batch_size: int = 32
    batch_wait: float = 0.005
    max_queue: int = 1024
    # int8 graphs quantize each batch with its own activation scales, so a row's bits depend on its batch there:
    # each request then runs alone, and equals the library called on that request (see README, Serve)
    mix_requests: bool = True
    _jobs: collections.deque[Job] = field(default_factory=collections.deque)
    _queued: int = 0
    _stopping: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _pool: DecodePool | ThreadPool | None = None

    def start(self) -> None:
        self._pool = self.make_pool()
        self._thread = threading.Thread(target=self._loop, name="longclip-serve-model", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch being run, refuse what is still queued (503), stop the worker and the pool."""
        with self._cond:
            self._stopping = True
            left, self._jobs = list(self._jobs), collections.deque()
            self._queued = 0
            self._cond.notify_all()
        for job in left:
            job.settle(error=RequestError(503, "the server is shutting down: retry on another replica",
                                          "shutting_down", "server_error"))
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.close()

    def submit(self, job: Job) -> None:
        """Queue ``job``, or 429 when the queue holds ``max_queue`` items (a job alone may be larger)."""
        with self._cond:
            if self._stopping:
                raise RequestError(503, "the server is shutting down: retry on another replica", "shutting_down",
                                   "server_error")
            if self._queued and self._queued + job.size > self.max_queue:
                raise RequestError(429, f"the queue holds {self._queued} items (--max-queue {self.max_queue}): "
                                   "retry after a moment", "queue_full", "rate_limit_error")
            self._jobs.append(job)
            self._queued += job.size
            self.metrics.queue_depth.set(self._queued)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop its job if it is still queued (a batch already running finishes)."""
        with self._cond:
            job.cancelled = True
            if job in self._jobs:
                self._jobs.remove(job)
                self._queued -= job.size
                self.metrics.queue_depth.set(self._queued)

    # -- the worker thread ------------------------------------------------------------------------------------
    def _gather(self) -> list[Job] | None:
        """The next batch: the queue's head jobs, up to ``batch_size`` items (at least one job), once that many
        wait or ``batch_wait`` has passed since the worker saw the first."""
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            deadline = time.monotonic() + self.batch_wait
            while self.mix_requests and self._queued < self.batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
            batch, size = [], 0
            while self._jobs and (not batch or self.mix_requests and size + self._jobs[0].size <= self.batch_size):
                job = self._jobs.popleft()
                batch.append(job)
                size += job.size
            self._queued -= size
            self.metrics.queue_depth.set(self._queued)
            return batch

    def _loop(self) -> None:
        while (jobs := self._gather()) is not None:
            if jobs:
                self.metrics.batch_size.observe(sum(job.size for job in jobs))
            try:
                self._run([job for job in jobs if job.kind == "score"], self._score)
                self._run([job for job in jobs if job.kind == "embed"], self._embed)
            except BaseException:  # noqa: BLE001 - a bug of ours: say so to each request, keep serving
                log.exception("the model worker failed on a batch")
                for job in jobs:
                    job.settle(error=RequestError(500, "internal error (logged on the server)", "internal_error",
                                                  "server_error"))

    def _run(self, jobs: list[Job], run: Callable[[list[Job]], list[Any]]) -> None:
        if not jobs:
            return
        try:
            results = run(jobs)
        except EngineError as exc:  # the model or the decode workers failed: a fresh pool for the next batch
            log.error("%s", exc)
            self._renew_pool()
            for job in jobs:
                job.settle(error=RequestError(500, "the model failed on this batch (logged on the server)",
                                              "model_failed", "server_error"))
            return
        for job, result in zip(jobs, results):
            if isinstance(result, BaseException):
                job.settle(error=result)
            else:
                job.settle(result)

    def _renew_pool(self) -> None:
        assert self._pool is not None
        self._pool.close()
        self._pool = self.make_pool()

    def _score(self, jobs: list[Job]) -> list[ItemScores]:
        """Every job's pairs as one chunk through the pipeline ``LongCLIP.score_items`` uses, split back."""
        images: list[object] = []
        texts: list[object] = []
        reasons: list[str] = []
        names: list[str] = []
        for job in jobs:
            job_images, job_texts, job_reasons, job_names = job.payload
            for image, text, reason in zip(job_images, job_texts, job_reasons):
                images.append(None if reason else image)  # a pair with a read reason is neither read nor encoded
                texts.append(None if reason else text)
            reasons.extend(job_reasons)
            names.extend(job_names)
        if self._pool is None or self._pool.broken:
            self._renew_pool()
        pipeline = Pipeline(self.model, self._pool, None, self.batch_size)  # type: ignore[arg-type]
        result = next(pipeline.run([Work(images, texts, names=names, reasons=reasons if any(reasons) else None)]))
        out, start = [], 0
        for job in jobs:
            stop = start + job.size
            out.append(ItemScores(result.scores[start:stop], result.errors[start:stop],
                                  result.truncated[start:stop]))
            start = stop
        return out

    def _embed(self, jobs: list[Job]) -> list[Embedded | RequestError]:
        """Each job's inputs: images through the decode pool and the vision tower, texts in length buckets."""
        inputs = [(n, i, item) for n, job in enumerate(jobs) for i, item in enumerate(job.payload[0])]
        dim = self.model.manifest.embed_dim
        vectors = [np.empty((job.size, dim), dtype=np.float32) for job in jobs]
        failed: dict[int, RequestError] = {}
        tokens = [0] * len(jobs)
        images = [(n, i, item) for n, i, item in inputs if isinstance(item, bytes)]
        if images:
            pixels, reasons = self._decode([item for _, _, item in images], [f"input[{i}]" for _, i, _ in images])
            good = [k for k, reason in enumerate(reasons) if not reason]
            for k, reason in enumerate(reasons):
                if reason:
                    n, i, _ = images[k]
                    failed.setdefault(n, RequestError(400, f"input[{i}]: {reason}", reason.split(":", 1)[0]))
            for start in range(0, len(good), self.batch_size):
                rows = good[start : start + self.batch_size]
                embeds = l2_normalize(self.model.run_vision(pixels[rows]))
                for k, vector in zip(rows, embeds):
                    vectors[images[k][0]][images[k][1]] = vector
        texts = [(n, i, item) for n, i, item in inputs if isinstance(item, str)]
        if texts:
            context = self.model.manifest.context_length
            ids, lengths = self.model.tokenizer.batch([item for _, _, item in texts], context)
            for (n, _, _), length in zip(texts, lengths):
                tokens[n] += int(min(length, context))
            for rows, batch in self.model.text_batches(ids, self.batch_size):
                embeds = l2_normalize(self.model.run_text(batch))
                for k, vector in zip(rows, embeds):
                    vectors[texts[k][0]][texts[k][1]] = vector
        out: list[Embedded | RequestError] = []
        for n, job in enumerate(jobs):
            bad = np.flatnonzero(~np.isfinite(vectors[n]).all(axis=1))
            if n not in failed and len(bad):
                failed[n] = RequestError(400, f"input[{bad[0]}]: non_finite_embedding: the model gave NaN or inf",
                                         "non_finite_embedding")
            out.append(failed.get(n) or Embedded(vectors[n], tokens[n]))
        return out

    def _decode(self, sources: list[bytes], names: list[str]) -> tuple[np.ndarray, list[str]]:
        """Images' pixels through the decode pool, ``n_slots`` at a time; a reason for each that failed."""
        pool = self._pool
        assert pool is not None
        if pool.broken:
            self._renew_pool()
            pool = self._pool
        size = self.model.image_size
        pixels = np.zeros((len(sources), 3, size, size), dtype=np.float32)
        reasons = [""] * len(sources)
        for start in range(0, len(sources), pool.n_slots):
            jobs = {}
            for slot, k in enumerate(range(start, min(start + pool.n_slots, len(sources)))):
                job = next(pool.ids)
                jobs[job] = (k, slot)
                pool.submit(("image", job, sources[k], slot, names[k], None))
            while jobs:
                try:
                    event = pool.events.get(timeout=_EVENT_WAIT)
                except queue.Empty:
                    pool.broken = "no decode event in 10 minutes"
                    raise EngineError("the decode workers stopped answering") from None
                if event[0] == "pool_failed":
                    pool.broken = str(event[1])
                    raise EngineError(f"the decode workers failed: {event[1]}")
                if event[0] != "image" or event[1] not in jobs:
                    continue
                k, slot = jobs.pop(event[1])
                if event[2]:
                    reasons[k] = event[2]
                else:
                    pixels[k] = pool.slots[slot]
        return pixels, reasons
