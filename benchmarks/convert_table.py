"""``argus convert table`` on a large generated log: time and peak memory.

    .venv/bin/python -m benchmarks.convert_table [--rows 10000000]

Writes a CSV log a company might export (text user ids, integer item ids, millisecond times, play
and track lengths, a like flag), converts it in a child process and reports its wall time and
peak RSS (``getrusage`` of the child) beside the input's size. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]


def write_log(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` events of 1% as many users, in chunks (the generator stays small too)."""
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    with pacsv.CSVWriter(path, _schema()) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            users = rng.integers(0, max(1, rows // 100), n)
            length = rng.integers(60_000, 400_000, n)
            writer.write_table(
                pa.table(
                    {
                        "account": pa.array([f"acct-{u:08d}" for u in users.tolist()]),
                        "track": rng.integers(0, 1_000_000, n),
                        "ts_ms": 1_700_000_000_000 + rng.integers(0, 30 * 86_400_000, n),
                        "play_ms": (length * rng.random(n)).astype(np.int64),
                        "length_ms": length,
                        "is_like": rng.random(n) < 0.05,
                    },
                    schema=_schema(),
                )
            )


def _schema() -> pa.Schema:
    fields: list[Any] = [
        pa.field("account", pa.string()),
        pa.field("track", pa.int64()),
        pa.field("ts_ms", pa.int64()),
        pa.field("play_ms", pa.int64()),
        pa.field("length_ms", pa.int64()),
        pa.field("is_like", pa.bool_()),
    ]
    return pa.schema(fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--work", type=Path, default=ROOT / "runs/bench/convert_table")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "log.csv"
    if not log.exists():
        began = time.perf_counter()
        write_log(log, args.rows)
        print(f"wrote {args.rows:,} rows in {time.perf_counter() - began:.0f} s -> {log}")
    maps = [
        "user_id=account",
        "item_id=track",
        "timestamp=ts_ms:ms",
        "source=1",
        "played_ratio=play_ms/length_ms",
        "liked=is_like",
    ]
    command = [sys.executable, "-m", "argus", "convert", "table", str(log), str(args.work / "out")]
    command += [part for m in maps for part in ("--map", m)]
    began = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.perf_counter() - began
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "rows": args.rows,
        "csv_mib": round(log.stat().st_size / 2**20),
        "seconds": round(seconds, 1),
        "rows_per_s": round(args.rows / seconds),
        "peak_rss_mib": round(peak_mib),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
    }
    print(
        f"convert table: {args.rows:,} rows ({result['csv_mib']:,} MiB of CSV) in "
        f"{seconds:.0f} s ({result['rows_per_s']:,} rows/s), peak RSS {peak_mib:,.0f} MiB"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
