"""Decoding off the GIL: worker processes that write pixels straight into shared memory, and tokenize texts.

A decoding thread holds the GIL for about 1.8 ms per 640x480 JPEG (Pillow's Python-side parsing), so threads cap
near 570 images/s on any number of cores. :class:`DecodePool` runs ``decode_worker`` processes instead; each writes
a row's ``(3, n, n) float32`` pixels into a slot of one shared buffer (``/dev/shm``, or the temp folder when
``/dev/shm`` is too small, as Docker's 64 MB default often is), so the pixels never travel through a pipe.
:class:`ThreadPool` is the same interface on threads (``--decode-workers 0``).

Jobs go in through :meth:`submit`; results come out, in any order, on the pool's ``events`` queue:
``("image", job, reason, meta, cached)`` (``reason`` ``""``: the slot holds the pixels; ``meta`` and ``cached``:
see ``decode_worker``) and ``("text", job, ids, lengths)`` (``ids`` is
``None`` when the worker failed: the caller tokenizes those texts itself). A worker that crashes, or that spends
more than ``timeout`` seconds on one image, costs that image only (``decoder_crashed`` / ``decode_timeout``): it
is killed and replaced, and the jobs it had not started are sent again.

One supervisor thread owns the workers: it starts them (so ``PR_SET_PDEATHSIG``, tied to the thread that started a
process, lasts as long as the pool), sends jobs, reads results and stderr, and enforces the timeout.
"""

from __future__ import annotations

import collections
import errno
import itertools
import json
import logging
import mmap
import os
import pickle
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from ..contract import errors
from ..contract.constants import DECODE_TIMEOUT
from ..contract.errors import EngineError, ImageError, files_limit
from .worker import ImageSpec

log = logging.getLogger(__name__)


_DEPTH = 2  # jobs sent ahead to each worker, so it never waits for the next one
# ... when small: a job larger than the pipe's buffer (image bytes, a long text job) would block the supervisor
# until the worker finished its current job, and a worker stuck there would then never be timed out
_AHEAD_BYTES = 16384
_START_TIMEOUT = 60.0  # seconds a new worker may take to say it is ready
_STILLBORN = 3  # workers in a row that die or hang before they are ready: the pool has failed
_STDERR_LINES = 20  # last lines of each worker's stderr kept for its crash report
# Open files a run with worker processes needs, about: each worker keeps three pipes and its start opens a few more
# for a moment; the rest (the graphs, the input, the output and its lock, Python's own) fit in the base. Measured:
# the tiny model with 2 workers needs 25 to 28; a limit below the estimate is refused before anything starts.
_FILES_BASE = 32
_FILES_PER_WORKER = 8


def shared_buffer(nbytes: int) -> tuple[int, mmap.mmap]:
    """An anonymous file of ``nbytes``, mapped; its fd is inherited by the workers, and nothing of it is left
    behind however the run ends. ``memfd_create`` first (shared memory outside any mount, so Docker's 64 MB
    ``/dev/shm`` does not bound it), else a file in ``/dev/shm`` or the temp folder, unlinked at once. The space is
    reserved now (``posix_fallocate``): a full tmpfs would otherwise kill a worker with SIGBUS later."""
    for folder in ("memfd", "/dev/shm", tempfile.gettempdir()):
        try:
            if folder == "memfd":
                fd = os.memfd_create("longclip-pixels", os.MFD_CLOEXEC)
            else:
                fd, path = tempfile.mkstemp(prefix="longclip-pixels-", dir=folder)
                os.unlink(path)
        except (OSError, AttributeError):  # no memfd_create (not Linux), an unwritable folder
            continue
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return fd, mmap.mmap(fd, nbytes)
        except OSError as exc:
            log.debug("no room for %d bytes of pixels in %s (%s)", nbytes, folder, exc)
            os.close(fd)
    raise OSError(f"no room for {nbytes} bytes of decoded pixels in shared memory, /dev/shm or "
                  f"{tempfile.gettempdir()}")


@dataclass(eq=False)  # compared by identity: a replaced worker is another one
class _Worker:
    process: subprocess.Popen[bytes]
    jobs: Connection
    results: Connection
    sent: collections.deque[tuple[Any, ...]] = field(default_factory=collections.deque)  # head: in progress
    started: float = 0.0  # when the head job began
    spawned: float = field(default_factory=time.monotonic)
    ready: bool = False
    timed_out: bool = False
    stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_STDERR_LINES))


class DecodePool:
    """``workers`` decode processes over ``n_slots`` shared image slots (``slots``: ``(n_slots, 3, n, n)``)."""

    def __init__(self, spec: ImageSpec, n_slots: int, workers: int, timeout: float = DECODE_TIMEOUT):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.spec, self.n_slots, self.workers, self.timeout = spec, n_slots, workers, timeout
        self.events: queue.Queue[Any] = queue.Queue()
        self.ids = itertools.count()  # job ids, unique over every pipeline run on this pool
        self.broken = ""  # why no pipeline may run on this pool again (one stopped with jobs outstanding)
        shape = (n_slots, 3, spec.size, spec.size)
        self._shm_fd, self._buffer = shared_buffer(int(np.prod(shape)) * 4)
        self.slots = np.frombuffer(self._buffer, dtype=np.float32).reshape(shape)
        self._pending: collections.deque[tuple[tuple[Any, ...], bytes]] = collections.deque()  # (job, pickled)
        self._inbox: queue.SimpleQueue[tuple[tuple[Any, ...], bytes]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._closing = threading.Event()
        self._failure: BaseException | None = None
        self._stillborn = 0
        self._thread = threading.Thread(target=self._supervise, name="longclip-decode", daemon=True)
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"{self.workers} worker process{'es' if self.workers > 1 else ''}"

    def submit(self, job: tuple[Any, ...]) -> None:
        """Queue ``("image", job_id, source, slot, name, cache)`` or ``("text", job_id, texts, context_length)``
        (``decode_worker`` says what they answer)."""
        if self._failure is not None:
            raise EngineError(f"the decode workers failed: {_why(self._failure)}") from None
        self._inbox.put((job, pickle.dumps(job, pickle.HIGHEST_PROTOCOL)))
        os.write(self._wake_w, b"j")

    def close(self) -> None:
        """Stop the workers (at once: queued jobs are dropped) and release the shared memory."""
        if self._closing.is_set():
            return
        self._closing.set()
        try:
            os.write(self._wake_w, b"c")
        except OSError:
            pass
        self._thread.join(timeout=10)
        for fd in (self._wake_r, self._wake_w, self._shm_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the supervisor thread --------------------------------------------------------------------------------
    def _supervise(self) -> None:
        workers: list[_Worker] = []
        try:
            workers = [self._spawn() for _ in range(self.workers)]
            while not self._closing.is_set():
                self._step(workers)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller, never silently lost
            self._failure = exc
            log.debug("decode workers failed", exc_info=True)  # the caller says it, in one line
            self.events.put(("pool_failed", _why(exc)))
        finally:
            for worker in workers:
                _stop(worker)

    def _step(self, workers: list[_Worker]) -> None:
        owner: dict[int, _Worker] = {}  # id of each waitable -> its worker
        for worker in workers:
            owner[id(worker.results)] = worker
            if worker.process.stderr is not None:
                owner[id(worker.process.stderr)] = worker
        waitables = [self._wake_r, *(w.results for w in workers),
                     *(w.process.stderr for w in workers if w.process.stderr is not None)]
        for ready in wait(waitables, timeout=0.2):
            if ready is self._wake_r:
                os.read(self._wake_r, 4096)
                continue
            worker = owner[id(ready)]
            if worker not in workers:  # replaced earlier in this round: its pipes are closed
                continue
            if ready is worker.process.stderr:
                self._read_stderr(worker)
            elif not self._receive(worker):
                workers[workers.index(worker)] = self._replace(worker)
        while True:
            try:
                self._pending.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        now = time.monotonic()
        for i, worker in enumerate(workers):
            if worker.sent and worker.ready and now - worker.started > self.timeout:
                worker.timed_out = True
                workers[i] = self._replace(worker)
            elif not worker.ready and now - worker.spawned > _START_TIMEOUT:
                workers[i] = self._replace(worker)
        for worker in workers:
            while self._pending and worker.ready and len(worker.sent) < _DEPTH:
                if worker.sent and len(self._pending[0][1]) > _AHEAD_BYTES:
                    break  # sent when the worker is idle, so the write never waits on its decode
                job, data = self._pending.popleft()
                try:
                    worker.jobs.send_bytes(data)
                except OSError:  # it died since it last answered: its results pipe says so, and it is replaced
                    self._pending.appendleft((job, data))
                    break
                if not worker.sent:
                    worker.started = time.monotonic()
                worker.sent.append((job, data))

    def _receive(self, worker: _Worker) -> bool:
        """Handle one message; False when the worker is gone."""
        try:
            message = worker.results.recv()
        except (EOFError, OSError):
            return False
        if message[0] == "ready":
            worker.ready = True
            self._stillborn = 0
            return True
        worker.sent.popleft()
        worker.started = time.monotonic()
        self.events.put(message)
        return True

    def _replace(self, worker: _Worker) -> _Worker:
        """Kill ``worker``; its job in progress fails with a reason, the others are sent again."""
        _stop(worker, kill=True)
        if not worker.ready:  # it died, or hung, before it could take a job: a broken install, not an image
            self._stillborn += 1
            if self._stillborn >= _STILLBORN:
                last = " | ".join(worker.stderr)[-300:]
                raise RuntimeError(f"{self._stillborn} decode workers in a row exited or hung before they started "
                                   f"(exit {worker.process.returncode})" + (f": {last}" if last else "")
                                   + "; run with --decode-workers 0 to decode in this process")
        if worker.sent:
            (head, _), *rest = worker.sent
            self._fail(head, worker)
            self._pending.extendleft(reversed(rest))
        return self._spawn()

    def _fail(self, job: tuple[Any, ...], worker: _Worker) -> None:
        if job[0] == "text":
            self.events.put(("text", job[1], None, None))
            return
        name = job[4] or (job[2] if isinstance(job[2], str) else "<bytes>")
        if worker.timed_out:
            reason = ImageError(errors.DECODE_TIMEOUT, f"decoding {name!r} took more than {self.timeout:g} s; the "
                                "decoder was stopped (raise --decode-timeout if this is intended)")
        else:
            code = worker.process.returncode
            last = " | ".join(worker.stderr)[-300:]
            reason = ImageError(errors.DECODER_CRASHED, f"the decoder crashed on {name!r} (exit {code})"
                                + (f": {last}" if last else ""))
        self.events.put(("image", job[1], str(reason), None, False))

    def _read_stderr(self, worker: _Worker) -> None:
        assert worker.process.stderr is not None
        data = os.read(worker.process.stderr.fileno(), 65536)
        if not data:  # the worker is exiting: its results pipe says so
            return
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                worker.stderr.append(line.strip())
                log.debug("decode worker %d: %s", worker.process.pid, line.strip())

    def _spawn(self) -> _Worker:
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        spec = self.spec
        args = [str(os.getpid()), str(job_r), str(result_w), str(self._shm_fd), str(self.n_slots), str(spec.size),
                str(spec.max_pixels), ",".join(map(repr, spec.mean)), ",".join(map(repr, spec.std))]
        # -c with this process's sys.path: the worker imports longclip however this process found it
        code = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
                "from longclip.runtime.decode.worker import main; main(sys.argv[2:])")
        process = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(sys.path), *args], pass_fds=(job_r, result_w, self._shm_fd),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        os.close(job_r)
        os.close(result_w)
        return _Worker(process, Connection(job_w, readable=False), Connection(result_r, writable=False))


def _why(exc: BaseException) -> str:
    """Why the workers failed, in one line with the way out: a limit reached (open files, processes, memory) names
    the limit; a worker that cannot be started names the interpreter."""
    if not isinstance(exc, OSError):
        return str(exc) or repr(exc)
    out = "or run with --decode-workers 0 to decode in this process"
    limit = files_limit(exc, "starting a worker")
    if limit:
        return limit
    if exc.errno in (errno.EAGAIN, errno.ENOMEM):
        return (f"[Errno {exc.errno}] {exc.strerror} while starting a worker (the limit on processes, ulimit -u, or "
                f"memory): free some, {out}")
    return f"cannot start a decode worker ({sys.executable}): {exc}; check that it runs, {out}"


def _stop(worker: _Worker, kill: bool = False) -> None:
    for conn in (worker.jobs, worker.results):
        try:
            conn.close()
        except OSError:
            pass
    if kill:
        worker.process.kill()
    try:
        worker.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait()
    if worker.process.stderr is not None:
        worker.process.stderr.close()


class ThreadPool:
    """:class:`DecodePool`'s interface on threads of this process (``--decode-workers 0``): no processes, the
    slots in ordinary memory, no timeout (a thread cannot be stopped)."""

    def __init__(self, spec: ImageSpec, n_slots: int, threads: int):
        self.spec, self.n_slots, self.workers = spec, n_slots, threads
        self.slots = np.empty((n_slots, 3, spec.size, spec.size), dtype=np.float32)
        self.events: queue.Queue[Any] = queue.Queue()
        self.ids = itertools.count()
        self.broken = ""
        self._executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="longclip-input")
        self._local = threading.local()

    def describe(self) -> str:
        return f"{self.workers} thread{'s' if self.workers > 1 else ''} of this process"

    def submit(self, job: tuple[Any, ...]) -> None:
        self._executor.submit(self._run, job)

    def _run(self, job: tuple[Any, ...]) -> None:
        from .tokenizer import default_tokenizer
        from .worker import image_job

        try:
            if job[0] == "image":
                caches = self._local.__dict__.setdefault("caches", {})  # a store object per thread: not thread-safe
                self.events.put(image_job(job, self.slots, self.spec, caches))
            else:
                _, job_id, texts, context_length = job
                ids, lengths = default_tokenizer().batch(texts, context_length)
                self.events.put(("text", job_id, ids, lengths))
        except BaseException as exc:  # noqa: BLE001 - a bug of ours: the caller must hear of it
            self.events.put(("pool_failed", repr(exc)))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ThreadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def slots_for(batch_size: int, workers: int) -> int:
    """Image slots a pipeline needs: a batch filling while the model runs another, plus what is being decoded.

    >>> slots_for(32, 2)
    68
    """
    return 2 * batch_size + _DEPTH * max(1, workers)


def check_files_limit(workers: int) -> None:
    """:class:`EngineError` in one line when this process may not open the files ``workers`` decode processes
    need (``ulimit -n``): refused before any starts, rather than failing half-way with a worker's pipe or a graph.

    >>> check_files_limit(2)  # a usual limit (1,024 or more) passes
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    need = _FILES_BASE + _FILES_PER_WORKER * workers
    if soft != resource.RLIM_INFINITY and soft < need:
        raise EngineError(f"this process may have {soft} open files (ulimit -n) and {workers} decode worker "
                          f"processes need about {need}: raise the limit (ulimit -n 4096), or run with "
                          "--decode-workers 0 to decode in this process")


def make_pool(spec: ImageSpec, batch_size: int, workers: int, timeout: float = DECODE_TIMEOUT
              ) -> DecodePool | ThreadPool:
    """Worker processes, or threads when ``workers`` is 0 (two of them, so decoding overlaps inference) or when no
    shared memory can be had (said in a warning)."""
    if workers > 0:
        check_files_limit(workers)
        try:
            return DecodePool(spec, slots_for(batch_size, workers), workers, timeout)
        except OSError as exc:
            log.warning("decoding on threads of this process instead of %d worker processes: %s", workers, exc)
    return ThreadPool(spec, slots_for(batch_size, 2), 2)
