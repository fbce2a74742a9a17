"""What routes receive through ``Annotated[..., Depends()]``: the process's
settings, metrics, backend and resolver (set on ``app.state`` by :func:`service.app.create_app`),
and the one bundle a request uses from start to end.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread,
a hop that costs more than these lookups."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from service.metrics import Metrics
from service.replies import answers
from service.resolve import Resolver
from service.retrieve import Searches
from service.settings import Settings
from service.state import Backend, Served


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


async def get_resolver(request: Request) -> Resolver:
    resolver: Resolver = request.app.state.resolver
    return resolver


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BackendDep = Annotated[Backend, Depends(get_backend)]
ResolverDep = Annotated[Resolver, Depends(get_resolver)]


async def current_bundle(backend: BackendDep) -> Served:
    """The bundle this request uses from start to end (one reference, taken once); 503 while
    none is loaded."""
    current = backend.served
    if current is None:
        raise HTTPException(503, detail=backend.not_ready_because())
    return current


ServedBundle = Annotated[Served, Depends(current_bundle)]


# -- the hot routes ------------------------------------------------------------------------------
# /candidates and /score take the request alone and read the rest here: FastAPI resolves each
# declared dependency and body field per request with introspection that costs more than the
# search these routes exist for.

Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True)
class Context:
    settings: Settings
    metrics: Metrics
    resolver: Resolver
    searches: Searches
    served: Served  # the one bundle this request uses from start to end


def context(request: Request) -> Context:
    """What a hot route uses, with the served bundle taken once; 503 while none is loaded."""
    state = request.app.state
    served = state.backend.served
    if served is None:
        raise HTTPException(503, detail=state.backend.not_ready_because())
    return Context(state.settings, state.metrics, state.resolver, state.searches, served)


async def whole_body(request: Request) -> bytes:
    """The request body, read straight from ``receive``: Starlette's ``body()`` goes through an
    async generator per request, which costs more than parsing a small body. The hot routes read
    their body once, here, and nothing after them reads it again."""
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def body_of(request: Request, model: type[Body]) -> Body:
    """The request body as ``model``, parsed and validated in one pass from the JSON bytes;
    invalid input is FastAPI's 422 (each error's location under ``body``), a client gone before
    its body arrived a 400."""
    try:
        raw = await whole_body(request)
    except ClientDisconnect:
        raise HTTPException(400, detail="the client went away before its body arrived") from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None


async def parsed(request: Request, model: type[Body]) -> tuple[Context, Body]:
    """A hot route's start: its :func:`context` (503 first), then its body (:func:`body_of`),
    timed as stage ``parse``."""
    ctx = context(request)
    began = time.perf_counter()
    body = await body_of(request, model)
    ctx.metrics.stage("parse").observe(time.perf_counter() - began)
    return ctx, body


Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def hot(endpoint: Endpoint) -> Endpoint:
    """Mark a hot route's endpoint: :class:`service.middleware.HotLane` calls it straight, with
    the request alone (it reads the rest with :func:`parsed`)."""
    endpoint.argus_hot = True  # type: ignore[attr-defined]
    return endpoint


def is_hot(endpoint: Callable[..., Any]) -> bool:
    return getattr(endpoint, "argus_hot", False) is True


def hot_route(response: type[BaseModel], body: type[BaseModel]) -> dict[str, Any]:
    """The route decorator's arguments of a hot route that answers ``response`` and parses
    ``body`` itself: its answers, and ``body`` documented as its JSON request body (the schema
    is added to the components by ``service.app``)."""
    schema = {"$ref": f"#/components/schemas/{body.__name__}"}
    content = {"application/json": {"schema": schema}}
    return {
        "response_model": response,
        "responses": answers(400, 408, 413, 422, 503),
        "openapi_extra": {"requestBody": {"required": True, "content": content}},
    }
