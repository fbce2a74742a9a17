"""The FastAPI app (DESIGN.md §8): ``/candidates``, ``/score``, ``/events`` and the ops endpoints.

Every request takes one reference to the served bundle and uses only it, so a reload in the
middle of a request never mixes versions. Blocking work (Redis, hnswlib, numpy) runs in worker
threads, the runtime encoder in its own batching thread; the event loop only routes.

User vector, in order (the response's ``source``):

1. ``realtime`` — the live history (the request's, else the user's list in the store) through the
   runtime encoder, when the request asks (``mode="realtime"``, or ``"auto"`` with a history in
   the request) or the service is configured to (``realtime_first``);
2. ``stored`` — the user's vector of the served version;
3. ``history`` — the runtime encoder on the stored live history (a user newer than the bundle);
4. ``popular`` — no vector: the bundle's popularity ranking (``/candidates``) or no scores.

``degraded`` is true when the store failed and a later source had to answer.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import orjson
import redis
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from index.bundle import rows_of
from index.hnsw import exact_top_k
from index.store import VersionUnavailable
from model.contract import HISTORY_EVENT
from service.metrics import Metrics
from service.middleware import Guard
from service.settings import Mode, Settings
from service.state import Backend, Served

T = TypeVar("T")

# -- request and response bodies ---------------------------------------------------------------


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: int
    timestamp: int  # seconds
    source: int = Field(0, ge=0, le=32_767)
    artist_id: int = -1
    played_ratio: float | None = Field(None, ge=0)
    liked: bool = False
    disliked: bool = False


class CandidatesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int
    k: int = Field(100, ge=1)
    exclude_seen: bool = True
    exclude_item_ids: list[int] = []
    history: list[Event] | None = None
    mode: Mode | None = None


class Candidate(BaseModel):
    item_id: int
    score: float | None


class CandidatesResponse(BaseModel):
    user_id: int
    model_version: str
    source: str
    degraded: bool
    items: list[Candidate]
    took_ms: float


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int
    item_ids: list[int] = Field(min_length=1)
    history: list[Event] | None = None
    mode: Mode | None = None
    return_vectors: bool = False
    # "base64": each vector array as base64 of little-endian float32 (rows of unknown items are
    # zeros): about 10x cheaper to produce and parse than JSON numbers, half the bytes.
    vectors_format: Literal["json", "base64"] = "json"


class ScoreResponse(BaseModel):
    user_id: int
    model_version: str
    source: str
    degraded: bool
    scores: list[float | None]
    unknown_item_ids: list[int]
    user_vector: list[float] | str | None = None
    item_vectors: list[list[float] | None] | str | None = None
    took_ms: float


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int
    events: list[Event] = Field(min_length=1)


def as_history(events: list[Event]) -> np.ndarray:
    """The events as HISTORY_EVENT records, oldest first."""
    out = np.array(
        [
            (e.item_id, e.artist_id, e.timestamp, e.source,
             np.nan if e.played_ratio is None else e.played_ratio, e.liked, e.disliked)
            for e in events
        ],
        dtype=HISTORY_EVENT,
    )  # fmt: skip
    return out[np.argsort(out["timestamp"], kind="stable")]


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    """orjson with numpy arrays serialised natively (cheap ``return_vectors``)."""
    data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(data, status_code=status, media_type="application/json")


def base64_f32(array: np.ndarray) -> str:
    """``array`` as base64 of its little-endian float32 bytes, row-major (numpy reads it back
    with ``np.frombuffer(base64.b64decode(text), "<f4")``)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def problem(status: int, field: str, message: str) -> HTTPException:
    """An error in the shape FastAPI uses for validation errors: the field, then the message."""
    return HTTPException(status, detail=[{"loc": ["body", field], "msg": message}])


def current_bundle(request: Request) -> Served:
    """The bundle this request uses from start to end (one reference, taken once)."""
    backend: Backend = request.app.state.backend
    current = backend.served
    if current is None:
        raise HTTPException(503, detail=backend.not_ready_because())
    return current


ServedBundle = Annotated[Served, Depends(current_bundle)]


# -- the user vector ---------------------------------------------------------------------------


@dataclass
class UserVector:
    vector: np.ndarray | None
    source: str
    degraded: bool
    history: np.ndarray  # the live history used (for exclude_seen), maybe empty


@dataclass
class Lookup:
    history: np.ndarray  # the stored live history, maybe empty
    vector: np.ndarray | None  # the stored vector of the served version, when found and asked
    degraded: bool  # a store failed


class Resolver:
    def __init__(self, backend: Backend, settings: Settings, metrics: Metrics) -> None:
        self.backend, self.settings, self.metrics = backend, settings, metrics

    async def stage(self, name: str, work: Callable[[], T], *, offload: bool) -> T:
        """``work()`` timed as ``name``, in a worker thread when ``offload``, else inline (a
        thread hop costs more than a lookup in memory)."""
        began = time.perf_counter()
        try:
            return await asyncio.to_thread(work) if offload else work()
        finally:
            self.metrics.stage_seconds.labels(name).observe(time.perf_counter() - began)

    async def store(self, work: Callable[[], T]) -> T:
        """A store call: in a worker thread when it may wait on Redis."""
        return await self.stage("store", work, offload=self.backend.redis is not None)

    async def encode(self, served: Served, history: np.ndarray) -> np.ndarray:
        began = time.perf_counter()
        try:
            return await served.batcher.encode(history)  # the encoder keeps the newest max_len
        finally:
            self.metrics.stage_seconds.labels("encoder").observe(time.perf_counter() - began)

    def lookup(self, served: Served, user_id: int, history: bool, realtime: bool) -> Lookup:
        """One trip to the stores (blocking): the live history when ``history`` is asked, then
        the stored vector unless the realtime path will answer from a non-empty history."""
        events, degraded = np.empty(0, dtype=HISTORY_EVENT), False
        if history:
            try:
                (events,) = self.backend.history.get([user_id])
            except redis.RedisError:
                self.metrics.store_errors.inc()
                degraded = True
        if realtime and len(events):
            return Lookup(events, None, degraded)
        try:
            vectors, found = served.store.get(served.version, [user_id])
            return Lookup(events, vectors[0] if found[0] else None, degraded)
        except (redis.RedisError, VersionUnavailable):
            self.metrics.store_errors.inc()
            return Lookup(events, None, True)

    async def resolve(
        self, served: Served, user_id: int, events: list[Event] | None, mode: Mode | None
    ) -> UserVector:
        mode = mode or self.settings.default_mode
        given = as_history(events) if events is not None else None
        realtime = mode == "realtime" or (
            mode == "auto" and (given is not None or self.settings.realtime_first)
        )
        if realtime and given is not None and len(given):
            return UserVector(await self.encode(served, given), "realtime", False, given)
        found = await self.store(lambda: self.lookup(served, user_id, given is None, realtime))
        history = found.history if given is None else given
        if realtime and len(history):
            return UserVector(
                await self.encode(served, history), "realtime", found.degraded, history
            )
        if found.vector is not None:
            return UserVector(found.vector, "stored", found.degraded, history)
        if mode != "offline" and len(history):
            encoded = await self.encode(served, history)
            return UserVector(encoded, "history", found.degraded, history)
        return UserVector(None, "popular", found.degraded, history)


# -- the app -----------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    backend = Backend(settings, metrics)
    resolver = Resolver(backend, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await backend.refresh()
        reloader = asyncio.create_task(backend.reload_forever())
        yield
        reloader.cancel()
        backend.close()

    app = FastAPI(
        title="argus",
        summary="ARGUS candidates and ranking features from the daily bundle and live histories.",
        lifespan=lifespan,
    )
    app.state.backend = backend

    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes, metrics=metrics)

    @app.post("/candidates", response_model=CandidatesResponse)
    async def candidates(body: CandidatesRequest, bundle: ServedBundle) -> Response:
        began = time.perf_counter()
        if body.k > settings.max_k:
            raise problem(422, "k", f"k = {body.k} is over the limit of {settings.max_k}")
        check_history(body.history)
        user = await resolver.resolve(bundle, body.user_id, body.history, body.mode)
        metrics.vector_source.labels("/candidates", user.source).inc()
        excluded = set(body.exclude_item_ids)
        if body.exclude_seen:
            excluded.update(user.history["item_id"].tolist())
        items = await resolver.stage(
            "ann",
            lambda: top_k(bundle, user.vector, body.k, excluded),
            offload=settings.ann_offload,
        )
        ser = time.perf_counter()
        response = json_response(
            {
                "user_id": body.user_id,
                "model_version": bundle.version,
                "source": user.source,
                "degraded": user.degraded,
                "items": items,
                "took_ms": 1e3 * (time.perf_counter() - began),
            }
        )
        metrics.stage_seconds.labels("serialize").observe(time.perf_counter() - ser)
        return response

    @app.post("/score", response_model=ScoreResponse)
    async def score(body: ScoreRequest, bundle: ServedBundle) -> Response:
        began = time.perf_counter()
        if len(body.item_ids) > settings.max_score_items:
            raise problem(
                422, "item_ids",
                f"{len(body.item_ids)} items is over the limit of {settings.max_score_items}",
            )  # fmt: skip
        check_history(body.history)
        user = await resolver.resolve(bundle, body.user_id, body.history, body.mode)
        metrics.vector_source.labels("/score", user.source).inc()
        ids = np.asarray(body.item_ids, dtype=np.int64)
        rows, known = rows_of(bundle.bundle.item_ids, ids)
        vectors = bundle.bundle.item_vectors[rows]
        scores: list[float | None] = [None] * len(ids)
        if user.vector is not None:
            values = vectors @ user.vector
            scores = [
                float(v) if k else None
                for v, k in zip(values.tolist(), known.tolist(), strict=True)
            ]
        out: dict[str, Any] = {
            "user_id": body.user_id,
            "model_version": bundle.version,
            "source": user.source,
            "degraded": user.degraded,
            "scores": scores,
            "unknown_item_ids": ids[~known].tolist(),
        }
        if body.return_vectors and body.vectors_format == "base64":
            out["user_vector"] = None if user.vector is None else base64_f32(user.vector)
            out["item_vectors"] = base64_f32(np.where(known[:, None], vectors, 0))
        elif body.return_vectors:
            out["user_vector"] = user.vector
            out["item_vectors"] = (
                vectors
                if known.all()
                else [v if k else None for v, k in zip(vectors, known, strict=True)]
            )
        ser = time.perf_counter()
        out["took_ms"] = 1e3 * (ser - began)
        response = json_response(out)
        metrics.stage_seconds.labels("serialize").observe(time.perf_counter() - ser)
        return response

    @app.post("/events")  # 200: the events are stored when it answers
    async def events(
        body: EventsRequest, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        if settings.events_token is not None:
            expected = f"Bearer {settings.events_token}"
            if authorization is None or not hmac.compare_digest(authorization, expected):
                raise HTTPException(
                    401, detail="POST /events needs 'Authorization: Bearer <token>'"
                )
        check_history(body.events, field="events")
        history = as_history(body.events)
        try:
            await resolver.store(lambda: backend.history.append(body.user_id, history))
        except redis.RedisError as error:
            metrics.store_errors.inc()
            raise HTTPException(503, detail=f"live history store unavailable: {error}") from None
        return {"user_id": body.user_id, "appended": len(history)}

    def check_history(events: list[Event] | None, field: str = "history") -> None:
        if events is not None and len(events) > settings.max_history:
            raise problem(
                422, field, f"{len(events)} events is over the limit of {settings.max_history}"
            )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> Response:
        reason = await asyncio.to_thread(backend.not_ready_because)
        if reason is not None:
            return json_response(
                {"ready": False, "reason": reason, "model_version": backend.version}, 503
            )
        return json_response({"ready": True, "model_version": backend.version})

    @app.get("/bundle")
    async def bundle_manifest(bundle: ServedBundle) -> Response:
        return json_response(bundle.bundle.manifest)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        metrics.bundle_age.set(backend.bundle_age_s())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, error: RequestValidationError) -> Response:
        return json_response({"detail": [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()
        ]}, 422)  # fmt: skip

    return app


def top_k(
    served: Served, vector: np.ndarray | None, k: int, excluded: set[int]
) -> list[dict[str, Any]]:
    """The ``k`` best items for ``vector`` (or the popular ones) not in ``excluded``; fetches more
    and retries until it has ``k`` or the whole catalog was searched."""
    bundle = served.bundle
    n = len(bundle.item_ids)
    banned = np.fromiter(excluded, np.int64, len(excluded))
    if vector is None:
        popular = bundle.popular
        return [{"item_id": int(i), "score": None} for i in popular[~np.isin(popular, banned)][:k]]
    assert bundle.index is not None
    fetch = min(n, k + len(excluded))
    while True:
        if 2 * fetch > n:  # most of the catalog: exact search is as cheap and never comes up short
            rows = exact_top_k(vector[None, :], bundle.item_vectors, k + len(excluded))[0]
            ids, scores = bundle.item_ids[rows], bundle.item_vectors[rows] @ vector
        else:
            found, _ = bundle.index.knn(vector[None, :], fetch)
            # Exact inner products (the MIPS transform's are off in the 7th digit), so a score
            # here equals /score's for the same item, and the order follows it.
            rows = found[0]
            scores = bundle.item_vectors[rows] @ vector
            order = np.argsort(-scores, kind="stable")
            ids, scores = bundle.item_ids[rows[order]], scores[order]
        keep = ~np.isin(ids, banned)
        if keep.sum() >= k or 2 * fetch > n:
            return [
                {"item_id": int(i), "score": float(s)}
                for i, s in zip(ids[keep][:k], scores[keep][:k], strict=True)
            ]
        fetch = min(n, 2 * fetch)
