"""Keep the model busy: input work (decode, preprocess, tokenize) runs ahead on threads, bounded.

Pillow's decode and resize and ONNX Runtime's ``run`` release the GIL, so a few threads decoding the next images
overlap with inference on the main thread. The window is bounded, so memory stays at ``depth`` items.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Decode threads: the cores, at least 2 (so decoding overlaps inference even on one core), at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


def input_pool(workers: int | None = None) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="longclip-input")


def prefetch(pool: Executor | None, fn: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[R]:
    """``fn(item)`` for each item, in order, computed up to ``depth`` items ahead on ``pool`` (inline if None).

    >>> list(prefetch(None, str, [1, 2], depth=4))
    ['1', '2']
    """
    if pool is None:
        yield from map(fn, items)
        return
    window: deque[Future[R]] = deque()
    try:
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= depth:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            future.cancel()
