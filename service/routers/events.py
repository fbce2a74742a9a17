"""``POST /events``: append events to a user's live history (200: stored when it answers)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.deps import BackendDep, MetricsDep, ResolverDep, SettingsDep
from service.replies import answers, check_length
from service.schemas import EventsRequest, as_history
from service.settings import RequestSettings

router = APIRouter()

CLOSED = (
    "POST /events is closed: set ARGUS_EVENTS_TOKEN (clients then send "
    "'Authorization: Bearer <token>'), or ARGUS_EVENTS_OPEN=true to accept unauthenticated writes"
)


def authorize(settings: RequestSettings, authorization: str | None) -> None:
    """Refuse a write unless it carries the configured bearer token (401) or writes are open;
    with neither configured every write is refused (403). Compared as bytes in constant time:
    a header is any Latin-1 text, and comparing non-ASCII ``str`` would raise."""
    token = settings.events_token
    if token is None:
        if settings.events_open:
            return
        raise HTTPException(403, detail=CLOSED)
    given = (authorization or "").encode("utf-8")
    if not hmac.compare_digest(given, f"Bearer {token}".encode()):
        raise HTTPException(
            401,
            detail="POST /events needs 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="argus"'},
        )


# Declares the bearer scheme in /openapi.json; the header itself is checked by authorize.
BEARER = HTTPBearer(auto_error=False, description="ARGUS_EVENTS_TOKEN")


async def writer(
    settings: SettingsDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """The write's credentials, checked before its body is validated: a client without them
    learns nothing of the schema, and a bad body is not worth reading."""
    authorize(settings.requests, authorization)


@router.post(
    "/events", dependencies=[Depends(writer)], responses=answers(400, 401, 403, 408, 413, 503)
)
async def events(
    body: EventsRequest,
    settings: SettingsDep,
    backend: BackendDep,
    resolver: ResolverDep,
    metrics: MetricsDep,
) -> dict[str, Any]:
    check_length(body.events, settings.limits.max_history, "events", "events")
    history = as_history(body.events)
    try:
        await resolver.store(lambda: backend.history.append(body.user_id, history))
    except redis.RedisError as error:
        metrics.store_errors.inc()
        raise HTTPException(503, detail=f"live history store unavailable: {error}") from None
    return {"user_id": body.user_id, "appended": len(history)}
