"""``argus`` subcommands of the index stage: build a bundle, publish its user vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.console import Quiet, fails_cleanly, needs_extra
from model.contract import PUBLISH_CHUNK, PUBLISH_GRACE
from model.data.events import parse_duration

RedisUrl = Annotated[
    str, typer.Option(envvar="ARGUS_REDIS_URL", help="Redis to publish to (redis://host:port/db).")
]


@fails_cleanly
def build(
    export: Annotated[Path, typer.Option(help="Directory written by `argus export`.")],
    bundles: Annotated[Path, typer.Option(help="Bundle root; the bundle goes in ROOT/<version>.")],
    m: Annotated[int, typer.Option("--m", help="HNSW graph degree M.")] = 16,
    ef_construction: Annotated[int, typer.Option(help="HNSW build beam width.")] = 200,
    target_recall: Annotated[
        float, typer.Option(help="ef_search = smallest ef reaching this recall@k vs exact.")
    ] = 0.95,
    k: Annotated[int, typer.Option(help="The k of recall@k.")] = 100,
    sample: Annotated[int, typer.Option(help="User vectors used as tuning queries.")] = 1_000,
    threads: Annotated[int, typer.Option(help="Build threads (0: every core).")] = 0,
    seed: Annotated[int, typer.Option(help="HNSW and sampling seed.")] = 0,
    space: Annotated[
        str, typer.Option(help="mips (inner product via the L2 transform) or ip (hnswlib raw).")
    ] = "mips",
    allow_low_recall: Annotated[
        bool, typer.Option(help="Write the bundle even if no ef reaches the target recall.")
    ] = False,
    search: Annotated[
        str,
        typer.Option(
            help="What the service searches: hnsw (the graph), exact (every item), or auto "
            "(the exact pass unless the tuned graph is clearly faster on the tuning queries)."
        ),
    ] = "auto",
    quiet: Quiet = False,
) -> None:
    """Build a verified bundle: HNSW index (ef_search auto-tuned) or exact search, whichever is
    faster, vectors, encoder, manifest."""
    needs_extra("serve", "hnswlib")
    from index.bundle import HnswParams
    from index.bundle import build as run

    params = HnswParams(
        m, ef_construction, k, target_recall, sample, threads, seed, space, allow_low_recall, search
    )
    summary = run(export, bundles, params, progress=not quiet)
    typer.echo(summary.line())
    typer.echo(summary.path)


@fails_cleanly
def publish(
    bundle: Annotated[Path, typer.Option(help="Bundle directory (ROOT/<version>).")],
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    layout: Annotated[
        str,
        typer.Option(
            help="Key layout: plain (a key per user), hash (~128 users per key) or auto (hash "
            "on a Redis Cluster, where plain writes 6x slower: no MSET across slots; else plain)."
        ),
    ] = "auto",
    grace: Annotated[
        str, typer.Option(help="How long older versions stay readable: 0, 90s, 30m, 6h, 1d.")
    ] = PUBLISH_GRACE,
    chunk: Annotated[int, typer.Option(help="Vectors per MULTI/EXEC transaction.")] = PUBLISH_CHUNK,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for another publish to finish (0: refuse).")
    ] = 0.0,
    cluster: Annotated[
        bool,
        typer.Option(
            envvar="ARGUS_REDIS_CLUSTER", help="--redis-url names a node of a Redis Cluster."
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Write a bundle's user vectors to Redis under its version, then flip argus:current."""
    needs_extra("serve", "redis")
    import redis

    from index.bundle import Bundle
    from index.store import connect, redacted
    from index.store import publish as run

    grace_s = parse_duration(grace)
    opened = Bundle.open(bundle, with_index=False)
    client = connect(redis_url, cluster=cluster)
    if layout == "auto":
        layout = "hash" if cluster else "plain"
    try:
        summary = run(
            opened,
            client,
            layout=layout,
            chunk=chunk,
            grace_s=grace_s,
            progress=not quiet,
            wait_s=wait,
        )
    except redis.RedisError as error:
        where = redacted(redis_url)
        raise ConnectionError(f"Redis at {where} failed: {error}; rerun to resume") from None
    typer.echo(summary.line())


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the ``argus`` app."""
    app.command()(build)
    app.command()(publish)
