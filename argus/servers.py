"""Real servers and tools for the tests and the benchmarks: a throwaway local ``redis-server`` on
a free loopback port (the Debian package that scripts/install.sh installs, never a fake; no
persistence; it can be stopped and restarted on the same port), a proxy that makes it slow, and
schemathesis against a live service."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real redis-server on 127.0.0.1 that tests can stop and restart (same port)."""

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run scripts/install.sh (apt-get redis-server)"
            )
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.password = password
        self.extra: list[str] = []  # more redis-server arguments (cluster mode)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "no",
                *(["--requirepass", self.password] if self.password else []),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2, password=self.password)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with code {self.process.returncode}"
                    ) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"redis-server not ready on port {self.port} after {timeout} s"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


class RedisClusterServers:
    """A real Redis Cluster of three masters (no replicas) on free loopback ports: three
    ``redis-server --cluster-enabled yes`` processes joined by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = []
        for index in range(masters):
            node = RedisServer(workdir / f"node{index}")
            node.workdir.mkdir(parents=True, exist_ok=True)
            node.extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
            # the bus port defaults to port + 10000, past 65535 for a high ephemeral port
            node.extra += ["--cluster-port", str(free_port())]
            self.nodes.append(node)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed: run scripts/install.sh")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        command = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        created = subprocess.run([*command, "--cluster-yes"], capture_output=True, text=True)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            while client.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.1)
            client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SlowProxy:
    """A TCP proxy in front of ``port`` (on 127.0.0.1) that holds every reply for ``delay_s``
    (0: passes bytes straight through): a Redis that accepts connections and answers late."""

    def __init__(self, port: int) -> None:
        self.target, self.delay_s = port, 0.0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self.delay_s:
                    time.sleep(self.delay_s)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self.listener.close()


def fuzz(url: str, *, examples: int, token: str | None, workers: int = 1) -> dict[str, Any]:
    """schemathesis, every check, against ``url``'s live /openapi.json (with the events
    ``token`` when there is one): cases generated and failures."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        raise RuntimeError("schemathesis is not installed (the dev extra has it)")
    command = [
        st,
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(examples),
        *(["--header", f"Authorization: Bearer {token}"] if token else []),
        "--workers",
        str(workers),
        "--seed",
        "1",
        "--no-color",
    ]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    output = done.stdout + done.stderr
    generated = re.search(r"Test cases:\s*\n?\s*(\d+) generated", output)
    failures = re.search(r"(\d+) (?:unique )?failures?", output)
    return {
        "cases": int(generated[1]) if generated else 0,
        "failures": int(failures[1]) if failures else (0 if done.returncode == 0 else -1),
        "exit_code": done.returncode,
        "seconds": time.perf_counter() - began,
        "tail": output[-3000:],
    }
