"""The service's one middleware, in plain ASGI (Starlette's ``@app.middleware("http")`` runs
every request through an extra task and memory streams, which cost more than some endpoints).

* Bodies over ``max_body_bytes`` get a 413: at once by ``Content-Length``, and by counting the
  bytes of a body sent without one (chunked), so no body is read past the limit.
* A body must arrive within ``body_timeout_s`` of the headers, else a 408 (a slow client holds
  no worker for long; its headers have their own deadline, :mod:`service.protocol`).
* Every request is counted and timed by route (``argus_requests_total``,
  ``argus_request_duration_seconds``); paths that match no route count as ``unmatched``. A client
  that hangs up before its body is sent is counted with status 499 (as nginx does) and kept out
  of the latency histogram: its wait was its own, not the service's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


def too_large(message: str) -> list[dict[str, Any]]:
    return [{"loc": ["body"], "msg": message}]


CLIENT_CLOSED = 499  # the client hung up before its request was whole


class Guard:
    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, body_timeout_s: float, metrics: Metrics
    ) -> None:
        self.app, self.limit, self.metrics = app, max_body_bytes, metrics
        self.body_timeout_s = body_timeout_s

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
            received, whole, aborted = 0, False, False
            deadline = asyncio.get_running_loop().time() + self.body_timeout_s

            async def counted() -> Message:
                nonlocal received, whole, aborted
                if whole:  # after the body: only a disconnect is left to wait for
                    return await receive()
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:  # FastAPI passes an HTTPException through as is
                    problem = f"body not received within {self.body_timeout_s:g} s"
                    raise HTTPException(408, detail=too_large(problem)) from None
                if message["type"] == "http.disconnect":
                    aborted = True
                elif message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    whole = not message.get("more_body", False)
                    if received > self.limit:
                        problem = f"body without Content-Length over the limit of {self.limit}"
                        raise HTTPException(413, detail=too_large(problem))
                return message

            async def sent(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, counted, sent)
            finally:
                if aborted:
                    status = CLIENT_CLOSED
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            if status != CLIENT_CLOSED:
                seconds = time.perf_counter() - began
                self.metrics.child(self.metrics.request_seconds, endpoint).observe(seconds)
            self.metrics.child(self.metrics.requests, endpoint, str(status)).inc()
