"""The HTTP server's own limits, against a real uvicorn server run as `argus serve` runs it:
slow headers and bodies get a 408, a client that hangs up is not a latency sample, and the
connections one worker holds are capped; and one connection's answers come whole, one after
another, through ``100 Continue`` and ``HEAD``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import EncoderSettings, ServerSettings, Settings, StoreSettings
from tests.conftest import serving

BODY = b'{"user_id": 1, "k": 5}'


def ask(url: str) -> int:
    """A whole, well-formed /candidates request's status."""
    return httpx.post(f"{url}/candidates", json={"user_id": 1, "k": 5}, timeout=5).status_code


@pytest.fixture
def server(bundles: Path) -> Iterator[str]:
    limits = ServerSettings(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=8)
    settings = Settings(
        store=StoreSettings(bundles=bundles), server=limits, encoder=EncoderSettings(max_delay_ms=0)
    )
    yield from serving(settings)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def sample(url: str, series: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_headers_that_do_not_arrive_in_time_get_a_408_and_a_closed_connection(
    server: str,
) -> None:
    sock = connect(server)
    began = time.monotonic()
    sock.sendall(b"POST /candidates HTTP/1.1\r\nHost: argus\r\nContent-Type: appl")
    reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 408") and b"headers too slow" in reply, reply
    assert 0.4 < time.monotonic() - began < 3
    # A connection that sends nothing at all is closed the same way.
    idle = connect(server)
    assert answer(idle).startswith(b"HTTP/1.1 408")


def test_a_body_that_does_not_arrive_in_time_gets_a_408_naming_it(server: str) -> None:
    sock = connect(server)
    head = "POST /candidates HTTP/1.1\r\nHost: argus\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY[:5])
    began = time.monotonic()
    sock.settimeout(5)
    reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"body not received within 0.5 s" in reply
    assert 0.4 < time.monotonic() - began < 3
    # A whole request on a fresh connection is answered as ever.
    assert ask(server) == 200


def test_a_client_that_hangs_up_mid_body_is_a_499_and_no_latency_sample(server: str) -> None:
    assert ask(server) == 200
    count = 'argus_request_duration_seconds_count{endpoint="/candidates"}'
    before = sample(server, count)
    sock = connect(server)
    head = "POST /candidates HTTP/1.1\r\nHost: argus\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY[:5])
    time.sleep(0.2)
    sock.close()
    aborted = 'argus_requests_total{endpoint="/candidates",status="499"}'
    deadline = time.monotonic() + 5
    while sample(server, aborted) < 1:
        assert time.monotonic() < deadline, "the hang-up was never counted"
        time.sleep(0.05)
    assert sample(server, count) == before
    assert sample(server, 'argus_requests_total{endpoint="/candidates",status="400"}') == 0


def test_connections_beyond_the_cap_get_a_503_and_the_held_ones_are_released(
    server: str,
) -> None:
    held = [connect(server) for _ in range(8)]
    time.sleep(0.1)
    try:
        assert ask(server) == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while ask(server) != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_responses_are_whole_on_a_kept_alive_connection_after_100_continue_and_to_head(
    server: str,
) -> None:
    sock = connect(server)
    request = (
        b"POST /candidates HTTP/1.1\r\nHost: argus\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % len(BODY)
    )
    for _ in range(2):  # one connection, two requests
        sock.sendall(request + b"\r\n" + BODY)
        head, body = reply(sock)
        assert head.startswith(b"HTTP/1.1 200") and b'"items"' in body, head + body
    sock.sendall(request + b"Expect: 100-continue\r\n\r\n")
    assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(BODY)
    head, body = reply(sock)
    assert head.startswith(b"HTTP/1.1 200") and b'"items"' in body, head + body
    sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: argus\r\n\r\n")
    head, body = reply(sock, with_body=False)
    assert head.startswith(b"HTTP/1.1 405") and body == b"", head
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: argus\r\n\r\n")  # the connection still serves
    head, body = reply(sock)
    assert head.startswith(b"HTTP/1.1 200") and body == b'{"status":"alive"}', head + body
    sock.close()


def reply(sock: socket.socket, *, with_body: bool = True) -> tuple[bytes, bytes]:
    """One response on a kept-alive connection: its head and its body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"content-length: (\d+)", head, re.I)
    length = int(found.group(1)) if found and with_body else 0
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_the_server_runs_numpys_blas_on_one_thread_unless_told_otherwise() -> None:
    """``run_server`` sets it in its own process (numpy is loaded by then) and, through the
    environment, in the workers it starts; an explicit ``OPENBLAS_NUM_THREADS`` wins."""
    check = (
        "import numpy, os; from threadpoolctl import threadpool_info as info, threadpool_limits;"
        "threadpool_limits(2, user_api='blas');"  # as on a 2-core machine, whatever this one is
        "from service.cli import one_blas_thread; one_blas_thread();"
        "print(os.environ['OPENBLAS_NUM_THREADS'],"
        " *{p['num_threads'] for p in info() if p['user_api'] == 'blas'})"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    for told, expected in ((None, "1 1"), ("2", "2 2")):
        run = subprocess.run(
            [sys.executable, "-c", check],
            env=env if told is None else {**env, "OPENBLAS_NUM_THREADS": told},
            capture_output=True,
            text=True,
            check=True,
        )
        assert run.stdout.split() == expected.split()
