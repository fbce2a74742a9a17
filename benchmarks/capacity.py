"""Capacity on paper for a large deployment, each line computed from a per-unit figure measured
here (docs/operations.md, "Scaling out").

Measured on this machine, in one run:

* **Redis bytes per user vector** at ``--dim`` (256): ``--sample`` random vectors written with the
  store's own key layout (``PlainKeys``, ``argus:uv:<version>:<user>``) into a fresh real
  ``redis-server``; ``used_memory`` before and after;
* **Redis bytes per live-history event**: ``--sample`` users' capped lists (``RedisHistory``);
* **HNSW bytes per item** at ``--dim``: resident memory of an ``ItemIndex`` (M=16) over
  ``--items-sample`` simulator item vectors, as ``benchmarks/ann.py`` measures it;
* **FLOPs per event** of ``argus-1b`` at ``--max-len``: PyTorch's FLOP counter over the
  backbone's forward (the export) and forward + backward (pretraining), on the ``meta`` device.

Not measurable here (no GPU): the GPU's sustained throughput. It enters as ``--gpu-tflops`` (H100
SXM dense bf16: 989) times an assumed ``--mfu`` (model FLOPs utilisation, 0.4), both stated in
the output; a GPU run would replace them with a measured events/s.

    .venv/bin/python -m benchmarks.capacity [--users 100000000 --items 10000000]

Writes ``runs/bench/capacity.json`` and ``capacity.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch
from torch.utils.flop_counter import FlopCounterMode

from argus.servers import RedisServer
from benchmarks.ann import catalog_vectors, rss_bytes
from index.hnsw import ItemIndex
from index.store import PlainKeys, RedisHistory
from model.argus import Argus, preset
from model.contract import HISTORY_EVENT

ROOT = Path(__file__).resolve().parents[1]


def redis_bytes(args: argparse.Namespace) -> dict[str, float]:
    """Redis memory per user vector (the service's key layout) and per live-history event."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            client = redis.Redis.from_url(server.url)
            before = client.info("memory")["used_memory"]
            users = np.arange(10**9, 10**9 + args.sample, dtype=np.int64)
            layout = PlainKeys()
            for begin in range(0, len(users), 4096):
                part = users[begin : begin + 4096]
                vectors = rng.standard_normal((len(part), args.dim)).astype("<f4")
                pipe = client.pipeline(transaction=False)
                layout.write(pipe, "20261124T000000Z-abcdef", part, [v.tobytes() for v in vectors])
                pipe.execute()
            after = client.info("memory")["used_memory"]
            history = RedisHistory(client, cap=args.history_events, ttl_s=86_400)
            events = np.zeros(args.history_events, dtype=HISTORY_EVENT)
            n_history = min(args.sample, 20_000)
            for user in users[:n_history].tolist():
                history.append(user, events)
            full = client.info("memory")["used_memory"]
        finally:
            server.stop()
    return {
        "bytes_per_vector": (after - before) / args.sample,
        "raw_bytes_per_vector": 4 * args.dim,
        "bytes_per_history_event": (full - after) / (n_history * args.history_events),
    }


def hnsw_bytes(args: argparse.Namespace) -> dict[str, float]:
    items, _ = catalog_vectors(args.items_sample, args.dim, 16, 200, 1, 0)
    before = rss_bytes()
    index = ItemIndex.build(items.astype(np.float32), m=16, ef_construction=200, seed=0)
    per_item = (rss_bytes() - before) / args.items_sample
    del index
    return {"bytes_per_item": per_item, "raw_bytes_per_item": 4 * args.dim}


def flops_per_event(name: str, max_len: int) -> dict[str, float]:
    """Forward and forward + backward FLOPs of the backbone per event at ``max_len``."""
    with torch.device("meta"):
        model = Argus(preset(name))
        ints = ("item_id", "artist_id", "timestamp", "source")
        batch = {key: torch.zeros(1, max_len, dtype=torch.long) for key in ints}
        batch["played_ratio"] = torch.zeros(1, max_len)
        batch["liked"] = torch.zeros(1, max_len, dtype=torch.bool)
        batch["disliked"] = torch.zeros(1, max_len, dtype=torch.bool)
        with FlopCounterMode(display=False) as forward:
            model(batch)
        with FlopCounterMode(display=False) as training:
            model(batch).float().sum().backward()
    return {
        "forward": forward.get_total_flops() / max_len,
        "training": training.get_total_flops() / max_len,
    }


def plan(args: argparse.Namespace, m: dict[str, Any]) -> dict[str, float]:
    r, h, f = m["redis"], m["hnsw"], m["flops"]
    gib = 2**30
    vectors = args.users * r["bytes_per_vector"]
    # during a publish two versions coexist (the grace period): plan for both
    redis_total = 2 * vectors + args.live_users * args.history_events * r["bytes_per_history_event"]
    sustained = args.gpu_tflops * 1e12 * args.mfu
    export_tokens = args.users * args.export_events
    return {
        "redis_vectors_gib": vectors / gib,
        "redis_total_gib": redis_total / gib,
        "redis_shards": math.ceil(redis_total / (args.shard_gib * gib)),
        "hnsw_gib_per_replica": args.items * h["bytes_per_item"] / gib,
        # the ranking item vectors beside the index (memory-mapped, shared by worker processes)
        "ranking_vectors_gib": args.items * 4 * args.dim / gib,
        "export_gpu_hours": export_tokens * f["forward"] / sustained / 3600,
        "pretrain_gpu_days": args.train_events * f["training"] / sustained / 86_400,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000_000)
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=256, help="floats per stored user vector")
    parser.add_argument("--preset", default="argus-1b")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--export-events", type=int, default=2048, help="events per user export")
    parser.add_argument("--live-users", type=int, default=10_000_000, help="with a live history")
    parser.add_argument("--history-events", type=int, default=256, help="per live history")
    parser.add_argument("--train-events", type=float, default=1e11, help="pretraining events")
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="peak (H100 bf16 dense)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed utilisation of the peak")
    parser.add_argument("--shard-gib", type=float, default=25.0, help="memory per Redis shard")
    parser.add_argument("--sample", type=int, default=200_000, help="vectors written to Redis")
    parser.add_argument("--items-sample", type=int, default=100_000, help="items in the index")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args()

    measured = {
        "redis": redis_bytes(args),
        "hnsw": hnsw_bytes(args),
        "flops": flops_per_event(args.preset, args.max_len),
    }
    planned = plan(args, measured)
    result = {
        "setup": vars(args) | {"out": str(args.out)},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "measured": measured,
        "plan": planned,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(args, measured, planned)
    (args.out / "capacity.md").write_text(table)
    print(table)


def markdown(args: argparse.Namespace, m: dict[str, Any], p: dict[str, float]) -> str:
    r, h, f = m["redis"], m["hnsw"], m["flops"]
    sustained = f"{args.gpu_tflops:.0f} TFLOP/s x MFU {args.mfu:.2f} (assumed, not measured)"
    rows = [
        (
            f"Redis: {args.users:,} user vectors x {args.dim}",
            f"{r['bytes_per_vector']:,.0f} B per vector (raw {r['raw_bytes_per_vector']} B)",
            f"{p['redis_vectors_gib']:,.0f} GiB per version; with two versions during a "
            f"publish and {args.live_users:,} live histories of {args.history_events} events "
            f"({r['bytes_per_history_event']:.1f} B per event): {p['redis_total_gib']:,.0f} GiB"
            f" = **{p['redis_shards']} shards** of {args.shard_gib:.0f} GiB",
        ),
        (
            f"HNSW RAM per replica: {args.items:,} items x {args.dim} (M=16)",
            f"{h['bytes_per_item']:,.0f} B per item (raw {h['raw_bytes_per_item']} B)",
            f"**{p['hnsw_gib_per_replica']:,.1f} GiB** of HNSW per worker process, plus "
            f"{p['ranking_vectors_gib']:,.1f} GiB of ranking item vectors per replica "
            "(memory-mapped, shared by its workers)",
        ),
        (
            f"daily export: {args.users:,} users x {args.export_events} events, {args.preset}",
            f"{f['forward'] / 1e9:.2f} GFLOP per event forward (max_len {args.max_len})",
            f"**{p['export_gpu_hours']:,.0f} GPU-hours** at {sustained} (the export re-encodes "
            f"every user; only those active since the last one, say 10% a day, would take "
            f"{p['export_gpu_hours'] / 10:,.0f})",
        ),
        (
            f"pretraining: {args.train_events:.0e} events, {args.preset}",
            f"{f['training'] / 1e9:.2f} GFLOP per event forward + backward",
            f"**{p['pretrain_gpu_days']:,.0f} GPU-days** at {sustained}",
        ),
    ]
    lines = ["| what | per unit (measured here) | total |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
