from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.cpus import cgroup_cpu_limit, thread_count, usable_cpus


def cgroup(tmp_path: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


@pytest.mark.parametrize(
    ("v2", "v1", "limit"),
    [
        ("150000 100000\n", None, 1.5),
        ("max 100000\n", None, None),
        (None, ("200000\n", "100000\n"), 2.0),
        (None, ("-1\n", "100000\n"), None),
        (None, None, None),
        ("garbage\n", None, None),
    ],
)
def test_the_cgroup_quota_is_read_from_v2_or_v1(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, limit: float | None
) -> None:
    assert cgroup_cpu_limit(cgroup(tmp_path, v2, v1)) == limit


def test_threads_follow_the_quota_the_affinity_and_argus_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ARGUS_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    mask = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == thread_count(tmp_path) == mask  # no quota
    quota = cgroup(tmp_path, v2="50000 100000")  # half a CPU: one thread, never zero
    assert usable_cpus(quota) == thread_count(quota) == 1
    monkeypatch.setenv("ARGUS_THREADS", "3")
    assert thread_count(quota) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("ARGUS_THREADS", bad)
        with pytest.raises(ValueError, match="ARGUS_THREADS"):
            thread_count(quota)


def test_torch_and_onnx_runtime_pools_are_sized_by_the_process_cpus(tmp_path: Path) -> None:
    """In a process pinned to one CPU, and one told ARGUS_THREADS=1, torch's pool (after the
    device is picked) and ONNX Runtime's (the service's encoder, threads=0) have one thread."""
    script = (
        "import os, sys, torch\n"
        "if sys.argv[1] == 'pin': os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "torch.set_num_threads(8)\n"
        "from model.runtime import pick_device\n"
        "from model.cpus import thread_count\n"
        "pick_device('cpu')\n"
        "print(torch.get_num_threads(), thread_count())\n"
    )
    for how, env in (("pin", {}), ("env", {"ARGUS_THREADS": "1"})):
        done = subprocess.run(
            [sys.executable, "-c", script, how],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=True,
        )
        assert done.stdout.split() == ["1", "1"], (how, done.stdout, done.stderr)
