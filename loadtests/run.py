"""Headless locust run with pass/fail thresholds: writes locust's CSV and HTML reports and exits
non-zero when the p99 latency or the failure ratio (over all requests) breaks its threshold.

    .venv/bin/python loadtests/run.py --host http://127.0.0.1:8000 --users 20 --spawn-rate 10 \\
        --duration 2m --max-p99-ms 250 --max-fail-ratio 0.001 [--bundle bundles/demo/<version>]

Writes ``OUT/locust_stats.csv`` (and the other CSVs) and ``OUT/locust.html``; prints one summary
line: requests, throughput, p50/p99, failures, verdict.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def aggregated(stats_csv: Path) -> dict[str, float]:
    """The ``Aggregated`` row of locust's stats CSV: requests, failures, req/s, p50, p99 (ms)."""
    with stats_csv.open() as file:
        for row in csv.DictReader(file):
            if row["Name"] == "Aggregated":
                return {
                    "requests": float(row["Request Count"]),
                    "failures": float(row["Failure Count"]),
                    "rps": float(row["Requests/s"]),
                    "p50_ms": float(row["50%"]) if row["50%"] != "N/A" else float("nan"),
                    "p99_ms": float(row["99%"]) if row["99%"] != "N/A" else float("nan"),
                }
    raise ValueError(f"{stats_csv}: no Aggregated row")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--duration", default="1m", help="locust --run-time: 20s, 2m, 1h")
    parser.add_argument("--max-p99-ms", type=float, default=500.0)
    parser.add_argument("--max-fail-ratio", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=Path("runs/loadtest"))
    parser.add_argument("--bundle", default="", help="draw real user and item ids from it")
    parser.add_argument("--realtime-share", type=float, default=0.1)
    parser.add_argument("--processes", type=int, default=1, help="locust worker processes")
    args, extra = parser.parse_known_args(argv)  # anything else goes to locust as is

    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "locust"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        args.host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.duration,
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--realtime-share",
        str(args.realtime_share),
        *extra,
    ]
    if args.processes > 1:
        command += ["--processes", str(args.processes)]
    if args.bundle:
        command += ["--bundle", args.bundle]
    locust = subprocess.run(command)
    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.is_file():
        print(f"loadtest: locust wrote no statistics (exit code {locust.returncode})")
        return 2
    s = aggregated(stats_csv)
    ratio = s["failures"] / max(s["requests"], 1.0)
    problems = []
    if s["requests"] == 0:
        problems.append("no requests were made")
    if ratio > args.max_fail_ratio:
        problems.append(f"failure ratio {ratio:.4f} > {args.max_fail_ratio}")
    if not s["p99_ms"] <= args.max_p99_ms:
        problems.append(f"p99 {s['p99_ms']:.0f} ms > {args.max_p99_ms:g} ms")
    verdict = "FAIL: " + "; ".join(problems) if problems else "PASS"
    print(
        f"loadtest: {s['requests']:,.0f} requests in {args.duration} at {s['rps']:,.1f} req/s, "
        f"p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, {s['failures']:,.0f} failures "
        f"({ratio:.2%}), {args.users} users -> {prefix}_stats.csv, {prefix}.html: {verdict}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
