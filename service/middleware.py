"""The service's middleware, in plain ASGI (Starlette's ``@app.middleware("http")`` runs every
request through an extra task and memory streams, which cost more than some endpoints).

:class:`Guard`, around every request:

* Bodies over ``max_body_bytes`` get a 413: at once by ``Content-Length``, and by counting the
  bytes of a body sent without one (chunked), so no body is read past the limit.
* A body must arrive within ``body_timeout_s`` of the headers, else a 408 (a slow client holds
  no worker for long; its headers have their own deadline, :mod:`service.protocol`).
* Every request is counted and timed by route (``argus_requests_total``,
  ``argus_request_duration_seconds``); paths that match no route count as ``unmatched``. A client
  that hangs up before its body is sent is counted with status 499 (as nginx does) and kept out
  of the latency histogram: its wait was its own, not the service's.

:class:`HotLane`, inside it: the hot routes (``/candidates``, ``/score``) straight to their
endpoints, past the router and FastAPI's per-request wrappers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import HTTPException
from fastapi.routing import APIRoute
from starlette.requests import Request
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


class HotLane:
    """``POST`` to a hot route's exact path goes straight to its endpoint (a function of the
    request alone, :func:`service.deps.hot_route`), which costs a third of what the router and
    FastAPI's wrappers around it cost. The endpoint's ``HTTPException`` and validation errors get
    the app's own handlers, so every answer is the one the router would give; anything else
    (another method, a trailing slash, a ``root_path``) takes the usual way."""

    def __init__(self, app: ASGIApp, *, routes: list[APIRoute]) -> None:
        self.app = app
        self.routes = {route.path: route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what Guard labels its series with, as the router would set it
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as error:
            handler = handler_of(scope["app"], error)
            if handler is None:
                raise
            response = await handler(request, error)
        await response(scope, receive, send)


def handler_of(app: Any, error: Exception) -> Any:
    """The app's exception handler for ``error`` (by its class, nearest first), or None."""
    handlers = app.exception_handlers
    return next((handlers[c] for c in type(error).__mro__ if c in handlers), None)
