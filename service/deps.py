"""What routes receive through ``Annotated[..., Depends()]``: the process's
settings, metrics, backend and resolver (set on ``app.state`` by :func:`service.app.create_app`),
and the one bundle a request uses from start to end.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread,
a hop that costs more than these lookups."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.metrics import Metrics
from service.resolve import Resolver
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
