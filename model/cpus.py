"""How many threads a compute pool (torch, ONNX Runtime) should use in this process.

Libraries size their pools from the machine's cores, which in a container is the host's: a pod
limited to 2 CPUs on a 64-core node would run 64 threads and spend its quota switching between
them. Here the count is, in order:

1. ``ARGUS_THREADS`` when set (a shared or busy machine: ``ARGUS_THREADS=1`` is often fastest);
2. the CPUs this process may run on (its affinity mask, as ``taskset`` or a cpuset sets it),
   capped by the cgroup's CPU quota rounded up (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` /
   ``cpu.cfs_period_us`` in v1), shared evenly by the ranks of one ``torchrun`` node.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs (e.g. 1.5), or None when there is none or no cgroup to read."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_file, period_file = (
            root / "cpu" / "cpu.cfs_quota_us",
            root / "cpu" / "cpu.cfs_period_us",
        )
        if quota_file.is_file() and period_file.is_file():
            quota_us = int(quota_file.read_text())
            return None if quota_us <= 0 else quota_us / int(period_file.read_text())
    except (OSError, ValueError):
        return None
    return None


def usable_cpus(root: Path = CGROUP) -> int:
    """CPUs this process may use: its affinity mask capped by the cgroup quota (at least 1)."""
    affinity = getattr(os, "sched_getaffinity", None)  # not on macOS or Windows
    n = len(affinity(0)) if affinity else os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)


def thread_count(root: Path = CGROUP) -> int:
    """Threads for one process's compute pool: ``ARGUS_THREADS``, else :func:`usable_cpus` shared
    by the ranks of this node (``LOCAL_WORLD_SIZE`` under ``torchrun``)."""
    if value := os.environ.get("ARGUS_THREADS", "").strip():
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"ARGUS_THREADS={value!r}: expected a whole number of threads >= 1")
        return int(value)
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, usable_cpus(root) // max(1, ranks))
