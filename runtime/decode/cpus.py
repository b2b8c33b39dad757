"""How many CPUs this process may really use, and how a run splits them between decoding and the model.

``os.cpu_count()`` counts the machine's cores; a container or a batch scheduler gives a process fewer, through its
CPU affinity (``taskset``, Slurm) or a cgroup quota (Docker's ``--cpus``, Kubernetes limits). Sizing pools from the
machine's count oversubscribes those, and every worker then runs slower than one per CPU would.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


def available_cpus() -> int:
    """CPUs this process may use: its affinity, further bounded by a cgroup (v2 or v1) CPU quota; at least 1.

    >>> available_cpus() >= 1
    True
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, quota) if quota is not None else count)


def _cgroup_quota() -> int | None:
    """CPUs the cgroup's quota allows (rounded up), or None when unlimited or unknown."""
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()  # v2: "<quota|max> <period>"
        if fields and fields[0] != "max":
            return math.ceil(int(fields[0]) / int(fields[1]))
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return math.ceil(quota / period) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class CpuPlan:
    """A run's split: ``decode_workers`` processes (0: decode on threads in this process), ``model_threads`` ONNX
    Runtime intra-op threads per session, and whether those may spin between runs (not where workers share the
    cores)."""

    decode_workers: int
    model_threads: int
    spin: bool = True


def plan_cpus(gpu: bool, decode_workers: int | None = None, cpus: int | None = None) -> CpuPlan:
    """The split for ``cpus`` (default :func:`available_cpus`).

    On a GPU the model needs a thread to feed it, so every CPU but one decodes. On the CPU decoding and the model
    take turns on the same cores: a model-bound run leaves its workers waiting, a decode-bound one its sessions, so
    both get every core (the sessions do not spin, so idle threads cost nothing; see ``session.create_session``).
    ``decode_workers`` overrides the worker count (0: in-process).

    >>> plan_cpus(gpu=True, cpus=16)
    CpuPlan(decode_workers=15, model_threads=1, spin=True)
    >>> plan_cpus(gpu=False, cpus=2), plan_cpus(gpu=False, decode_workers=0, cpus=8)
    (CpuPlan(decode_workers=2, model_threads=2, spin=False), CpuPlan(decode_workers=0, model_threads=8, spin=True))
    """
    cpus = cpus or available_cpus()
    if gpu:
        workers = max(1, cpus - 1) if decode_workers is None else decode_workers
        return CpuPlan(workers, 1)
    workers = cpus if decode_workers is None else decode_workers
    return CpuPlan(workers, cpus, spin=workers == 0)
