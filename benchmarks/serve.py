"""The service under load: /candidates vs a trivial FastAPI endpoint, latency at half load,
/score with 1000 items, the runtime encoder at history 512 (argus-3m), dynamic batching.

One run, one load generator (wrk, a C program, with ``benchmarks/wrk_post.lua``), one worker
process per server. Every server is pinned to ``--server-cpus`` and wrk and Redis to
``--load-cpus`` (taskset), so the load generator never takes CPU from the server it measures.
The servers are started side by side and stay up; runs alternate between them over ``--rounds``
to spread the machine's noise, and the figures are medians.

* **Bundle**: ``--items`` (1M) item vectors x ``--dim`` (128) — the simulator's item latents with
  16 taste factors lifted to 128 dims, as in ``benchmarks/ann.py`` — and ``--users`` user
  vectors, indexed by ``argus build`` (ef_search tuned to recall@100 >= 0.95), with the ONNX user
  encoder of an untrained ``argus-3m`` with 128-wide towers (runtime cost does not depend on
  the weights). Cached under ``--work`` and reused.
* **Servers**: ``argus serve`` with the vectors published to a real ``redis-server``; the same
  with the embedded local store; the same with ``ARGUS_ENCODER_MAX_BATCH=1``; and a trivial
  ``async def`` FastAPI endpoint returning ``{"ok": true}`` on the same uvicorn settings
  (``service.cli.run_server``: uvloop, httptools, no access log).
* **Requests**: users drawn Zipf(1) from the published ones, k = 100, ``exclude_seen`` on.

Reported: throughput at saturation (``--connections`` keep-alive connections) and its ratio to
the trivial endpoint's (goal >= 0.5); p50/p99 at half the measured maximum (Poisson arrivals);
``/score`` with 1000 items (one connection; also with ``return_vectors`` as JSON numbers and as
base64 float32); the realtime path with a 512-event history in the
request (one connection); throughput at 16 concurrent realtime requests with the dynamic
batcher (max_batch 32) vs ``max_batch = 1``. The service's own per-stage histograms are
scraped around each run to show where the time goes.

    .venv/bin/python -m benchmarks.serve [--items 1000000] [--rounds 2]

Needs ``wrk`` (``apt-get install -y wrk``; ``make bench`` installs it). Writes
``runs/bench/serve.json``, ``.md`` and ``serve.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from argus.servers import RedisServer, free_port
from benchmarks.ann import catalog_vectors
from index.bundle import Bundle, HnswParams, build, list_versions, read_manifest
from index.store import publish
from model.contract import DAY, ENCODER_FILE, STEP_FILE
from service.cli import run_server, wait_ready

ROOT = Path(__file__).resolve().parents[1]
WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
TRIVIAL = "trivial"


def trivial_app() -> Any:
    """The baseline: the cheapest async FastAPI endpoint, on the same server settings."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/trivial")
    async def trivial() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def floor_app(reply: bytes, search: Callable[[bytes], object] | None = None) -> Any:
    """The HTTP floor a route cannot go under: a bare ASGI app that reads each POST's body and
    answers ``reply`` (a ``/candidates`` answer's bytes), with no framework, no validation and no
    work. With ``search`` (:func:`user_search`), each POST's body goes to it first: the floor of
    a route that searches and does nothing else. ``GET /readyz`` answers too, for
    :func:`service.cli.wait_ready`."""
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while scope["method"] == "POST":
            message = await receive()
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body", False):
                if search is not None and message["type"] == "http.request":
                    search(body)
                break
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": reply})

    return app


def user_search(bundle_path: Path) -> Callable[[bytes], object]:
    """A ``/candidates`` body's search and nothing else: its user's retrieval vector, k = 100,
    the bundle's index and ``ef``, one query a call, as the bare search runs it."""
    bundle = Bundle.open(bundle_path)
    index = bundle.index
    assert index is not None
    ids, vectors = bundle.user_ids, bundle.user_vectors

    def search(body: bytes) -> object:
        row = int(np.searchsorted(ids, orjson.loads(body)["user_id"]))
        return index.search(bundle.retrieval_part(vectors[row])[None, :], 100)

    return search


# -- the bundle --------------------------------------------------------------------------------


def bench_bundle(args: argparse.Namespace) -> Path:
    """A bundle of ``args.items`` x ``args.dim`` under ``args.work`` (built once, then reused)."""
    bundles = args.work / "bundles"
    for path in reversed(list_versions(bundles)):
        manifest = read_manifest(path, verify=False)
        shape = (manifest["n_items"], manifest["n_users"], manifest["dim"])
        if shape == (args.items, args.users, args.dim) and STEP_FILE in manifest["files"]:
            print(f"reusing bundle {path}")
            return path
    import torch

    from model.argus import Argus, preset
    from model.export import export_onnx, export_step_onnx, write_shared_space

    export = args.work / "export"
    shutil.rmtree(export, ignore_errors=True)
    export.mkdir(parents=True)
    torch.manual_seed(args.seed)
    config = preset("argus-3m", tower_dim=args.dim)
    model = Argus(config).eval()
    export_onnx(model, export / ENCODER_FILE)
    export_step_onnx(model, export / STEP_FILE)
    items, users = catalog_vectors(args.items, args.dim, 16, 200, args.users, args.seed)
    # about ten items an artist, for the requests that leave out their artists' items
    artists = np.random.default_rng(args.seed).integers(0, max(1, args.items // 10), args.items)
    manifest = {
        "model_config": asdict(config),
        "n_items": args.items,
        "n_users": args.users,
        "note": "benchmarks/serve.py: untrained argus-3m encoder, simulator latents as vectors",
    }
    write_shared_space(
        export,
        item_ids=np.arange(1, args.items + 1, dtype=np.int64),
        item_artist_ids=artists,
        item_vectors=items,
        user_ids=np.arange(1, args.users + 1, dtype=np.int64),
        user_vectors=users,
        # the largest norms stand in for popularity
        popular=np.argsort(-np.linalg.norm(items, axis=1))[:1000].astype(np.int64) + 1,
        manifest=manifest,
    )
    summary = build(export, bundles, HnswParams(seed=args.seed))
    print(summary.line())
    shutil.rmtree(export)
    return Path(summary.path)


# -- request bodies ----------------------------------------------------------------------------


def zipf_users(user_ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` user ids, the r-th most active (a random order of ``user_ids``) drawn ~ 1/r."""
    weights = 1.0 / np.arange(1, len(user_ids) + 1)
    ranked = rng.permutation(user_ids)
    return ranked[rng.choice(len(ranked), n, p=weights / weights.sum())]


def history(item_ids: np.ndarray, length: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """A plausible live history of ``length`` events, oldest first."""
    now = 1_790_000_000
    times = np.sort(rng.integers(now - 30 * DAY, now, length))
    return [
        {
            "item_id": int(item),
            "timestamp": int(t),
            "source": int(rng.integers(0, 4)),
            "played_ratio": round(float(rng.random()), 3),
            "liked": bool(rng.random() < 0.05),
        }
        for item, t in zip(rng.choice(item_ids, length), times, strict=True)
    ]


UNFAMILIAR_HISTORY = 50  # events in an unfamiliar-artists request


def unfamiliar_body(bundle: Bundle, user: int, rng: np.random.Generator) -> dict[str, Any]:
    """``/candidates`` for a user whose request carries the items they played, each with its
    artist, asking for none of those artists' items (``unfamiliar="artists"``); the stored
    vector answers (``mode="offline"``), so the request costs the route and its exclusions."""
    events = history(bundle.item_ids, UNFAMILIAR_HISTORY, rng)
    rows = bundle.item_rows(np.array([e["item_id"] for e in events], dtype=np.int64))[0]
    for event, artist in zip(events, bundle.item_artist_ids[rows].tolist(), strict=True):
        event["artist_id"] = artist
    return {
        "user_id": user,
        "k": 100,
        "mode": "offline",
        "history": events,
        "unfamiliar": "artists",
    }


def write_bodies(path: Path, bodies: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(body) for body in bodies) + b"\n")
    return path


# -- servers and load --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def wait_ready(self) -> None:
        try:
            wait_ready(self.process, self.url, timeout_s=300)
        except RuntimeError as error:
            raise RuntimeError(
                f"{self.name}: {error}; its log {self.log}:\n{self.log.read_text()[-3000:]}"
            ) from None

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}{path}", orjson.dumps(body), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return dict(orjson.loads(response.read()))

    def stages(self) -> dict[str, tuple[float, float]]:
        """``stage -> (sum of seconds, count)`` of the service's stage histogram."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        out: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "argus_stage_duration_seconds":
                continue
            for sample in family.samples:
                stage = sample.labels.get("stage", "")
                if sample.name.endswith("_sum"):
                    out.setdefault(stage, [0.0, 0.0])[0] = sample.value
                elif sample.name.endswith("_count"):
                    out.setdefault(stage, [0.0, 0.0])[1] = sample.value
        return {stage: (s, c) for stage, (s, c) in out.items()}


def bundles_of(bundle_path: Path, root: Path) -> Path:
    """A bundles root at ``root`` that holds ``bundle_path`` alone (a link to it): a server
    started on the folder beside the bundle serves the newest bundle there, which may be
    another one (with another catalog and ``ef``) than the one the benchmark measures."""
    root.mkdir(parents=True, exist_ok=True)
    link = root / bundle_path.name
    if not link.exists():  # a server started again on the same root (each round's ASGI run)
        link.symlink_to(bundle_path.resolve(), target_is_directory=True)
    return root


def start_server(
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    work: Path,
    bundle_path: Path,
    name: str,
    argv: list[str],
    **env: str,
) -> Server:
    """``argv --port P`` pinned to the server CPUs, one ONNX Runtime thread, serving
    ``bundle_path`` (:func:`bundles_of`); stopped when ``stack`` closes."""
    port = free_port()
    log = work / f"{name}.log"
    environment = server_environment(args, work, bundle_path, name, **env)
    process = subprocess.Popen(
        ["taskset", "-c", args.server_cpus, *argv, "--port", str(port)],
        env=environment,
        cwd=ROOT,  # `python -m benchmarks.serve` finds the package here
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = Server(name, f"http://127.0.0.1:{port}", process, log)
    stack.callback(process.wait, 30)
    stack.callback(process.terminate)  # callbacks run last first: terminate, then wait
    return server


def server_environment(
    args: argparse.Namespace, work: Path, bundle_path: Path, name: str, **env: str
) -> dict[str, str]:
    """The environment of the server ``name``: serving ``bundle_path`` (:func:`bundles_of`),
    one ONNX Runtime and BLAS thread, and ``--server-path``'s code where it is given."""
    environment = {
        **os.environ,
        "ARGUS_BUNDLES": str(bundles_of(bundle_path, work / f"{name}-bundles")),
        "ARGUS_ENCODER_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        **env,
    }
    if args.server_path and "PYTHONPATH" not in env:  # another checkout's code
        environment["PYTHONPATH"] = str(args.server_path)
    return environment


ASGI_DRIVE = Path(__file__).with_name("asgi_drive.py")


def in_process(
    args: argparse.Namespace,
    work: Path,
    bundle_path: Path,
    bodies: Path,
    *,
    connections: int,
    seconds: float,
) -> dict[str, float]:
    """``/candidates`` with ``bodies`` through the ASGI app alone, no HTTP server: a process of
    its own pinned like the servers (``benchmarks/asgi_drive.py``), run by path so that
    ``--server-path`` chooses the code it drives. Requests/s and errors."""
    environment = server_environment(args, work, bundle_path, "asgi")
    if not args.server_path:
        environment["PYTHONPATH"] = str(ROOT)
    argv = [str(ASGI_DRIVE), str(bodies), str(seconds), str(connections)]
    output = subprocess.run(
        ["taskset", "-c", args.server_cpus, sys.executable, *argv],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next((x for x in output.splitlines() if x.startswith("ASGI_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{ASGI_DRIVE.name} printed no result:\n{output}")
    raw = json.loads(line.removeprefix("ASGI_RESULT "))
    return {"rps": raw["requests"] / raw["seconds"], "errors": raw["errors"]}


def wrk(
    args: argparse.Namespace,
    url: str,
    bodies: Path | str,
    *,
    connections: int,
    seconds: float,
    rate: float = 0.0,
) -> dict[str, float]:
    """One wrk run on the load CPUs: requests/s and latency percentiles in ms."""
    command = [
        "taskset",
        "-c",
        args.load_cpus,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, math.ceil(seconds))}s",  # wrk takes whole seconds only
        "--timeout",
        "30s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        str(bodies),
        str(rate),
        str(connections),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next((x for x in output.splitlines() if x.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "requests": raw["requests"],
        "errors": raw["socket_errors"] + raw["http_errors"],
        **{f"{p}_ms": raw[f"{p}_us"] / 1e3 for p in ("mean", "p50", "p90", "p99", "max")},
    }


def measured(
    args: argparse.Namespace,
    server: Server,
    path: str,
    bodies: Path,
    label: str,
    **load: Any,
) -> dict[str, Any]:
    """A wrk run against ``server`` plus the mean time per request in each service stage."""
    before = server.stages() if server.name != TRIVIAL else {}
    result: dict[str, Any] = wrk(args, f"{server.url}{path}", bodies, **load)
    if server.name != TRIVIAL:
        after, per_stage = server.stages(), {}
        for stage, (total, count) in after.items():
            s0, c0 = before.get(stage, (0.0, 0.0))
            if count > c0:
                per_stage[stage] = 1e3 * (total - s0) / max(result["requests"], 1)
        result["stage_ms_per_request"] = per_stage
    load_text = ", ".join(f"{k}={v:g}" for k, v in load.items())
    print(
        f"{label:<34} {result['rps']:9,.1f} req/s  p50 {result['p50_ms']:7.2f} ms  "
        f"p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}  ({load_text})",
        flush=True,
    )
    if result["errors"]:
        raise RuntimeError(f"{label}: {result['errors']} failed requests; see {server.log}")
    return result


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


# -- the runtime encoder's key/value cache ---------------------------------------------------------


def packed(item_ids: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`history` as HISTORY_EVENT records (the service's live-history form)."""
    from service.schemas import Event, as_history

    return as_history([Event(**event) for event in history(item_ids, length, rng)])


def percentiles(values: list[float]) -> dict[str, float]:
    ms = np.asarray(values) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": len(ms),
    }


def encoder_timing(bundle_path: Path, length: int, reps: int, seed: int) -> dict[str, Any]:
    """In this process, one ONNX Runtime thread: a full encode of a ``length``-event history
    (what every realtime request costs without the cache) vs one new event after the cached
    state of that history (what a warm request costs), and the bytes a cached user takes."""
    import time

    from service.encoder import Encoder

    bundle = Bundle.open(bundle_path, with_index=False)
    max_len = int(bundle.manifest["model_config"]["max_len"])
    encoder = Encoder(
        bundle.encoder_path, max_len=max_len, device="cpu", threads=1, step_path=bundle.step_path
    )
    events = packed(bundle.item_ids, length + reps, np.random.default_rng(seed))
    encoder.encode([events[:length]])  # warm-up
    full, step = [], []
    for i in range(reps):
        began = time.perf_counter()
        encoder.encode([events[: length + i]])
        full.append(time.perf_counter() - began)
    state = encoder.encode_states([events[:length]])[0]
    bytes_per_user = state.nbytes
    for i in range(reps):
        began = time.perf_counter()
        state = encoder.step(state, events[: length + i + 1])
        step.append(time.perf_counter() - began)
    return {
        "history": length,
        "max_len": max_len,
        "full": percentiles(full),
        "step": percentiles(step),
        "speedup_p50": float(np.median(full) / np.median(step)),
        "bytes_per_cached_user": bytes_per_user,
    }


def cache_metrics(server: Server) -> dict[str, float]:
    """The encoder's cache outcomes and tokens, and the encoder stage's (sum, count)."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "argus_encoder_cache_total":
                out[f"cache_{sample.labels['outcome']}"] = sample.value
            elif sample.name == "argus_encoder_tokens_total":
                out[f"tokens_{sample.labels['kind']}"] = sample.value
            elif sample.name == "argus_encoder_cache_bytes":
                out["cache_bytes"] = sample.value
    encoder = server.stages().get("encoder", (0.0, 0.0))
    out["encoder_s"], out["encoder_count"] = encoder
    return out


def realtime_session(
    server: Server,
    users: int,
    requests: int,
    item_ids: np.ndarray,
    rng: np.random.Generator,
    clock: int,
) -> dict[str, Any]:
    """``requests`` listening steps over ``users`` users, in turn: ``POST /events`` one new event
    (30 s after the last one, from ``clock``: an event older than the history's newest would be
    inserted before it, and the history re-encoded), then time ``/candidates`` k=100
    ``mode=realtime`` (the user's live history from the store), on one keep-alive connection."""
    import http.client
    import time

    host = server.url.removeprefix("http://")
    connection = http.client.HTTPConnection(host, timeout=60)
    headers = {"Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        connection.request("POST", path, orjson.dumps(body), headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{server.name} {path}: {response.status} {data[:300]!r}")
        return dict(orjson.loads(data))

    before = cache_metrics(server)
    latencies = []
    for i in range(requests):
        user = i % users
        clock += 30
        event = {"item_id": int(rng.choice(item_ids)), "timestamp": clock, "played_ratio": 1.0}
        post("/events", {"user_id": user, "events": [event]})
        began = time.perf_counter()
        answer = post("/candidates", {"user_id": user, "k": 100, "mode": "realtime"})
        latencies.append(time.perf_counter() - began)
        assert answer["source"] == "realtime" and len(answer["items"]) == 100, answer
    connection.close()
    after = cache_metrics(server)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after if k != "cache_bytes"}
    encoder_ms = 1e3 * delta["encoder_s"] / max(delta["encoder_count"], 1)
    return {
        **percentiles(latencies),
        "encoder_ms_per_request": encoder_ms,
        "counters": delta,
        "cache_bytes": after.get("cache_bytes", 0.0),
        "clock": clock,
    }


def cache_benchmark(
    args: argparse.Namespace, bundle_path: Path, stack: contextlib.ExitStack, work: Path
) -> dict[str, Any]:
    """Warm cache vs full re-encode: in process (the encoder alone), then over HTTP (two
    ``argus serve`` on the server CPU, one with ``ARGUS_ENCODER_CACHE_MB=0``), alternating."""
    with contextlib.suppress(OSError):  # the client, like wrk, stays off the server's CPU
        os.sched_setaffinity(0, {int(c) for c in args.load_cpus.split(",")})
    timing = encoder_timing(bundle_path, args.cache_history, args.cache_reps, args.seed)
    print(
        f"encoder alone, history {timing['history']}: full p50 {timing['full']['p50_ms']:.2f} ms"
        f", step p50 {timing['step']['p50_ms']:.3f} ms ({timing['speedup_p50']:.0f}x); "
        f"{timing['bytes_per_cached_user'] / 2**20:.2f} MiB per cached user",
        flush=True,
    )
    argus = str(Path(sys.executable).with_name("argus"))
    servers = {
        "cached": start_server(
            args, stack, work, bundle_path, "cached", [argus, "serve"], ARGUS_EVENTS_OPEN="true"
        ),
        "full": start_server(
            args,
            stack,
            work,
            bundle_path,
            "full",
            [argus, "serve"],
            ARGUS_EVENTS_OPEN="true",
            ARGUS_ENCODER_CACHE_MB="0",
        ),
    }
    bundle = Bundle.open(bundle_path, with_index=False)
    rng = np.random.default_rng(args.seed)
    for server in servers.values():
        server.wait_ready()
        for user in range(args.cache_users):  # each user's live history: cache_history events
            events = history(bundle.item_ids, args.cache_history, rng)
            server.post("/events", {"user_id": user, "events": events})
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    clocks = dict.fromkeys(servers, 1_790_000_000)  # after every seeded event
    for round_ in range(1, args.rounds + 1):
        for name, server in servers.items():
            run = realtime_session(
                server, args.cache_users, args.cache_requests, bundle.item_ids, rng, clocks[name]
            )
            clocks[name] = run.pop("clock")
            runs[name].append(run)
            print(
                f"-- round {round_} realtime /candidates {name:<6} p50 {run['p50_ms']:7.2f} ms  "
                f"p99 {run['p99_ms']:7.2f} ms  encoder {run['encoder_ms_per_request']:6.2f} ms"
                f"/request  {run['counters']}",
                flush=True,
            )
    summary = {
        name: {key: median_of(r, key) for key in ("p50_ms", "p99_ms", "encoder_ms_per_request")}
        for name, r in runs.items()
    }
    cached, full = summary["cached"], summary["full"]
    grown = args.cache_requests * args.rounds // args.cache_users
    return {
        "encoder_alone": timing,
        "http": summary,
        "http_runs": runs,
        "users": args.cache_users,
        "requests_per_run": args.cache_requests,
        "history": f"{args.cache_history} + up to {grown} events",
        "encoder_speedup": full["encoder_ms_per_request"] / cached["encoder_ms_per_request"],
        "p50_speedup": full["p50_ms"] / cached["p50_ms"],
        "p99_speedup": full["p99_ms"] / cached["p99_ms"],
        "goal_encoder_speedup": 10.0,
    }


def cache_markdown(c: dict[str, Any]) -> str:
    t, http = c["encoder_alone"], c["http"]
    lines = [
        f"Realtime `/candidates` k=100, argus-3m (max_len {t['max_len']}), history "
        f"{c['history']}, {c['users']} users in turn (`POST /events` one event, then "
        "`/candidates` with `mode=realtime`), one connection, server on one core:",
        "",
        "| | warm cache | full re-encode | ratio |",
        "|---|---|---|---|",
        f"| encoder alone, p50 / p99 (ms) | {t['step']['p50_ms']:.3f} / {t['step']['p99_ms']:.3f}"
        f" | {t['full']['p50_ms']:.2f} / {t['full']['p99_ms']:.2f} | {t['speedup_p50']:.1f}x |",
        f"| encoder stage per request, service (ms) | "
        f"{http['cached']['encoder_ms_per_request']:.3f} | "
        f"{http['full']['encoder_ms_per_request']:.2f} | {c['encoder_speedup']:.1f}x |",
        f"| request p50 (ms) | {http['cached']['p50_ms']:.2f} | {http['full']['p50_ms']:.2f} | "
        f"{c['p50_speedup']:.1f}x |",
        f"| request p99 (ms) | {http['cached']['p99_ms']:.2f} | {http['full']['p99_ms']:.2f} | "
        f"{c['p99_speedup']:.1f}x |",
        "",
        f"Bytes per cached user at history {t['history']}: {t['bytes_per_cached_user']:,} "
        f"({t['bytes_per_cached_user'] / 2**20:.2f} MiB). Goal: encoder time >= "
        f"{c['goal_encoder_speedup']:.0f}x lower.",
    ]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------


def bare_search_qps(bundle: Bundle, queries: np.ndarray, k: int, cpus: str) -> float:
    """hnswlib alone, in this process pinned like the servers: the same index, ef_search and
    query vectors, one query at a time on one thread (the search a request makes)."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        assert bundle.index is not None
        index = bundle.index
        for query in queries[:200]:  # warm
            index.search(query[None, :], k)
        began = time.perf_counter()
        for query in queries:
            index.search(query[None, :], k)
        return len(queries) / (time.perf_counter() - began)
    finally:
        os.sched_setaffinity(0, previous)


def overhead_bodies(
    bundle: Bundle, users: np.ndarray, rng: np.random.Generator, work: Path
) -> dict[str, Path]:
    """The overhead runs' request bodies under ``work``: ``candidates`` (k = 100), ``score``
    (1,000 items each) and, where the catalog has artists, ``unfamiliar``
    (:func:`unfamiliar_body`)."""
    score = [
        {"user_id": int(u), "item_ids": rng.choice(bundle.item_ids, 1000).tolist()}
        for u in users[:200]
    ]
    bodies = {
        "candidates": write_bodies(
            work / "candidates.jsonl", [{"user_id": int(u), "k": 100} for u in users]
        ),
        "score": write_bodies(work / "score.jsonl", score),
    }
    if (bundle.item_artist_ids >= 0).any():
        unfamiliar = [unfamiliar_body(bundle, int(u), rng) for u in users]
        bodies["unfamiliar"] = write_bodies(work / "unfamiliar.jsonl", unfamiliar)
    return bodies


def overhead_servers(
    args: argparse.Namespace, stack: contextlib.ExitStack, work: Path, bundle_path: Path, user: int
) -> tuple[Server, Server, Server]:
    """``argus serve`` on the local store, and :func:`floor_app` answering what it answers
    ``user`` for k = 100: alone, and after each request's search (:func:`user_search`). The
    floors run this checkout's code whatever ``--server-path`` says: they are the baseline."""
    argus = str(Path(sys.executable).with_name("argus"))
    server = start_server(args, stack, work, bundle_path, "local", [argus, "serve"])
    server.wait_ready()
    answer = server.post("/candidates", {"user_id": user, "k": 100})
    if answer["model_version"] != bundle_path.name:
        raise RuntimeError(f"the server answers {answer['model_version']}, not {bundle_path}")
    reply = work / "reply.json"
    reply.write_bytes(orjson.dumps(answer))
    module = [sys.executable, "-m", "benchmarks.serve", "--floor-server", str(reply)]
    own = {"PYTHONPATH": str(ROOT)}
    floor = start_server(args, stack, work, bundle_path, "floor", module, **own)
    searched = [*module, "--floor-search", str(bundle_path)]
    search_floor = start_server(args, stack, work, bundle_path, "search-floor", searched, **own)
    floor.wait_ready()
    search_floor.wait_ready()
    return server, floor, search_floor


def round_ratios(candidates: list[dict[str, Any]], bare: list[float]) -> list[float]:
    """Each round's ``/candidates`` req/s over the bare search's q/s of the same round: the
    machine's drift between rounds cancels out of each."""
    return [run["rps"] / qps for run, qps in zip(candidates, bare, strict=True)]


def overhead_benchmark(
    args: argparse.Namespace, bundle_path: Path, stack: contextlib.ExitStack, work: Path
) -> dict[str, Any]:
    """What ``/candidates`` costs beyond its search and the HTTP floor: the route, the floor
    (``GET /healthz``), the same requests through the ASGI app alone and the bare search side
    by side, alternating over ``--rounds``; and ``/score`` with 1000 items on one connection."""
    bundle = Bundle.open(bundle_path)
    rng = np.random.default_rng(args.seed)
    users = rng.choice(bundle.user_ids, 4_000)
    bodies = overhead_bodies(bundle, users, rng, work)
    candidates, score, unfamiliar = bodies["candidates"], bodies["score"], bodies.get("unfamiliar")
    rows = np.searchsorted(bundle.user_ids, users)
    queries = np.ascontiguousarray(bundle.retrieval_part(bundle.user_vectors[rows]))
    server, floor, search_floor = overhead_servers(args, stack, work, bundle_path, int(users[0]))
    runs: dict[str, list[dict[str, Any]]] = {"candidates": [], "healthz": [], "score": []}
    runs["floor"], runs["asgi"], runs["search_floor"] = [], [], []
    if unfamiliar is not None:
        runs["unfamiliar"] = []
    bare: list[float] = []
    load = {"connections": args.connections, "seconds": args.seconds}
    wrk(args, f"{server.url}/candidates", candidates, connections=8, seconds=3)  # warm
    for _ in range(args.rounds):
        runs["candidates"].append(
            measured(args, server, "/candidates", candidates, "/candidates k=100", **load)
        )
        runs["floor"].append(wrk(args, f"{floor.url}/candidates", candidates, **load))
        runs["asgi"].append(in_process(args, work, bundle_path, candidates, **load))
        runs["search_floor"].append(wrk(args, f"{search_floor.url}/candidates", candidates, **load))
        if unfamiliar is not None:
            runs["unfamiliar"].append(
                measured(args, server, "/candidates", unfamiliar, "/candidates artists", **load)
            )
        runs["healthz"].append(wrk(args, f"{server.url}/healthz", "GET", **load))
        bare.append(bare_search_qps(bundle, queries, 100, args.server_cpus))
        runs["score"].append(
            measured(
                args,
                server,
                "/score",
                score,
                "/score 1000 items",
                connections=1,
                seconds=args.seconds,
            )
        )
    return overhead_result(args, bundle, runs, bare)


def overhead_result(
    args: argparse.Namespace,
    bundle: Bundle,
    runs: dict[str, list[dict[str, Any]]],
    bare: list[float],
) -> dict[str, Any]:
    """:func:`overhead_benchmark`'s figures from its runs: medians over the rounds."""
    median = {name: statistics.median(r["rps"] for r in rs) for name, rs in runs.items()}
    ms = {name: 1e3 / rps for name, rps in median.items()}
    bare_qps = statistics.median(bare)
    stages: dict[str, float] = {}
    for run in runs["candidates"]:
        for stage, value in run.get("stage_ms_per_request", {}).items():
            stages[stage] = stages.get(stage, 0.0) + value / len(runs["candidates"])
    return {
        "items": len(bundle.item_ids),
        "retrieval_dim": int(bundle.retrieval_item_vectors.shape[1]),
        "ef_search": int(bundle.manifest["hnsw"]["ef_search"]),
        "candidates_rps": median["candidates"],
        "healthz_rps": median["healthz"],
        "bare_search_qps": bare_qps,
        "candidates_ms": ms["candidates"],
        "healthz_ms": ms["healthz"],
        "bare_search_ms": 1e3 / bare_qps,
        "overhead_ms": ms["candidates"] - ms["healthz"] - 1e3 / bare_qps,
        # the same reply from a bare ASGI app: what HTTP itself costs (floor_app)
        "floor_rps": median["floor"],
        "floor_ms": ms["floor"],
        "route_ms": ms["candidates"] - ms["floor"] - 1e3 / bare_qps,
        "candidates_over_bare": median["candidates"] / bare_qps,
        "candidates_over_bare_rounds": round_ratios(runs["candidates"], bare),
        # the same requests through the ASGI app in a process, no HTTP server (asgi_drive.py)
        "asgi_rps": median["asgi"],
        "asgi_ms": ms["asgi"],
        "asgi_errors": sum(int(r["errors"]) for r in runs["asgi"]),
        "asgi_over_bare": median["asgi"] / bare_qps,
        "asgi_over_bare_rounds": round_ratios(runs["asgi"], bare),
        "http_ms": ms["candidates"] - ms["asgi"],  # what serving over HTTP adds to the route
        # one search a request behind the bare app: the search-plus-HTTP limit, measured
        "search_floor_rps": median["search_floor"],
        "search_floor_ms": ms["search_floor"],
        "search_floor_over_bare": median["search_floor"] / bare_qps,
        "search_floor_over_bare_rounds": round_ratios(runs["search_floor"], bare),
        "candidates_over_search_floor": median["candidates"] / median["search_floor"],
        # with a 50-event history in the request, none of its artists' items (None: no artists)
        "unfamiliar_rps": median.get("unfamiliar"),
        "unfamiliar_ms": ms.get("unfamiliar"),
        "score_1000_p50_ms": statistics.median(r["p50_ms"] for r in runs["score"]),
        "score_1000_p99_ms": statistics.median(r["p99_ms"] for r in runs["score"]),
        "stage_ms_per_request": stages,
        "rounds": args.rounds,
        "connections": args.connections,
        "server_cpus": args.server_cpus,
        "load_cpus": args.load_cpus,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def overhead_markdown(r: dict[str, Any]) -> str:
    stages = ", ".join(
        f"{k} {v:.3f}" for k, v in sorted(r["stage_ms_per_request"].items(), key=lambda x: -x[1])
    )
    return "\n".join(
        [
            f"{r['items']:,} items x {r['retrieval_dim']} (ef_search {r['ef_search']}); "
            f"{r['machine']}; the server on CPU {r['server_cpus']}, wrk on CPU {r['load_cpus']} "
            f"(1 thread, {r['connections']} connections); medians of {r['rounds']} rounds.",
            "",
            "| what | throughput on one core | time per request |",
            "|---|---:|---:|",
            f"| `POST /candidates` k = 100 | {r['candidates_rps']:,.0f} req/s | "
            f"{r['candidates_ms']:.3f} ms |",
            f"| `GET /healthz` (the HTTP floor) | {r['healthz_rps']:,.0f} req/s | "
            f"{r['healthz_ms']:.3f} ms |",
            f"| the same reply from a bare ASGI app (HTTP alone) | {r['floor_rps']:,.0f} req/s | "
            f"{r['floor_ms']:.3f} ms |",
            f"| hnswlib search alone, one query at a time | {r['bare_search_qps']:,.0f} q/s | "
            f"{r['bare_search_ms']:.3f} ms |",
            f"| the same `/candidates` through the ASGI app alone (no HTTP server) | "
            f"{r['asgi_rps']:,.0f} req/s | {r['asgi_ms']:.3f} ms |",
            f"| the bare ASGI app with one search a request (search plus HTTP) | "
            f"{r['search_floor_rps']:,.0f} req/s | {r['search_floor_ms']:.3f} ms |",
            *(
                [
                    f"| `POST /candidates`, {UNFAMILIAR_HISTORY} events in the request, none of "
                    f"their artists' items | {r['unfamiliar_rps']:,.0f} req/s | "
                    f"{r['unfamiliar_ms']:.3f} ms |"
                ]
                if r.get("unfamiliar_rps")
                else []
            ),
            "",
            f"Route overhead beyond the search and the floor: **{r['overhead_ms']:.3f} ms**; "
            f"beyond the search and HTTP alone: {r['route_ms']:.3f} ms; "
            f"/candidates at {r['candidates_over_bare']:.2f}x the bare search (round by round: "
            f"{', '.join(f'{x:.2f}' for x in r['candidates_over_bare_rounds'])}); through the ASGI "
            f"app alone at {r['asgi_over_bare']:.2f}x (round by round: "
            f"{', '.join(f'{x:.2f}' for x in r['asgi_over_bare_rounds'])}), so serving over HTTP "
            f"adds {r['http_ms']:.3f} ms a request. Search plus HTTP alone reach "
            f"{r['search_floor_over_bare']:.2f}x the bare search (round by round: "
            f"{', '.join(f'{x:.2f}' for x in r['search_floor_over_bare_rounds'])}): /candidates "
            f"is at {r['candidates_over_search_floor']:.2f}x that limit. Stages (ms per "
            f"request, the service's own histograms): {stages}. `/score` with 1000 items, one "
            f"connection: p50 {r['score_1000_p50_ms']:.2f} ms, "
            f"p99 {r['score_1000_p99_ms']:.2f} ms.",
            "",
        ]
    )


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0, help="per saturation run")
    parser.add_argument("--slow-seconds", type=float, default=20.0, help="per realtime run")
    parser.add_argument("--connections", type=int, default=32, help="for saturation runs")
    parser.add_argument("--server-cpus", default="0", help="taskset list for every server")
    parser.add_argument("--load-cpus", default="1", help="taskset list for wrk and Redis")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "serve")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument(
        "--only",
        choices=("all", "cache", "overhead"),
        default="all",
        help="cache: the key/value cache part; overhead: /candidates beside /healthz and the "
        "bare search",
    )
    parser.add_argument(
        "--bundle", type=Path, default=None, help="overhead: a built bundle (default: build one)"
    )
    parser.add_argument(
        "--server-path",
        type=Path,
        default=None,
        help="serve the code of this checkout (a git worktree of another commit: before/after)",
    )
    parser.add_argument("--cache-history", type=int, default=512)
    parser.add_argument("--cache-users", type=int, default=16)
    parser.add_argument("--cache-requests", type=int, default=400, help="per server and round")
    parser.add_argument("--cache-reps", type=int, default=50, help="encoder-alone repetitions")
    # Child mode: serve the trivial endpoint (started like ``argus serve``, with --port).
    parser.add_argument("--trivial-server", action="store_true", help=argparse.SUPPRESS)
    # Child mode: serve floor_app with the reply in this file.
    parser.add_argument("--floor-server", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--floor-search", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    return parser.parse_args()


def report(args: argparse.Namespace, name: str, result: dict[str, Any], text: str) -> None:
    """``name.json`` and ``name.md`` under ``--out``, and the text on the console."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(text)
    print(text)


def main() -> None:
    args = arguments()
    if args.trivial_server:
        run_server(trivial_app(), host="127.0.0.1", port=args.port)
        return
    if args.floor_server is not None:
        search = user_search(args.floor_search) if args.floor_search else None
        app = floor_app(args.floor_server.read_bytes(), search)
        run_server(app, host="127.0.0.1", port=args.port)
        return
    if args.only == "cache":
        bundle_path = bench_bundle(args)
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            cache = cache_benchmark(args, bundle_path, stack, Path(tmp))
        cache["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
        cache["device"] = "cpu (no GPU lent)"
        report(args, "serve_cache", cache, cache_markdown(cache))
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk (make bench installs it)")
    if args.only == "overhead":
        bundle_path = args.bundle or bench_bundle(args)
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            result = overhead_benchmark(args, bundle_path, stack, Path(tmp))
        report(args, "serve_overhead", result, overhead_markdown(result))
        print(
            f"serve overhead: /candidates {result['candidates_rps']:,.0f} req/s, /healthz "
            f"{result['healthz_rps']:,.0f} req/s, bare search {result['bare_search_qps']:,.0f} q/s:"
            f" {result['overhead_ms']:.3f} ms of route overhead ({result['route_ms']:.3f} ms beyond"
            f" the search and HTTP alone, {result['floor_rps']:,.0f} req/s)"
        )
        return
    result = serve_benchmark(args, bench_bundle(args))
    report(args, "serve", result, markdown(result))
    plot(result, args.out / "serve.png")


# -- the whole benchmark -------------------------------------------------------------------------

# The servers' runs at saturation: (server, path, request bodies).
OFFLINE = (
    (TRIVIAL, "/trivial", "trivial"),
    ("redis", "/candidates", "candidates"),
    ("local", "/candidates", "candidates"),
)
LENGTHS = (512, 32)  # realtime histories for the batcher's runs


def started_redis(args: argparse.Namespace, stack: contextlib.ExitStack, work: Path) -> RedisServer:
    """A real ``redis-server`` on the load CPUs, stopped when ``stack`` closes."""
    server = RedisServer(work / "redis")
    (work / "redis").mkdir()
    server.start()
    stack.callback(server.stop)
    assert server.process is not None
    subprocess.run(
        ["taskset", "-pc", args.load_cpus, str(server.process.pid)], capture_output=True, check=True
    )
    return server


def started_servers(
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    work: Path,
    bundle_path: Path,
    redis_url: str,
) -> dict[str, Server]:
    """The trivial endpoint, ``argus serve`` on Redis and on the local store, and the Redis one
    with ``max_batch = 1``; ready."""
    argus = str(Path(sys.executable).with_name("argus"))

    def start(name: str, argv: list[str], **env: str) -> Server:
        return start_server(args, stack, work, bundle_path, name, argv, **env)

    servers = {
        TRIVIAL: start(TRIVIAL, [sys.executable, "-m", "benchmarks.serve", "--trivial-server"]),
        "redis": start("redis", [argus, "serve"], ARGUS_REDIS_URL=redis_url),
        "local": start("local", [argus, "serve"]),
        "batch1": start(
            "batch1", [argus, "serve"], ARGUS_REDIS_URL=redis_url, ARGUS_ENCODER_MAX_BATCH="1"
        ),
    }
    for server in servers.values():
        server.wait_ready()
    print("servers ready: " + ", ".join(f"{n} {s.url}" for n, s in servers.items()))
    return servers


def request_bodies(bundle: Bundle, rng: np.random.Generator) -> dict[str, list[dict[str, Any]]]:
    """Every run's request bodies, by name: users drawn Zipf(1) from the published ones."""
    users = [int(u) for u in zipf_users(bundle.user_ids, 20_000, rng)]
    item_ids = bundle.item_ids

    def score(user: int, vectors: str | None) -> dict[str, Any]:
        body = {"user_id": user, "item_ids": rng.choice(item_ids, 1000).tolist()}
        if vectors:
            body |= {"return_vectors": True, "vectors_format": vectors}
        return body

    def realtime(user: int, length: int) -> dict[str, Any]:
        events = history(item_ids, length, rng)
        return {"user_id": user, "k": 100, "mode": "realtime", "history": events}

    return {
        "trivial": [{"user_id": u} for u in users],
        "candidates": [{"user_id": u, "k": 100} for u in users],
        "score": [score(u, None) for u in users[:200]],
        "score_vectors": [score(u, "json") for u in users[:200]],
        "score_base64": [score(u, "base64") for u in users[:200]],
        **{f"realtime{n}": [realtime(u, n) for u in users[:64]] for n in LENGTHS},
    }


def check_and_warm(
    args: argparse.Namespace,
    servers: dict[str, Server],
    requests: dict[str, list[dict[str, Any]]],
    bodies: dict[str, Path],
) -> None:
    """The answers are what they should be before anything is timed; then touch the index pages
    and fill every connection pool."""
    for name in ("redis", "local"):
        answer = servers[name].post("/candidates", requests["candidates"][0])
        assert answer["source"] == "stored" and len(answer["items"]) == 100, answer
    answer = servers["redis"].post("/candidates", requests["realtime512"][0])
    assert answer["source"] == "realtime", answer
    for name, path, key in OFFLINE:
        url = f"{servers[name].url}{path}"
        wrk(args, url, bodies[key], connections=args.connections, seconds=5)
    for name in ("redis", "batch1"):
        url = f"{servers[name].url}/candidates"
        wrk(args, url, bodies["realtime32"], connections=16, seconds=3)


def serve_benchmark(args: argparse.Namespace, bundle_path: Path) -> dict[str, Any]:
    """Every server started side by side; saturation and batcher runs alternating over
    ``--rounds``, then half load and one connection."""
    bundle = Bundle.open(bundle_path, with_index=False)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        redis_server = started_redis(args, stack, work)
        client = redis.Redis.from_url(redis_server.url)
        print(publish(bundle, client, progress=False).line())
        redis_version = client.info("server")["redis_version"]
        servers = started_servers(args, stack, work, bundle_path, redis_server.url)
        requests = request_bodies(bundle, rng)
        bodies = {key: write_bodies(work / f"{key}.jsonl", b) for key, b in requests.items()}
        check_and_warm(args, servers, requests, bodies)

        def run(name: str, path: str, key: str, label: str, **load: Any) -> dict[str, Any]:
            return measured(args, servers[name], path, bodies[key], label, **load)

        saturated, batching = saturation_rounds(args, run)
        max_rps = {name: median_of(runs, "rps") for name, runs in saturated.items()}
        half, single = unsaturated_runs(args, run, max_rps)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "device": "cpu (no GPU lent)",
        "server_cpus": args.server_cpus,
        "load_cpus": args.load_cpus,
        "redis": redis_version,
        "bundle": {
            "version": bundle.version,
            "items": len(bundle.item_ids),
            "users": len(bundle.user_ids),
            "dim": bundle.dim,
            "ef_search": bundle.manifest["hnsw"]["ef_search"],
            "recall_at_100": bundle.manifest["hnsw"]["recall"],
            "encoder": "argus-3m (untrained), tower 128",
        },
        "rounds": args.rounds,
        "connections": args.connections,
        "max_rps": max_rps,
        "ratio_redis_vs_trivial": max_rps["redis"] / max_rps[TRIVIAL],
        "ratio_local_vs_trivial": max_rps["local"] / max_rps[TRIVIAL],
        "goal_ratio": 0.5,
        "half_load": half,
        "single_connection": single,
        "batcher_rps": {name: median_of(runs, "rps") for name, runs in batching.items()},
        "batcher_speedup": {
            n: median_of(batching[f"redis_{n}"], "rps") / median_of(batching[f"batch1_{n}"], "rps")
            for n in LENGTHS
        },
        "saturated_runs": saturated,
        "batching_runs": batching,
    }


Run = Callable[..., dict[str, Any]]  # (server, path, bodies, label, **load) -> a measured run


def saturation_rounds(
    args: argparse.Namespace, run: Run
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Per round: each server at saturation, then 16 concurrent realtime requests with the
    dynamic batcher and with ``max_batch = 1``."""
    full = {"connections": args.connections, "seconds": args.seconds}
    saturated: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in OFFLINE}
    batching: dict[str, list[dict[str, Any]]] = {
        f"{name}_{n}": [] for n in LENGTHS for name in ("redis", "batch1")
    }
    for round_ in range(1, args.rounds + 1):
        print(f"-- round {round_}/{args.rounds}")
        for name, path, key in OFFLINE:
            saturated[name].append(run(name, path, key, f"{path} {name}", **full))
        for n in LENGTHS:
            for name in ("redis", "batch1"):
                label = f"realtime h={n} c=16 {name}"
                batching[f"{name}_{n}"].append(
                    run(
                        name,
                        "/candidates",
                        f"realtime{n}",
                        label,
                        connections=16,
                        seconds=args.slow_seconds,
                    )
                )
    return saturated, batching


def unsaturated_runs(
    args: argparse.Namespace, run: Run, max_rps: dict[str, float]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Latency at half of each server's maximum (Poisson arrivals), then on one connection."""
    slow = args.slow_seconds
    print("-- half load, then one connection")
    half = {
        name: run(
            name,
            path,
            key,
            f"{path} {name} at half load",
            connections=args.connections,
            seconds=slow,
            rate=max_rps[name] / 2,
        )
        for name, path, key in OFFLINE
    }
    one = {"connections": 1, "seconds": slow / 2}
    single = {
        "score_1000": run("redis", "/score", "score", "/score 1000 items", **one),
        "score_1000_vectors": run(
            "redis", "/score", "score_vectors", "/score 1000 items + vectors", **one
        ),
        "score_1000_base64": run(
            "redis", "/score", "score_base64", "/score 1000 items + base64 vectors", **one
        ),
        "realtime_512": run(
            "redis", "/candidates", "realtime512", "realtime h=512 c=1", connections=1, seconds=slow
        ),
    }
    return half, single


def markdown(r: dict[str, Any]) -> str:
    b, half, single = r["bundle"], r["half_load"], r["single_connection"]

    def stages(run: dict[str, Any]) -> str:
        parts = run.get("stage_ms_per_request", {})
        return ", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items(), key=lambda x: -x[1]))

    lines = [
        f"Bundle {b['items']:,} items x {b['dim']} (HNSW ef_search {b['ef_search']}, recall@100 "
        f"{b['recall_at_100']:.3f}), {b['users']:,} users, encoder {b['encoder']}. "
        f"{r['machine']}; every server one worker pinned to CPU {r['server_cpus']}, wrk and "
        f"Redis {r['redis']} on CPU {r['load_cpus']}; {r['device']}; medians of {r['rounds']} "
        "alternating rounds.",
        "",
        f"| endpoint | max req/s ({r['connections']} connections) | ratio to trivial | "
        "p50 / p99 at half load | ms per request by stage (at half load) |",
        "|---|---|---|---|---|",
    ]
    for name, label in (
        (TRIVIAL, "trivial `async def` FastAPI endpoint"),
        ("redis", "`/candidates` k=100, Redis store"),
        ("local", "`/candidates` k=100, local store"),
    ):
        ratio = r["max_rps"][name] / r["max_rps"][TRIVIAL]
        lines.append(
            f"| {label} | {r['max_rps'][name]:,.0f} | {ratio:.2f} | "
            f"{half[name]['p50_ms']:.2f} / {half[name]['p99_ms']:.2f} ms | {stages(half[name])} |"
        )
    lines += [
        "",
        "| one connection | p50 | p99 | req/s | ms per request by stage |",
        "|---|---|---|---|---|",
    ]
    for key, label in (
        ("score_1000", "`/score` 1000 items"),
        ("score_1000_vectors", "`/score` 1000 items, `return_vectors` (JSON numbers)"),
        ("score_1000_base64", "`/score` 1000 items, `return_vectors`, `vectors_format=base64`"),
        ("realtime_512", "`/candidates` realtime, history 512 (argus-3m)"),
    ):
        run = single[key]
        lines.append(
            f"| {label} | {run['p50_ms']:.2f} ms | {run['p99_ms']:.2f} ms | {run['rps']:,.1f} | "
            f"{stages(run)} |"
        )
    lines += [
        "",
        "| 16 concurrent realtime requests | max_batch 32 (req/s) | max_batch 1 (req/s) "
        "| speed-up |",
        "|---|---|---|---|",
    ]
    for length in (512, 32):
        with_batching = r["batcher_rps"][f"redis_{length}"]
        without = r["batcher_rps"][f"batch1_{length}"]
        lines.append(
            f"| history {length} | {with_batching:,.1f} | {without:,.1f} | "
            f"{r['batcher_speedup'][length]:.2f}x |"
        )
    lines += [
        "",
        f"`/candidates` (Redis) / trivial: {r['ratio_redis_vs_trivial']:.2f} "
        f"(goal >= {r['goal_ratio']})",
    ]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [TRIVIAL, "redis", "local"]
    labels = ["trivial", "/candidates\nRedis", "/candidates\nlocal"]
    left.bar(labels, [r["max_rps"][n] for n in names], color=["grey", "C0", "C1"])
    left.set_ylabel("requests/s, one worker on one core")
    left.set_title("throughput at saturation")
    x = np.arange(2)
    for offset, (name, label) in enumerate((("redis", "max_batch 32"), ("batch1", "max_batch 1"))):
        values = [r["batcher_rps"][f"{name}_{length}"] for length in (512, 32)]
        right.bar(x + 0.4 * offset - 0.2, values, 0.4, label=label)
    right.set_xticks(x, ["history 512", "history 32"])
    right.set_ylabel("requests/s")
    right.set_title("16 concurrent realtime requests (argus-3m)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
