"""The FastAPI app (DESIGN.md §8): ``/candidates``, ``/score``, ``/events`` and the ops endpoints.

Every request takes one reference to the served bundle and uses only it, so a reload in the
middle of a request never mixes versions. Blocking work (Redis, hnswlib, numpy) runs in worker
threads, the runtime encoder in its own batching thread; the event loop only routes.

The rooms: request and response bodies in :mod:`service.schemas`, the user vector's sources in
:mod:`service.resolve`, candidate search in :mod:`service.retrieve`, one router per concern in
:mod:`service.routers`, their dependencies in :mod:`service.deps`; this module only assembles.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from service.metrics import Metrics
from service.middleware import Guard
from service.replies import validation_error
from service.resolve import Resolver
from service.routers import ROUTERS
from service.settings import Settings
from service.state import Backend


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the bundle before the first request; check the pointer (and Redis's health) until
    shutdown."""
    backend: Backend = app.state.backend
    await backend.refresh()
    tasks = [asyncio.create_task(backend.reload_forever())]
    if backend.gate is not None:
        tasks.append(asyncio.create_task(backend.gate.watch()))
    yield
    for task in tasks:
        task.cancel()
    backend.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service of one process, configured by ``settings`` (default: the environment)."""
    settings = settings or Settings()
    metrics = Metrics()
    backend = Backend(settings, metrics)
    app = FastAPI(
        title="argus",
        summary="ARGUS candidates and ranking features from the daily bundle and live histories.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.backend = backend
    app.state.resolver = Resolver(backend, settings.requests, metrics)
    app.add_middleware(
        Guard,
        max_body_bytes=settings.limits.max_body_bytes,
        body_timeout_s=settings.server.body_timeout_s,
        metrics=metrics,
    )
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, validation_error)
    return app
