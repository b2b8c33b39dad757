"""The one way a run's parts are put together — the CPU split, the model, the decode pool, the embeddings folder
— for ``longclip-run``, the operator and each Ray worker alike.

The split comes first (:func:`.cpus.plan_cpus`: decode workers beside the model's threads, from the device and the
CPUs this process may use), then each part from it. Callers order and own the parts: the CLI opens the folder
before the model loads (another model's folder is refused first) and starts the workers while it loads; a Ray
worker builds its pool again after a failed batch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..contract.constants import BATCH_SIZE, DECODE_TIMEOUT, EMBEDDING_DTYPES, MAX_PIXELS
from ..decode.cpus import CpuPlan, plan_cpus
from ..decode.pool import ImageSpec, make_pool
from ..model.device import wants_gpu
from ..model.longclip import TRT_MAX_BATCH, LongCLIP

if TYPE_CHECKING:
    from ..contract.manifest import Manifest
    from ..decode.pool import DecodePool, ThreadPool
    from ..embeddings.store import EmbeddingStore


def split_cpus(device: str | None, decode_workers: int | None = None, cpus: int | None = None) -> CpuPlan:
    """How this process's CPUs (or ``cpus``) are shared between decode workers and the model on ``device``.

    >>> split_cpus("cpu", decode_workers=0, cpus=8)
    CpuPlan(decode_workers=0, model_threads=8, spin=True)
    """
    return plan_cpus(wants_gpu(device), decode_workers, cpus=cpus)


def load_model(model_dir: str | os.PathLike[str], device: str | None, split: CpuPlan,
               batch_size: int = BATCH_SIZE) -> LongCLIP:
    """The model on ``device`` with ``split``'s threads; TensorRT engines cover ``batch_size`` batches."""
    return LongCLIP(model_dir, device=device, threads=split.model_threads,
                    max_batch=max(batch_size, TRT_MAX_BATCH), spin=split.spin)


def start_pool(manifest: Manifest, split: CpuPlan, batch_size: int = BATCH_SIZE, max_pixels: int = MAX_PIXELS,
               timeout: float = DECODE_TIMEOUT) -> DecodePool | ThreadPool:
    """``split``'s decode workers (threads when it has none), decoding to ``manifest``'s image size."""
    return make_pool(ImageSpec.of(manifest, max_pixels), batch_size, split.decode_workers, timeout)


def open_store(root: str | os.PathLike[str], manifest: Manifest, dtype: str = EMBEDDING_DTYPES[0],
               shared: bool = False) -> EmbeddingStore:
    """The embeddings folder ``root`` for ``manifest``'s model (another model's folder is refused); ``shared``: a
    Ray worker's, which writes parts of its own while the driver holds the lock."""
    from ..embeddings.identity import StoreIdentity
    from ..embeddings.store import EmbeddingStore

    return EmbeddingStore(root, StoreIdentity.of(manifest, dtype), shared=shared)
