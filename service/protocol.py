"""uvicorn's httptools protocol with a deadline on request headers.

uvicorn closes idle keep-alive connections, but a client that opens a connection and sends a
request line and half its headers holds it for ever: the app never sees the request, so nothing
in it can time it out. This protocol gives each request's headers ``header_timeout_s`` from the
connection (or from the request's first byte, on a kept-alive one); a slower client gets a 408
and the connection is closed. The body's deadline is the app's (:mod:`service.middleware`).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import ServerSettings

_BODY = b'{"detail":[{"loc":["header"],"msg":"request headers too slow"}]}'
TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


@functools.cache
def env_header_timeout_s() -> float:
    return ServerSettings().header_timeout_s


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers do not arrive in time."""

    header_timeout_s: float | None = None  # None: ARGUS_HEADER_TIMEOUT_S, read once per process
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a kept-alive connection's next request
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        timeout = self.header_timeout_s or env_header_timeout_s()
        self._deadline = self.loop.call_later(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.write(TIMEOUT_408)
            self.transport.close()


def uvicorn_options(limits: ServerSettings, *, in_process: bool = False) -> dict[str, Any]:
    """uvicorn's settings for ``limits``. Worker processes read the header deadline from the
    environment (uvicorn pickles the protocol class by name); a server in this process
    (``in_process``: tests, benchmarks) gets a protocol with ``limits``' own deadline."""
    protocol: type[HeaderDeadlineProtocol] = HeaderDeadlineProtocol
    if in_process:
        timeout = {"header_timeout_s": limits.header_timeout_s}
        protocol = type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), timeout)
    return {
        "loop": "uvloop",
        "http": protocol,
        "timeout_keep_alive": limits.keep_alive_s,
        "limit_concurrency": limits.max_connections,
    }
