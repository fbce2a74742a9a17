"""The operations endpoints: liveness, readiness, the served bundle's manifest, Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import BackendDep, MetricsDep, ServedBundle
from service.replies import answers, json_response

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    responses={
        200: {"description": "Ready: a bundle is loaded and its encoder runs."},
        503: {"description": "Not ready; the body's reason says why."},
    },
)
async def readyz(backend: BackendDep) -> Response:
    """200 when this replica can answer (a bundle loaded, its encoder running). Redis's health
    is shown but not required: without Redis a replica still answers, flagged degraded."""
    reason = backend.not_ready_because()
    body: dict[str, object] = {"ready": reason is None, "model_version": backend.version}
    if reason is not None:
        body["reason"] = reason
    redis_health = backend.redis_health()
    if redis_health is not None:
        body["redis"] = redis_health
    store_health = backend.store_health()
    if store_health is not None:
        body["store"] = store_health
    return json_response(body, 200 if reason is None else 503)


# Manifest fields that name paths on the build machine: not for clients.
PRIVATE_FIELDS = ("source",)


@router.get("/bundle", responses=answers(503))
async def bundle_manifest(bundle: ServedBundle) -> Response:
    manifest = bundle.bundle.manifest
    return json_response({k: v for k, v in manifest.items() if k not in PRIVATE_FIELDS})


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format."}},
)
async def metrics_endpoint(backend: BackendDep, metrics: MetricsDep) -> Response:
    metrics.bundle_age.set(backend.bundle_age_s())
    alive = backend.served is not None and backend.served.batcher.alive
    metrics.encoder_alive.set(1.0 if alive else 0.0)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
