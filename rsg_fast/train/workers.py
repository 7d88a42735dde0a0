"""How many DataLoader worker processes a training process gets by default: the CPUs it may use
(affinity, a container's CPU quota), shared among the training processes on this machine."""
from __future__ import annotations

import os
from pathlib import Path


def default_workers(world: int = 1) -> int:
    """DataLoader processes of ``--loader workers``: the CPUs this process may use (its affinity, capped
    by a cgroup CPU quota), shared by the training processes on this machine (torchrun's
    ``LOCAL_WORLD_SIZE``; else ``world``), one left to each of them for launching the GPU's work;
    1 to 16. (A fixed 4 is likely too few to feed a GPU on a large machine, and oversubscribed a 2-core
    one, where DataLoader warns.) A launcher that pins each process to CPUs of its own is counted
    twice: give ``--workers`` there."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(int(quota), 1))
    try:
        local = int(os.environ["LOCAL_WORLD_SIZE"])
    except (KeyError, ValueError):
        local = world
    return max(1, min(16, cpus // max(local, 1) - 1))


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"   # cgroup v2: "<quota> <period>" or "max <period>"
CGROUP_V1_CPU = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")   # -1: none


def cgroup_cpu_quota() -> float | None:
    """The CPUs a cgroup quota allows this process (a container's ``--cpus``), or None when there is
    none or it cannot be read: cgroup v2's ``cpu.max``, else cgroup v1's CFS quota and period, each as a
    container sees its own cgroup at /sys/fs/cgroup."""
    try:
        quota, period = Path(CGROUP_CPU_MAX).read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota, period = (int(Path(path).read_text(encoding="ascii")) for path in CGROUP_V1_CPU)
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
