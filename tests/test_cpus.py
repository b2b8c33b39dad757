"""CPUs this process may use (affinity, cgroup quotas), and the split between decoding and the model."""

import os

import pytest

from longclip.runtime.decode import cpus


@pytest.fixture()
def cgroup(tmp_path, monkeypatch):
    """Point the cgroup reads at files of our own: ``write(v2=..., v1=(quota, period))``."""
    real = cpus.Path

    def fake_path(name):
        return real(str(tmp_path) + str(name)) if str(name).startswith("/sys/fs/cgroup") else real(name)

    monkeypatch.setattr(cpus, "Path", fake_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))

    def write(v2=None, v1=None):
        if v2 is not None:
            (tmp_path / "sys/fs/cgroup").mkdir(parents=True, exist_ok=True)
            (tmp_path / "sys/fs/cgroup/cpu.max").write_text(v2)
        if v1 is not None:
            (tmp_path / "sys/fs/cgroup/cpu").mkdir(parents=True, exist_ok=True)
            (tmp_path / "sys/fs/cgroup/cpu/cpu.cfs_quota_us").write_text(str(v1[0]))
            (tmp_path / "sys/fs/cgroup/cpu/cpu.cfs_period_us").write_text(str(v1[1]))

    return write


@pytest.mark.parametrize(("v2", "v1", "want"), [
    (None, None, 16),  # no cgroup files: the affinity
    ("max 100000", None, 16),  # v2, unlimited
    ("250000 100000", None, 3),  # v2: 2.5 CPUs, rounded up
    ("50000 100000", None, 1),
    ("3200000 100000", None, 16),  # a quota above the affinity: the affinity
    (None, (-1, 100000), 16),  # v1, unlimited
    (None, (150000, 100000), 2),  # v1: 1.5 CPUs
    ("garbage", None, 16),
])
def test_available_cpus_follow_affinity_and_quota(cgroup, v2, v1, want):
    cgroup(v2=v2, v1=v1)
    assert cpus.available_cpus() == want


def test_affinity_is_what_the_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(cpus, "_cgroup_quota", lambda: None)
    assert cpus.available_cpus() == 1


def test_split():
    assert cpus.plan_cpus(gpu=True, cpus=8) == cpus.CpuPlan(7, 1, True)
    assert cpus.plan_cpus(gpu=True, cpus=1) == cpus.CpuPlan(1, 1, True)  # a GPU needs its decoder even on one CPU
    assert cpus.plan_cpus(gpu=False, cpus=4) == cpus.CpuPlan(4, 4, False)
    assert cpus.plan_cpus(gpu=False, decode_workers=0, cpus=4) == cpus.CpuPlan(0, 4, True)
    assert cpus.plan_cpus(gpu=True, decode_workers=3, cpus=16) == cpus.CpuPlan(3, 1, True)
