"""One decode worker process: images into shared-memory slots, texts into token ids; no model, no ONNX Runtime.

Started by :class:`.decode_pool.DecodePool` as a fresh interpreter (never a fork of a process that runs ONNX
Runtime's threads, and no ``__main__`` guard needed in the user's script). It ignores Ctrl-C (its parent handles
it), dies with its parent (``PR_SET_PDEATHSIG``, and EOF on its job pipe), and answers one job at a time:

- ``("image", job, source, slot, name)`` -> ``("image", job, reason)``: the pixels of ``source`` (a path or
  bytes), as ``preprocess.decode_image`` makes them, written into ``slots[slot]``; ``reason`` is ``""`` or the
  row's reason, naming the image ``name`` (default: its path, or ``<bytes>``).
- ``("text", job, texts, context_length)`` -> ``("text", job, ids, lengths)``: ``Tokenizer.batch(texts)``.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
from multiprocessing.connection import Connection

import numpy as np


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)


def serve(jobs: Connection, results: Connection, slots: np.ndarray, size: int, mean: tuple[float, ...],
          std: tuple[float, ...], max_pixels: int) -> None:
    """Answer jobs until the job pipe closes (or a ``("stop",)`` job)."""
    from .errors import ImageError
    from .preprocess import decode_image

    tokenizer = None
    results.send(("ready", os.getpid()))
    while True:
        try:
            job = jobs.recv()
        except (EOFError, OSError):
            return
        kind = job[0]
        if kind == "image":
            _, job_id, source, slot, name = job
            try:
                decode_image(source, size, mean, std, max_pixels, out=slots[slot], name=name)
                reason = ""
            except ImageError as exc:
                reason = str(exc)
            results.send(("image", job_id, reason))
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
    shape = (n_slots, 3, size, size)
    buffer = mmap.mmap(shm_fd, int(np.prod(shape)) * 4)
    slots = np.frombuffer(buffer, dtype=np.float32).reshape(shape)
    with Connection(job_fd, writable=False) as jobs, Connection(result_fd, readable=False) as results:
        try:
            serve(jobs, results, slots, size, mean, std, max_pixels)
        except (BrokenPipeError, EOFError):  # the parent is gone or closing
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
