"""Publishing user vectors to Redis: vectors/s, Redis memory per vector, read latency, by layout,
on one server and on a three-master Redis Cluster side by side.

Real ``redis-server`` processes on loopback (started here, no persistence): one server, and a
cluster of three (``redis-cli --cluster create``). Each layout of ``index/store.py`` ("hash":
users hashed into buckets of ~128; "plain": one key per user) publishes the same ``--users``
vectors with the same code path as ``argus publish`` (chunks written, then the resume marker
advanced), alternating targets and layouts over ``--rounds`` to spread the machine's noise.
Memory per vector is ``used_memory`` growth (summed over the cluster's masters) divided by the
number of vectors; reads are ``RedisStore.get`` of ``--batch`` random users (on the cluster,
one MGET per slot).

    .venv/bin/python -m benchmarks.publish [--users 1000000] [--dim 128]

Writes ``runs/bench/publish.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.cluster import RedisCluster

from argus.servers import RedisClusterServers, RedisServer
from index.bundle import Bundle
from index.store import LAYOUTS, RedisClient, RedisStore, publish, redis_client

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("single", "cluster")  # one redis-server; a three-master Redis Cluster


def fake_bundle(users: int, dim: int, seed: int) -> Bundle:
    """A bundle holding only what publish reads: sorted sparse user ids and their vectors."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10 * users, users, replace=False)).astype(np.int64) + 1
    vectors = rng.standard_normal((users, dim), dtype=np.float32)
    # user vectors of width dim: publish stores them whatever the split between the two spaces
    manifest = {"version": f"20260101T0000Z-{seed:06x}", "dim": dim, "retrieval_dim": 0}
    empty = np.empty(0, np.int64)
    return Bundle(
        path=Path("."),
        manifest=manifest,
        item_ids=empty,
        item_artist_ids=empty,
        item_vectors=np.empty((0, dim), np.float32),
        retrieval_item_vectors=np.empty((0, 0), np.float32),
        user_ids=ids,
        user_vectors=vectors,
        popular=empty,
        index=None,
    )


def used_memory(client: RedisClient) -> int:
    if isinstance(client, RedisCluster):
        nodes = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return sum(int(info["used_memory"]) for info in nodes.values())
    return int(client.info("memory")["used_memory"])


def flush(client: RedisClient) -> None:
    if isinstance(client, RedisCluster):
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushall()


def read_latencies(store: RedisStore, bundle: Bundle, batch: int, n: int) -> list[float]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        ids = rng.choice(bundle.user_ids, batch, replace=False)
        began = time.perf_counter()
        _, found = store.get(bundle.version, ids)
        out.append(time.perf_counter() - began)
        assert found.all()
    return out


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=4_096)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="users per read")
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    return parser.parse_args()


def one_run(
    args: argparse.Namespace, bundle: Bundle, client: RedisClient, layout: str
) -> dict[str, float]:
    """Publish ``bundle`` into an empty Redis with ``layout``; its speed, memory and reads."""
    flush(client)
    before = used_memory(client)
    summary = publish(bundle, client, layout=layout, chunk=args.chunk, grace_s=0, progress=False)
    memory = (used_memory(client) - before) / args.users
    single = read_latencies(RedisStore(client), bundle, 1, args.reads)
    batched = read_latencies(RedisStore(client), bundle, args.batch, args.reads)
    return {
        "vectors_per_s": summary.vectors_per_s,
        "elapsed_s": summary.elapsed_s,
        "bytes_per_vector": memory,
        "read_1_p50_ms": 1e3 * statistics.median(single),
        f"read_{args.batch}_p50_ms": 1e3 * statistics.median(batched),
        f"read_{args.batch}_p99_ms": 1e3 * float(np.quantile(batched, 0.99)),
    }


def main() -> None:
    args = arguments()
    bundle = fake_bundle(args.users, args.dim, seed=7)
    rows = [(target, layout) for target in TARGETS for layout in LAYOUTS]
    runs: dict[str, list[dict]] = {f"{t} {layout}": [] for t, layout in rows}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "single")
        server.workdir.mkdir()
        cluster = RedisClusterServers(Path(tmp) / "cluster")
        server.start()
        cluster.start()
        try:
            clients: dict[str, RedisClient] = {
                "single": redis_client(server.url),
                "cluster": redis_client(cluster.url, cluster=True),
            }
            version = redis.Redis.from_url(server.url).info("server")["redis_version"]
            for round_ in range(args.rounds):
                for target, layout in rows:
                    name = f"{target} {layout}"
                    runs[name].append(one_run(args, bundle, clients[target], layout))
                    print(f"round {round_ + 1} {name}: {runs[name][-1]}", flush=True)
        finally:
            server.stop()
            cluster.stop()

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    keys = list(next(iter(runs.values()))[0])
    table = {name: {key: median(name, key) for key in keys} for name in runs}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "redis": version,
        "users": args.users,
        "dim": args.dim,
        "raw_vector_bytes": 4 * args.dim,
        "chunk": args.chunk,
        "rounds": args.rounds,
        "median": table,
        "runs": runs,
        "hash_vs_plain_speed": table["single hash"]["vectors_per_s"]
        / table["single plain"]["vectors_per_s"],
        "hash_vs_plain_memory": table["single hash"]["bytes_per_vector"]
        / table["single plain"]["bytes_per_vector"],
        "cluster_vs_single_speed": table["cluster plain"]["vectors_per_s"]
        / table["single plain"]["vectors_per_s"],
        "goal_vectors_per_s": 200_000,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "publish.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(args, result)
    (args.out / "publish.md").write_text(text)
    print(text, end="")


def markdown(args: argparse.Namespace, result: dict[str, Any]) -> str:
    lines = [
        f"{args.users:,} user vectors x {args.dim} (raw {4 * args.dim} B) to Redis "
        f"{result['redis']} on loopback, {result['machine']}; medians of {args.rounds} "
        "alternating rounds.",
        "",
        "| Redis, layout | vectors/s | Redis bytes/vector | read 1 user p50 | "
        f"read {args.batch} users p50 / p99 |",
        "|---|---|---|---|---|",
    ]
    for layout, row in result["median"].items():
        lines.append(
            f"| {layout} | {row['vectors_per_s']:,.0f} | {row['bytes_per_vector']:.0f} | "
            f"{row['read_1_p50_ms']:.2f} ms | {row[f'read_{args.batch}_p50_ms']:.2f} / "
            f"{row[f'read_{args.batch}_p99_ms']:.2f} ms |"
        )
    lines += [
        "",
        f"hash / plain (one server): speed {result['hash_vs_plain_speed']:.2f}x, "
        f"memory {result['hash_vs_plain_memory']:.2f}x; cluster / one server (plain): speed "
        f"{result['cluster_vs_single_speed']:.2f}x (goal: >= 200,000 vectors/s)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
