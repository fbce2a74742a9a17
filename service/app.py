"""The FastAPI app: ``/candidates``, ``/score``, ``/events`` and the ops endpoints.

Every request takes one reference to the served bundle and uses only it, so a reload in the
middle of a request never mixes versions. Blocking work (Redis, hnswlib, numpy) runs in worker
threads, the runtime encoder in its own batching thread; the event loop only routes.

The rooms: request and response bodies in :mod:`service.schemas`, the user vector's sources in
:mod:`service.resolve`, candidate search in :mod:`service.retrieve`, one router per concern in
:mod:`service.routers`, their dependencies in :mod:`service.deps`; this module only assembles.
"""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig

from service.deps import is_hot
from service.docs import add_docs
from service.metrics import Metrics
from service.middleware import Guard, HotLane
from service.replies import validation_error
from service.resolve import Resolver
from service.retrieve import Searches
from service.routers import ROUTERS
from service.schemas import CandidatesRequest, ScoreRequest
from service.settings import Settings
from service.state import Backend


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the bundle before the first request; check the pointer (and Redis's health) until
    shutdown.

    What the imports and the app made lives as long as the process: it leaves the garbage
    collector's generations (``gc.freeze``), so a full collection walks only what came after (a
    full walk of it costs tens of milliseconds: a latency spike). Bundles come after it, so an
    old one is still collected when a reload replaces it."""
    gc.freeze()
    backend: Backend = app.state.backend
    await backend.refresh()
    tasks = [asyncio.create_task(backend.reload_forever())]
    if backend.gate is not None:
        tasks.append(asyncio.create_task(backend.gate.watch()))
    yield
    for task in tasks:
        task.cancel()
    backend.close()


INT64 = {"maximum": 2**63 - 1, "minimum": -(2**63)}
PARSED_BODIES = (CandidatesRequest, ScoreRequest)


def exact_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's schema with integer bounds written as integers, and this process's settings in
    it: its request limits, and the bearer scheme of ``/events`` only when a token is set (open
    or closed writes take no credentials). FastAPI's OpenAPI model holds bounds as floats:
    2^63 - 1 would read 9.223372036854776e18 (2^63), and a client (or a fuzzer) that trusts the
    schema would send ids the service must refuse; so would one that never saw ``ARGUS_MAX_K``."""
    limits = settings.limits
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )

        def exact(node: Any) -> None:
            if isinstance(node, dict):
                if node.get("type") == "integer":
                    for key in ("maximum", "minimum"):
                        value = node.get(key)
                        if isinstance(value, float):
                            near = INT64[key] if abs(value) >= 2**62 else int(value)
                            node[key] = near
                for child in node.values():
                    exact(child)
            elif isinstance(node, list):
                for child in node:
                    exact(child)

        components = schema["components"]["schemas"]
        for model in PARSED_BODIES:  # parsed by the routes themselves (service.deps.body_of)
            own = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in {**own.pop("$defs", {}), model.__name__: own}.items():
                components.setdefault(name, definition)
        exact(schema)
        bounds = {
            ("CandidatesRequest", "k"): {"maximum": limits.max_k},
            ("CandidatesRequest", "exclude_item_ids"): {"maxItems": limits.max_exclude},
            ("ScoreRequest", "item_ids"): {"maxItems": limits.max_score_items},
            ("EventsRequest", "events"): {"maxItems": limits.max_history},
        }
        for name in ("CandidatesRequest", "ScoreRequest"):
            bounds[name, "history"] = {"maxItems": limits.max_history}
        for (name, field), bound in bounds.items():
            node = components[name]["properties"][field]
            for option in node.get("anyOf", [node]):  # history may be null
                if option.get("type") != "null":
                    option.update(bound)
        if settings.requests.events_token is None:
            schema["paths"]["/events"]["post"].pop("security", None)
            schema["components"].pop("securitySchemes", None)
        app.openapi_schema = schema
    return app.openapi_schema


# FastAPI's OpenTelemetry hooks, all off (``ARGUS_OPENTELEMETRY`` turns them on)
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service of one process, configured by ``settings`` (default: the environment)."""
    settings = settings or Settings()
    metrics = Metrics()
    backend = Backend(settings, metrics)
    docs = settings.server.docs
    app = FastAPI(
        title="argus",
        summary="ARGUS candidates and ranking features from the daily bundle and live histories.",
        lifespan=lifespan,
        docs_url=None,  # added below, with its own assets
        redoc_url=None,
        telemetry=None if settings.server.opentelemetry else NO_TELEMETRY,
    )
    if docs:
        add_docs(app, settings.server.docs_assets)
    app.openapi = functools.partial(exact_openapi, app, settings)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.backend = backend
    app.state.resolver = Resolver(backend, settings.requests, metrics)
    app.state.searches = Searches(metrics)
    for router in ROUTERS:
        app.include_router(router)
    hot_routes = [
        route
        for router in ROUTERS  # no prefixes: a route's path is the app's
        for route in router.routes
        if isinstance(route, APIRoute) and is_hot(route.endpoint)
    ]
    app.add_middleware(HotLane, routes=hot_routes)  # inside Guard: added first
    app.add_middleware(
        Guard,
        max_body_bytes=settings.limits.max_body_bytes,
        body_timeout_s=settings.server.body_timeout_s,
        metrics=metrics,
    )
    app.add_exception_handler(RequestValidationError, validation_error)
    return app
