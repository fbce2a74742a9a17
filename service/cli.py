"""``argus serve``: the FastAPI service on uvicorn (uvloop, httptools)."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from model.console import fails_cleanly, needs_extra

if TYPE_CHECKING:
    from fastapi import FastAPI


def run_server(
    app: str | FastAPI, *, host: str, port: int, workers: int = 1, access_log: bool = False
) -> None:
    """uvicorn as ``argus serve`` runs it (``app``: an instance, or ``module:factory``), with
    the limits of :class:`service.settings.ServerSettings`: a deadline on request headers (408),
    on idle connections, and a cap on connections per worker (503 beyond). The benchmarks serve
    their baseline through this too, so both sides run the same server."""
    import uvicorn

    from service.protocol import uvicorn_options
    from service.settings import ServerSettings

    one_blas_thread()
    uvicorn.run(
        app,
        factory=isinstance(app, str),
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=access_log,
        **uvicorn_options(ServerSettings()),
    )


def one_blas_thread() -> None:
    """numpy's BLAS on one thread per call, in this process and the workers it starts (unless
    ``OPENBLAS_NUM_THREADS`` says otherwise). A request's matrix work is small (100 rows scored,
    or an exact pass over a catalog the build found small enough), and the cores serve requests
    side by side; a BLAS that spreads one pass over every core waits on cores busy with other
    requests: an exact pass over 7,976 items took 0.93 ms so on a loaded 2-core VM, against
    0.28 ms on one thread. Call it from the main thread: OpenBLAS ignores a change of its
    thread count from another thread once one was set."""
    from threadpoolctl import threadpool_limits

    threads = os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    threadpool_limits(int(threads), user_api="blas")


def wait_ready(process: subprocess.Popen[bytes], url: str, *, timeout_s: float = 120.0) -> None:
    """Wait until the ``argus serve`` child ``process`` answers ``url/readyz`` with 200; raise
    RuntimeError when it exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while it loads
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service was not ready after {timeout_s:.0f} s ({url})")


@fails_cleanly
def serve(
    bundles: Annotated[
        Path, typer.Option(envvar="ARGUS_BUNDLES", help="Bundle root (ROOT/<version>/).")
    ] = Path("bundles"),
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="ARGUS_REDIS_URL",
            help="Redis with the published vectors; default: the embedded local store.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes, each with its own bundle.")] = 1,
    access_log: Annotated[
        bool, typer.Option(help="Log every request (the /metrics series count them anyway).")
    ] = False,
) -> None:
    """Serve /candidates, /score, /events, /healthz, /readyz, /metrics, /bundle (and /docs).
    Every other setting is an ARGUS_* environment variable (service/settings.py)."""
    needs_extra("serve", "fastapi")

    # Workers are separate processes: the settings travel as environment variables.
    os.environ["ARGUS_BUNDLES"] = str(bundles)
    if redis_url:
        os.environ["ARGUS_REDIS_URL"] = redis_url
    run_server(
        "service.app:create_app", host=host, port=port, workers=workers, access_log=access_log
    )


@fails_cleanly
def docs_assets(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Where to put them (default: $ARGUS_CACHE/swagger-ui, found by serve)."
        ),
    ] = None,
) -> None:
    """Swagger UI's files for /docs, from PyPI (hash-checked), so the docs need no CDN."""
    from service.docs import fetch_assets

    typer.echo(fetch_assets(directory))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the ``argus`` app."""
    app.command()(serve)
    app.command("docs-assets")(docs_assets)
