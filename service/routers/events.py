"""``POST /events``: append events to a user's live history (200: stored when it answers)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, HTTPException

from service.deps import BackendDep, MetricsDep, ResolverDep, SettingsDep
from service.replies import check_length
from service.schemas import EventsRequest, as_history

router = APIRouter()


@router.post("/events")
async def events(
    body: EventsRequest,
    settings: SettingsDep,
    backend: BackendDep,
    resolver: ResolverDep,
    metrics: MetricsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    token = settings.requests.events_token
    if token is not None:
        expected = f"Bearer {token}"
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise HTTPException(401, detail="POST /events needs 'Authorization: Bearer <token>'")
    check_length(body.events, settings.limits.max_history, "events", "events")
    history = as_history(body.events)
    try:
        await resolver.store(lambda: backend.history.append(body.user_id, history))
    except redis.RedisError as error:
        metrics.store_errors.inc()
        raise HTTPException(503, detail=f"live history store unavailable: {error}") from None
    return {"user_id": body.user_id, "appended": len(history)}
