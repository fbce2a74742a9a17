"""``/candidates`` through the service's ASGI app in this process, with no HTTP server around it:
what the route costs on its own, for ``benchmarks.serve --only overhead`` to set beside the same
requests over HTTP.

    python benchmarks/asgi_drive.py BODIES SECONDS CONNECTIONS

The app is ``service.app.create_app()`` configured by the environment (``ARGUS_BUNDLES`` and the
rest, as ``argus serve`` reads them), on uvloop as ``argus serve`` runs it. ``CONNECTIONS``
clients post the JSON bodies of the file ``BODIES`` (one a line, in turn) to ``/candidates``, each
sending its next request when its answer is whole, as wrk's keep-alive connections do: for
``WARM_S`` seconds to warm up (at a million items the rate climbs for about five), then for
``SECONDS``. Prints one line, ``ASGI_RESULT {"requests": N,
"seconds": S, "errors": E}`` (errors: answers other than 200).

Run by path, not as a module, so that ``PYTHONPATH`` alone chooses which checkout's ``service``
it drives (``benchmarks.serve --server-path``): a worktree of an older commit need not have this
file. It imports nothing of this repository but ``service``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from itertools import count
from pathlib import Path
from typing import Any

import orjson
import uvloop

WARM_S = 5.0  # seconds of load before the timed ones


def scope_of(body: bytes) -> dict[str, Any]:
    """An HTTP/1.1 ``POST /candidates`` as uvicorn hands it to the app."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/candidates",
        "raw_path": b"/candidates",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def post(app: Any, body: bytes) -> int:
    """One request through ``app``: its status."""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays until the answer is whole
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope_of(body), receive, send)
    return status


async def drive(app: Any, bodies: list[bytes], seconds: float, connections: int) -> dict[str, Any]:
    """``connections`` clients in a closed loop: requests answered and errors, after warming."""
    async with app.router.lifespan_context(app):
        while app.state.backend.served is None:  # the bundle loads in the background
            await asyncio.sleep(0.05)
        turn = count()
        done = errors = 0

        async def client(deadline: float) -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                status = await post(app, bodies[next(turn) % len(bodies)])
                done += 1
                errors += status != 200

        warm = time.perf_counter() + WARM_S
        await asyncio.gather(*(client(warm) for _ in range(connections)))
        done = errors = 0
        began = time.perf_counter()
        await asyncio.gather(*(client(began + seconds) for _ in range(connections)))
        return {"requests": done, "seconds": time.perf_counter() - began, "errors": errors}


def main() -> None:
    path, seconds, connections = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    from service.app import create_app  # after the arguments: a usage error costs no import

    bodies = [line for line in path.read_bytes().splitlines() if line.strip()]
    result = uvloop.run(drive(create_app(), bodies, seconds, connections))
    print("ASGI_RESULT " + orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
