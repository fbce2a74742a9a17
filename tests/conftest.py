"""Shared fixtures. Services are real: a ``redis-server`` process on a free loopback port
(installed by scripts/install.sh; a missing binary is an error, never a skip)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
from redis.cluster import RedisCluster

from argus.servers import RedisClusterServers, RedisServer, free_port
from index.bundle import HnswParams, build
from index.store import RedisClient, redis_client
from service.app import create_app
from service.protocol import uvicorn_options
from service.settings import Settings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real three-master Redis Cluster (started on first use)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@dataclass(frozen=True)
class RedisTarget:
    url: str
    cluster: bool

    def client(self) -> RedisClient:
        return redis_client(self.url, cluster=self.cluster)


@pytest.fixture(params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> Iterator[RedisTarget]:
    """An empty Redis: a single server, then (the same test again) a three-master cluster."""
    if request.param == "single":
        url = request.getfixturevalue("redis_url")
        yield RedisTarget(url, cluster=False)
        return
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    target = RedisTarget(cluster.url, cluster=True)
    client = target.client()
    assert isinstance(client, RedisCluster)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()
    yield target


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of a running, empty Redis (restarted if a previous test stopped it)."""
    if redis_server.process is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated service (about 10k events over 12 days), shared by the model tests."""
    from model.data.simulate import SimConfig, Simulator

    out = tmp_path_factory.mktemp("sim")
    Simulator(SimConfig(n_users=80, n_items=400, n_days=12, seed=3)).run(out, progress=False)
    return out


def tiny_finetune(data: Path, out: Path, *model: str, **settings: Any) -> Path:
    """A seconds-long fine-tuning run of the tiny preset from scratch (``model``: further
    ``ArgusConfig`` overrides; ``settings``: ``FinetuneConfig`` ones), holding out the last 3
    days, with the cold item embedding (so the service's tests score unknown items) and the
    items' negative counts: ``out``."""
    from model.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        data=str(data),
        out=str(out),
        preset="argus-tiny",
        model=("max_len=96", *model),
        test_days=3.0,
        batch_size=8,
        max_steps=3,
        tower_dim=24,
        cold_items=True,
        item_negatives=True,
        **settings,
    )
    finetune(cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def finetuned(sim_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fine-tuned model (a few steps: the values, not the quality, are under test), with
    the feedback readout on, so that every test of what it serves reads it."""
    return tiny_finetune(sim_data, tmp_path_factory.mktemp("finetuned"), readout_ridge=30.0)


@pytest.fixture(scope="session")
def exported(finetuned: Path, sim_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``argus export`` of the tiny fine-tuned model: a real encoder and real vectors."""
    from model.export import export

    out = tmp_path_factory.mktemp("exports") / "tiny"
    export(finetuned, sim_data, out, progress=False)
    return out


@pytest.fixture(scope="session")
def serving_root(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving") / "bundles"
    build(exported, root, HnswParams(k=20, sample=100, search="hnsw"), progress=False)
    return root


@pytest.fixture
def bundles(serving_root: Path, tmp_path: Path) -> Path:
    """A private copy of the bundle root (tests add and damage bundles)."""
    copy = tmp_path / "bundles"
    shutil.copytree(serving_root, copy)
    return copy


class ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test thread owns the signals
        pass


def serving(settings: Settings) -> Iterator[str]:
    """A real uvicorn server of the app on a free port, in a thread; yields its URL."""
    port = free_port()
    options = uvicorn_options(settings.server, in_process=True)  # as `argus serve` runs it
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", **options
    )
    server = ThreadedServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
