"""The service's one middleware, in plain ASGI (Starlette's ``@app.middleware("http")`` runs
every request through an extra task and memory streams, which cost more than some endpoints).

* Bodies over ``max_body_bytes`` get a 413: at once by ``Content-Length``, and by counting the
  bytes of a body sent without one (chunked), so no body is read past the limit.
* Every request is counted and timed by route (``argus_requests_total``,
  ``argus_request_duration_seconds``); paths that match no route count as ``unmatched``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


def too_large(message: str) -> list[dict[str, Any]]:
    return [{"loc": ["body"], "msg": message}]


class Guard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.perf_counter(), 500
        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                status = 413
                body = orjson.dumps(
                    {
                        "detail": too_large(
                            f"body of {length.decode()} bytes is over the limit of {self.limit}"
                        )
                    }
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            received = 0

            async def counted() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.limit:  # FastAPI passes an HTTPException through as is
                        problem = f"body without Content-Length over the limit of {self.limit}"
                        raise HTTPException(413, detail=too_large(problem))
                return message

            async def sent(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await self.app(scope, counted, sent)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - began)
            self.metrics.requests.labels(endpoint, str(status)).inc()
