"""Reliability under load: a soak, a Redis outage, a slow Redis, bundles published under load,
and schemathesis fuzzing — a real ``argus serve`` (uvicorn, one worker), a real ``redis-server``
and a real load generator (locust, ``benchmarks/chaos_load.py``), in one run.

1. **Bundles**: three bundles of the same catalog size with different vectors (seeds 0, 1, 2:
   simulator latents, an untrained ``argus-3m`` encoder, as in ``benchmarks/serve.py``); the
   first is published.
2. **Service**: ``argus serve`` reading Redis through a TCP proxy (``argus.servers.SlowProxy``)
   that passes bytes straight through until the slow phase, with an events token, reload and
   health checks every second.
3. **Maximum**: locust closed loop (``--locust-users`` users, no wait) for ``--max-s``; the
   load is then an open rate of ``--load`` (70%) of it, for the whole timeline:

   * warm-up ``--warmup-s``, then the **soak** ``--soak-s``: failed requests, p50/p99, and the
     service's RSS growth from the end of the warm-up to the end of the soak;
   * **Redis killed** for ``--outage-s``: 5xx, the share of degraded answers while it is down;
   * **Redis restarted empty** (as a server without persistence comes back: it answers PING
     but holds no version) for ``--empty-s``: seconds until answers say ``degraded``, popular
     answers not flagged after the first 1.5 s (goal 0); then the version is republished
     (``argus publish``, its own process): seconds from its end to the first ``stored`` answer;
   * **Redis slowed** to 2 s per reply for ``--outage-s`` (the proxy holds every reply): 5xx,
     p99 during the slow period (goal: the Redis timeout + 20 ms);
   * **publishes**: another bundle published (``argus publish``, its own process) every
     ``--publish-every-s`` (cycling the three) for ``--publish-s``: failures, and responses
     mixing versions — every ``stored`` ``/score`` of the whole run is recomputed from the
     vectors of the version it names.
4. **Fuzz**: schemathesis (``st run``, every check) against the live service's
   ``/openapi.json``: cases generated, failures.

    .venv/bin/python -m benchmarks.chaos                    # about 17 minutes
    .venv/bin/python -m benchmarks.chaos --soak-s 60 --fuzz-examples 50   # a short run

Writes ``runs/bench/chaos.json``, ``chaos.md`` and ``chaos.png`` (latency and sources over time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from argus.servers import RedisServer, SlowProxy, free_port, fuzz
from benchmarks.serve import bench_bundle
from index.bundle import Bundle, rows_of
from index.store import publish
from loadtests.run import aggregated
from service.cli import wait_ready

ROOT = Path(__file__).resolve().parents[1]
LOAD = Path(__file__).with_name("chaos_load.py")
REDIS_TIMEOUT_S = 0.1  # the service's ARGUS_REDIS_TIMEOUT_S in this run


# -- the pieces ----------------------------------------------------------------------------------


def bundles(args: argparse.Namespace, root: Path) -> list[Path]:
    """Three bundles of one size with different vectors, all under ``root``."""
    out = []
    for seed in range(3):
        made = bench_bundle(
            argparse.Namespace(
                work=args.work / f"seed{seed}",
                items=args.items,
                users=args.users,
                dim=args.dim,
                seed=seed,
            )
        )
        target = root / made.name
        if not target.exists():
            shutil.copytree(made, target)
        out.append(target)
    return out


def serve(
    bundle_root: Path, redis_url: str, token: str, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {
        "ARGUS_BUNDLES": str(bundle_root),
        "ARGUS_REDIS_URL": redis_url,
        "ARGUS_REDIS_TIMEOUT_S": str(REDIS_TIMEOUT_S),
        "ARGUS_RELOAD_INTERVAL_S": "1",
        "ARGUS_EVENTS_TOKEN": token,
    }
    command = [sys.executable, "-m", "argus", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, timeout_s=300)
    return process, url


def locust(
    url: str, bundle: Path, out: Path, *, users: int, seconds: float, rate: float = 0.0
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOAD),
        "--headless",
        "--host",
        url,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{int(seconds)}s",
        "--stop-timeout",
        "5",
        "--only-summary",
        "--csv",
        str(out),
        "--bundle",
        str(bundle),
        "--rate",
        str(rate),
        "--record",
        f"{out}.ndjson",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def publish_cli(bundle: Path, url: str) -> None:
    """``argus publish`` in its own process, as the daily job runs it (not in this process,
    which also runs the proxy: a publish holding its GIL would delay the proxied replies)."""
    command = [sys.executable, "-m", "argus", "publish", "--bundle", str(bundle)]
    command += ["--redis-url", url, "--grace", "1h", "--quiet"]
    subprocess.run(command, check=True, capture_output=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Timeline:
    """What happened when (epoch seconds), and the service's RSS every second."""

    marks: dict[str, float] = field(default_factory=dict)
    rss: list[tuple[float, float]] = field(default_factory=list)
    published: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()
        print(f"  {time.strftime('%H:%M:%S')} {name}", flush=True)


@contextmanager
def sampling(pid: int, timeline: Timeline) -> Iterator[None]:
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            timeline.rss.append((time.time(), rss_mb(pid)))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# -- the analysis --------------------------------------------------------------------------------


def window(records: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    return [r for r in records if start <= r["t"] < end]


def latency(records: list[dict[str, Any]]) -> dict[str, float]:
    ms = np.array([r["ms"] for r in records]) if records else np.zeros(1)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [r for r in records if r["status"] == 200]
    return {
        "requests": len(records),
        "failed": sum(r["status"] != 200 for r in records),
        "server_errors": sum(r["status"] >= 500 or r["status"] == 0 for r in records),
        "degraded_share": sum(bool(r.get("degraded")) for r in answered) / max(len(answered), 1),
        **latency(records),
    }


def mixed_versions(records: list[dict[str, Any]], by_version: dict[str, Bundle]) -> dict[str, Any]:
    """Stored ``/score`` answers whose scores are not that version's dot products."""
    checked = mixed = 0
    for r in records:
        if r.get("scores") is None:
            continue
        bundle = by_version[r["model_version"]]
        (row,), (found,) = rows_of(bundle.user_ids, np.array([r["user"]]))
        rows, known = rows_of(bundle.item_ids, np.array(r["items"]))
        expected = bundle.item_vectors[rows] @ bundle.ranking_part(bundle.user_vectors[row])
        got = np.array([np.nan if s is None else s for s in r["scores"]], dtype=np.float64)
        checked += 1
        ok = found and np.allclose(got[known], expected[known], rtol=1e-4, atol=1e-4)
        mixed += not ok
    return {"checked": checked, "mixed": mixed}


def analyse(
    records: list[dict[str, Any]], timeline: Timeline, by_version: dict[str, Bundle]
) -> dict[str, Any]:
    m = timeline.marks
    soak = window(records, m["soak"], m["kill"])
    rss = [(t, v) for t, v in timeline.rss if m["soak"] <= t <= m["kill"]]
    first, last = rss[0][1], rss[-1][1]
    down = window(records, m["kill"], m["restart"])
    empty = window(records, m["restart"], m["republish"])
    flagged = [r["t"] - m["restart"] for r in empty if r.get("degraded")]
    # what the empty Redis answered after the first second and a half: a vanished version has
    # then been noticed, so every answer not from a live history should say degraded
    late = [r for r in empty if r["t"] - m["restart"] >= 1.5]
    silent = [r for r in late if r.get("source") == "popular" and not r.get("degraded")]
    after = [r for r in window(records, m["republished"], m["slow"]) if r.get("source") == "stored"]
    recovered = (after[0]["t"] - m["republished"]) if after else float("inf")
    slow = window(records, m["slow"], m["slow end"])
    published = window(records, m["publish"], m["end"])
    return {
        "soak": counts(soak)
        | {
            "seconds": m["kill"] - m["soak"],
            "rps": len(soak) / max(m["kill"] - m["soak"], 1e-9),
            "rss_start_mb": first,
            "rss_end_mb": last,
            "rss_growth": (last - first) / first,
        },
        "redis_killed": counts(window(records, m["kill"], m["restart"]))
        | {"degraded_share_while_down": counts(down)["degraded_share"]},
        "redis_empty": counts(empty)
        | {
            "seconds_to_degraded": min(flagged) if flagged else float("inf"),
            "silent_popular_after_1_5_s": len(silent),
            "answers_after_1_5_s": len(late),
            "seconds_to_stored_after_republish": recovered,
        },
        "redis_slow": counts(slow),
        "publishes": counts(published)
        | {
            "published": len(timeline.published),
            "versions_answered": sorted({str(r.get("model_version")) for r in published}),
        },
        "whole_run": counts(records) | mixed_versions(records, by_version),
    }


# -- the run -------------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--locust-users", type=int, default=32)
    parser.add_argument("--max-s", type=float, default=20.0, help="the closed-loop maximum run")
    parser.add_argument("--load", type=float, default=0.7, help="share of the maximum to offer")
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--soak-s", type=float, default=600.0)
    parser.add_argument("--outage-s", type=float, default=30.0, help="Redis down, Redis slow")
    parser.add_argument("--settle-s", type=float, default=30.0, help="after each fault")
    parser.add_argument(
        "--empty-s", type=float, default=15.0, help="Redis up but empty before the republish"
    )
    parser.add_argument("--publish-s", type=float, default=120.0)
    parser.add_argument("--publish-every-s", type=float, default=30.0)
    parser.add_argument("--fuzz-examples", type=int, default=200)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "chaos")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    began = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    token = "chaos-" + os.urandom(8).hex()

    with ExitStack() as stack:
        root = args.work / "served"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        paths = bundles(args, root)
        opened = [Bundle.open(p, with_index=False) for p in paths]
        by_version = {b.version: b for b in opened}
        (args.work / "redis").mkdir(exist_ok=True)
        server = RedisServer(args.work / "redis")
        server.start()
        stack.callback(server.stop)
        client = redis.Redis.from_url(server.url)
        publish(opened[0], client, progress=False, grace_s=3600)
        proxy = SlowProxy(server.port)
        stack.callback(proxy.close)
        process, url = serve(root, proxy.url, token, args.work / "serve.log")
        stack.callback(process.wait, 30)
        stack.callback(process.send_signal, signal.SIGTERM)
        print(f"serving {len(paths)} bundles of {args.items:,} items at {url}", flush=True)

        out = args.work / "max"
        for stale in args.work.glob("*.ndjson"):
            stale.unlink()
        locust(url, paths[0], out, users=args.locust_users, seconds=args.max_s).wait()
        maximum = aggregated(Path(f"{out}_stats.csv"))["rps"]
        rate = args.load * maximum
        print(f"maximum {maximum:,.0f} req/s (closed loop); offering {rate:,.0f} req/s", flush=True)

        total = args.warmup_s + args.soak_s + 2 * (args.outage_s + args.settle_s) + args.publish_s
        total += args.empty_s
        out = args.work / "load"
        load = locust(url, paths[0], out, users=args.locust_users, seconds=total + 15, rate=rate)
        record = Path(f"{out}.ndjson")
        while not (record.exists() and record.stat().st_size):
            time.sleep(0.1)
        timeline = Timeline()
        with sampling(process.pid, timeline):
            faults(args, server, proxy, paths, timeline)
        load.wait()
        records = [orjson.loads(line) for line in record.read_bytes().splitlines() if line]
        results = analyse(records, timeline, by_version)
        results["fuzz"] = fuzz(url, examples=args.fuzz_examples, token=token)

    results["setup"] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "items": args.items,
        "users": args.users,
        "dim": args.dim,
        "locust_users": args.locust_users,
        "max_rps": maximum,
        "offered_rps": rate,
        "redis_timeout_s": REDIS_TIMEOUT_S,
        "publish_every_s": args.publish_every_s,
        "seconds": time.perf_counter() - began,
    }
    (args.out / "chaos.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown(results)
    (args.out / "chaos.md").write_text(table)
    plot(records, timeline, args.out / "chaos.png")
    print("\n" + table)
    print(
        f"chaos: {len(records):,} requests at {rate:,.0f} req/s offered "
        f"({maximum:,.0f} max), {results['fuzz']['cases']:,} fuzz cases, "
        f"{time.perf_counter() - began:.0f} s -> {args.out / 'chaos.md'}"
    )


def faults(
    args: argparse.Namespace,
    server: RedisServer,
    proxy: SlowProxy,
    paths: list[Path],
    timeline: Timeline,
) -> None:
    """The run's script under load, each step marked on ``timeline``: warm-up and soak; Redis
    killed, restarted empty and republished; Redis slow; then a publish every
    ``--publish-every-s``."""
    timeline.mark("start")
    time.sleep(args.warmup_s)
    timeline.mark("soak")
    time.sleep(args.soak_s)
    timeline.mark("kill")
    server.stop()
    time.sleep(args.outage_s)
    server.start()  # without persistence: it comes back empty, and answers PING
    timeline.mark("restart")
    time.sleep(args.empty_s)
    timeline.mark("republish")
    publish_cli(paths[0], server.url)  # its own process: seconds on a busy machine
    timeline.mark("republished")
    time.sleep(args.settle_s)
    timeline.mark("slow")
    proxy.delay_s = 2.0
    time.sleep(args.outage_s)
    proxy.delay_s = 0.0
    timeline.mark("slow end")
    time.sleep(args.settle_s)
    timeline.mark("publish")
    next_bundle = 1
    while time.time() < timeline.marks["publish"] + args.publish_s:
        path = paths[next_bundle % len(paths)]
        publish_cli(path, server.url)
        timeline.published.append((time.time(), path.name))
        next_bundle += 1
        time.sleep(args.publish_every_s)
    timeline.mark("end")


def markdown(r: dict[str, Any]) -> str:
    s, k, w, p, z = r["soak"], r["redis_killed"], r["redis_slow"], r["publishes"], r["fuzz"]
    e = r["redis_empty"]
    goal_p99 = 1e3 * r["setup"]["redis_timeout_s"] + 20
    rows = [
        ("soak: failed requests", f"{s['failed']} of {s['requests']:,}", "0"),
        (
            "soak: RSS growth after warm-up",
            f"{100 * s['rss_growth']:+.2f}% ({s['rss_start_mb']:.0f} → {s['rss_end_mb']:.0f} MB)",
            "< 5%",
        ),
        ("soak: p50 / p99", f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} ms", ""),
        ("Redis killed: 5xx", f"{k['server_errors']} of {k['requests']:,}", "0"),
        (
            "Redis killed: degraded answers while down",
            f"{100 * k['degraded_share_while_down']:.1f}%",
            "",
        ),
        ("Redis restarted empty: 5xx", f"{e['server_errors']} of {e['requests']:,}", "0"),
        (
            "Redis restarted empty: seconds until answers say degraded",
            f"{e['seconds_to_degraded']:.2f}",
            "seconds",
        ),
        (
            "Redis restarted empty: popular answers not flagged, after 1.5 s",
            f"{e['silent_popular_after_1_5_s']} of {e['answers_after_1_5_s']:,}",
            "0",
        ),
        (
            "Republished: seconds from the publish's end until `stored` again",
            f"{e['seconds_to_stored_after_republish']:.2f}",
            "≤ 5",
        ),
        ("Redis slow (2 s): 5xx", f"{w['server_errors']} of {w['requests']:,}", "0"),
        (
            "Redis slow: p99 (p50)",
            f"{w['p99_ms']:.1f} ms ({w['p50_ms']:.1f} ms)",
            f"≤ {goal_p99:.0f} ms",
        ),
        ("Redis slow: degraded answers", f"{100 * w['degraded_share']:.1f}%", ""),
        (
            f"publish every {r['setup']['publish_every_s']:.0f} s: failures",
            f"{p['failed']} of {p['requests']:,}",
            "0",
        ),
        ("publish: versions answered", f"{len(p['versions_answered'])}", ""),
        (
            "responses mixing versions (every stored /score)",
            f"{r['whole_run']['mixed']} of {r['whole_run']['checked']:,}",
            "0",
        ),
        ("schemathesis: cases, failures", f"{z['cases']:,}, {z['failures']}", "≥ 1,000, 0"),
    ]
    setup = r["setup"]
    head = (
        f"{setup['machine']}; one uvicorn worker; locust {setup['locust_users']} users at "
        f"{setup['offered_rps']:,.0f} req/s (70% of the {setup['max_rps']:,.0f} req/s closed-loop "
        f"maximum); {setup['items']:,} items x {setup['dim']}, {setup['users']:,} users.\n\n"
    )
    lines = ["| measure | result | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return head + "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], timeline: Timeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = timeline.marks["start"]
    records = [r for r in records if r["t"] >= t0]
    t = np.array([r["t"] - t0 for r in records])
    ms = np.array([r["ms"] for r in records])
    degraded = np.array([bool(r.get("degraded")) for r in records])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    seconds = np.floor(t).astype(int)
    edges = np.arange(seconds.max() + 2)
    p99 = [
        np.percentile(ms[seconds == s], 99) if (seconds == s).any() else np.nan for s in edges[:-1]
    ]
    top.plot(edges[:-1], p99, lw=0.8)
    top.set_ylabel("p99 per second (ms)")
    top.set_yscale("log")
    share = np.bincount(seconds, weights=degraded, minlength=len(edges) - 1) / np.maximum(
        np.bincount(seconds, minlength=len(edges) - 1), 1
    )
    bottom.plot(edges[:-1], 100 * share, lw=0.8, color="tab:red")
    bottom.set_ylabel("degraded answers (%)")
    bottom.set_xlabel("seconds since the load started")
    for name, at in timeline.marks.items():
        for axis in (top, bottom):
            axis.axvline(at - t0, color="grey", lw=0.6, ls="--")
        top.annotate(name, (at - t0, top.get_ylim()[1]), fontsize=7, rotation=90, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
