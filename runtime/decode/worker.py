"""One decode worker process: images into shared-memory slots, texts into token ids; no model, no ONNX Runtime.

Started by :class:`.decode_pool.DecodePool` as a fresh interpreter (never a fork of a process that runs ONNX
Runtime's threads, and no ``__main__`` guard needed in the user's script). It ignores Ctrl-C (its parent handles
it), dies with its parent (``PR_SET_PDEATHSIG``, and EOF on its job pipe), and answers one job at a time:

- ``("image", job, source, slot, name, cache)`` -> ``("image", job, reason, meta, cached)``: the pixels of
  ``source`` (a path or bytes), as ``preprocess.decode_image`` makes them, written into ``slots[slot]``; ``reason``
  is ``""`` or the row's reason, naming the image ``name`` (default: its path, or ``<bytes>``). With ``cache`` not
  None (an embeddings run), ``meta`` is ``(sha256, size, mtime_ns)`` of the image's bytes, and when ``cache`` names
  an embeddings folder that has the image already, ``cached`` is True and nothing is decoded.
- ``("text", job, texts, context_length)`` -> ``("text", job, ids, lengths)``: ``Tokenizer.batch(texts)``.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

import numpy as np


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)


def image_job(job: tuple[Any, ...], slots: np.ndarray, spec: Any, caches: dict[str, Any]) -> tuple[Any, ...]:
    """Answer one image job (see the module doc); ``caches``: the embeddings folders opened so far, by path."""
    from .errors import ImageError
    from .preprocess import decode_image

    _, job_id, source, slot, name, cache = job
    meta = None
    try:
        if cache is not None:
            source, meta = _read(source)
            if cache and _store(caches, cache).has_images([meta[0]]):
                return "image", job_id, "", meta, True
            name = name or (job[2] if isinstance(job[2], str) else None)
        decode_image(source, spec.size, spec.mean, spec.std, spec.max_pixels, out=slots[slot], name=name)
        return "image", job_id, "", meta, False
    except ImageError as exc:
        return "image", job_id, str(exc), meta, False


def _read(source: str | bytes) -> tuple[bytes, tuple[str, int, int | None]]:
    """An image's bytes and ``(sha256, size, mtime_ns)``; a path is opened as ``decode_image`` opens it."""
    from .constants import MAX_MEMBER_BYTES
    from .embeddings import bytes_sha256
    from .errors import TOO_MANY_PIXELS, ImageError
    from .preprocess import _os_error, open_image_file

    if isinstance(source, (bytes, bytearray, memoryview)):
        data, mtime = bytes(source), None
    else:
        with open_image_file(source) as file:
            st = os.fstat(file.fileno())
            if st.st_size > MAX_MEMBER_BYTES:  # hashed whole, so read whole: not into this worker's memory
                raise ImageError(TOO_MANY_PIXELS, f"image file {source!r} is {st.st_size} bytes, more than the "
                                 f"{MAX_MEMBER_BYTES} an image may be")
            try:
                data, mtime = file.read(MAX_MEMBER_BYTES + 1), st.st_mtime_ns
            except OSError as exc:  # an I/O error, a file gone from a network share: this row's reason
                raise _os_error(exc, source) from None
    return data, (bytes_sha256(data), len(data), mtime)


def _store(caches: dict[str, Any], root: str) -> Any:
    from .embeddings import EmbeddingStore

    if root not in caches:
        caches[root] = EmbeddingStore(root, write=False)
    return caches[root]


def serve(jobs: Connection, results: Connection, slots: np.ndarray, spec: Any) -> None:
    """Answer jobs until the job pipe closes (or a ``("stop",)`` job)."""
    tokenizer = None
    caches: dict[str, Any] = {}
    results.send(("ready", os.getpid()))
    while True:
        try:
            job = jobs.recv()
        except (EOFError, OSError):
            return
        kind = job[0]
        if kind == "image":
            results.send(image_job(job, slots, spec, caches))
        elif kind == "text":
            _, job_id, texts, context_length = job
            if tokenizer is None:
                from .tokenizer import Tokenizer

                tokenizer = Tokenizer()
            ids, lengths = tokenizer.batch(texts, context_length)
            results.send(("text", job_id, ids, lengths))
        else:
            return


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent, job_fd, result_fd, shm_fd, n_slots, size, max_pixels = (int(a) for a in argv[:7])
    mean = tuple(float(v) for v in argv[7].split(","))
    std = tuple(float(v) for v in argv[8].split(","))
    _die_with_parent(parent)
    from .decode_pool import ImageSpec

    shape = (n_slots, 3, size, size)
    buffer = mmap.mmap(shm_fd, int(np.prod(shape)) * 4)
    slots = np.frombuffer(buffer, dtype=np.float32).reshape(shape)
    spec = ImageSpec(size, mean, std, max_pixels)  # type: ignore[arg-type]
    with Connection(job_fd, writable=False) as jobs, Connection(result_fd, readable=False) as results:
        try:
            serve(jobs, results, slots, spec)
        except (BrokenPipeError, EOFError):  # the parent is gone or closing
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
