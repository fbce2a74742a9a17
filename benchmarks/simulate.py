"""Simulator throughput: events/s for about 10M events, and peak memory.

    .venv/bin/python -m benchmarks.simulate [--users 60000 --items 100000 --days 30]
    .venv/bin/python -m benchmarks.simulate --users 5000 --items 20000 --compare-pool 2
    .venv/bin/python -m benchmarks.simulate --users 5000 --items 20000 --compare-rev 75a414d 3

Writes the data to a temporary directory (deleted afterwards) and the figures to
runs/bench/simulate.json. Peak RSS shows that memory is bounded by one chunk of users, not by
the number of events. ``--compare-pool N`` instead runs N alternating rounds with the personal
pool and without it (``pool_size=0``) and prints the speed ratio (what the pool costs).
``--compare-rev REV N`` runs N alternating rounds of this tree's simulator and the one of git
revision REV (checked out into a temporary worktree; ``75a414d`` is the last before the personal
pool), each in a fresh process, and prints the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from model.data.simulate import SimConfig, Simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/simulate.json"))
    parser.add_argument("--compare-pool", type=int, default=0, metavar="ROUNDS")
    parser.add_argument("--compare-rev", nargs=2, metavar=("REV", "ROUNDS"))
    args = parser.parse_args()
    if args.compare_pool:
        compare_pool(args)
        return
    if args.compare_rev:
        compare_rev(args, args.compare_rev[0], int(args.compare_rev[1]))
        return

    config = SimConfig(n_users=args.users, n_items=args.items, n_days=args.days, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        summary = Simulator(config).run(tmp)
        size = (Path(tmp) / "events.parquet").stat().st_size
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest one
    result = {
        **asdict(summary),
        "events_per_s": summary.events / summary.seconds,
        "peak_rss_mib": peak_rss_mib,
        "worker_peak_rss_mib": worker_rss_mib,
        "parquet_mib": size / 2**20,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary.line())
    print(
        f"events/s {result['events_per_s']:,.0f} · peak RSS {peak_rss_mib:,.0f} MiB "
        f"(largest worker process {worker_rss_mib:,.0f} MiB) · "
        f"parquet {result['parquet_mib']:,.0f} MiB → {args.out}"
    )


def side_by_side(rounds: int, runs: dict[str, Callable[[], tuple[int, float]]]) -> float:
    """Alternating rounds of each run (``() -> (events, seconds)``); the first run's speed over
    the second's."""
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            events, seconds = run()
            speeds[name].append(events / seconds)
            print(f"{name}: {events:,} events, {speeds[name][-1]:,.0f} events/s")
    first, second = speeds.values()
    return sum(first) / sum(second)


def compare_pool(args: argparse.Namespace) -> None:
    """Side by side in one run: events/s with the pool and without."""

    def run(pool: int) -> tuple[int, float]:
        config = SimConfig(
            n_users=args.users, n_items=args.items, n_days=args.days, seed=args.seed, pool_size=pool
        )
        with tempfile.TemporaryDirectory() as tmp:
            summary = Simulator(config).run(tmp, progress=False)
        return summary.events, summary.seconds

    runs = {"with the pool": lambda: run(SimConfig().pool_size), "without": lambda: run(0)}
    ratio = side_by_side(args.compare_pool, runs)
    print(f"the pool's speed: {ratio:.2f}x of the simulator without it")


RUN_ONE = """
import sys, tempfile
from model.data.simulate import SimConfig, Simulator
users, items, days, seed = map(int, sys.argv[1:])
with tempfile.TemporaryDirectory() as tmp:
    s = Simulator(SimConfig(n_users=users, n_items=items, n_days=days, seed=seed)).run(
        tmp, progress=False
    )
print(s.events, s.seconds)
"""


def compare_rev(args: argparse.Namespace, rev: str, rounds: int) -> None:
    """Side by side in one run: this tree's simulator against git revision ``rev``'s, each
    round a fresh process of each."""
    root = Path(__file__).resolve().parents[1]
    sizes = [str(v) for v in (args.users, args.items, args.days, args.seed)]

    def run(where: Path) -> tuple[int, float]:
        out = subprocess.run(
            [sys.executable, "-c", RUN_ONE, *sizes],
            cwd=where,
            env={**os.environ, "PYTHONPATH": str(where)},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        return int(out[-2]), float(out[-1])

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "rev"
        subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
        try:
            ratio = side_by_side(rounds, {"this tree": lambda: run(root), rev: lambda: run(tree)})
        finally:
            subprocess.run(
                ["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )
    print(f"this tree's simulator: {ratio:.2f}x the speed of {rev}'s")


if __name__ == "__main__":
    main()
