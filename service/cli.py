"""``argus serve``: the FastAPI service on uvicorn (uvloop, httptools)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from model.cli import fails_cleanly, needs_extra


@fails_cleanly
def serve(
    bundles: Annotated[Path, typer.Option(help="Bundle root (ROOT/<version>/).")] = Path("bundles"),
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis with the published vectors; default: the embedded local store."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes, each with its own bundle.")] = 1,
) -> None:
    """Serve /candidates, /score, /events, /healthz, /readyz, /metrics, /bundle (and /docs).
    Every other setting is an ARGUS_* environment variable (service/settings.py)."""
    needs_extra("serve", "fastapi")
    import uvicorn

    # Workers are separate processes: the settings travel as environment variables.
    os.environ["ARGUS_BUNDLES"] = str(bundles)
    if redis_url:
        os.environ["ARGUS_REDIS_URL"] = redis_url
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level="info",
    )


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the ``argus`` app."""
    app.command()(serve)
