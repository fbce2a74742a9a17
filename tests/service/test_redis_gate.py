"""The Redis gate bounds the calls a slow Redis can hold, and a password-protected Redis
(``requirepass``) is reached by publish and the service with the password from the environment
or a mounted secret file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from argus.cli import app
from argus.servers import RedisServer, SlowProxy
from index.bundle import Bundle
from index.store import RedisAuth, connect
from service.metrics import Metrics
from service.redis_gate import RedisGate, RedisUnavailable
from service.settings import Settings, StoreSettings
from tests.service.conftest import client_for


def test_a_slow_redis_holds_at_most_the_gates_workers_and_the_rest_is_not_tried(
    redis_server: RedisServer, redis_url: str
) -> None:
    proxy = SlowProxy(redis_server.port)
    proxy.delay_s = 0.3
    client = redis.Redis.from_url(proxy.url, socket_timeout=2)
    metrics = Metrics()
    gate = RedisGate(client, metrics, workers=2, failures_to_open=100)

    async def flood() -> list[object]:
        calls = [gate.call(lambda: client.get("x")) for _ in range(20)]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        answers = asyncio.run(flood())
    finally:
        gate.close()
        proxy.close()
    shed = [a for a in answers if isinstance(a, RedisUnavailable)]
    assert len(shed) == 20 - 4 * 2 and all("busy" in str(a) for a in shed)
    assert sum(a is None for a in answers) == 8  # the rest waited for a worker and answered
    assert metrics.redis_shed.labels("busy")._value.get() == 12


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("guarded"), password="hunter2-but-longer")
    server.start()
    yield server
    server.stop()


def test_publish_and_the_service_use_the_configured_redis_password(
    guarded: RedisServer, bundles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (path,) = list(bundles.iterdir())
    monkeypatch.delenv("ARGUS_REDIS_PASSWORD", raising=False)
    with pytest.raises(ConnectionError, match="cannot reach Redis"):
        connect(guarded.url)  # no password: refused by requirepass
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "argus_redis_password").write_text("hunter2-but-longer\n")
    mounted = RedisAuth(_secrets_dir=secrets).redis_password  # type: ignore[call-arg]
    assert mounted is not None and mounted.get_secret_value() == "hunter2-but-longer"

    monkeypatch.setenv("ARGUS_REDIS_PASSWORD", "hunter2-but-longer")
    published = CliRunner().invoke(
        app, ["publish", "--bundle", str(path), "--redis-url", guarded.url, "--quiet"]
    )
    assert published.exit_code == 0, published.output
    bundle = Bundle.open(path, with_index=False)
    user = int(bundle.user_ids[0])
    with client_for(Settings(store=StoreSettings(bundles=bundles, redis_url=guarded.url))) as c:
        out = c.post("/candidates", json={"user_id": user, "k": 3}).json()
        assert out["source"] == "stored" and not out["degraded"]
        assert "hunter2" not in c.get("/readyz").text


def test_the_service_serves_from_a_redis_cluster(bundles: Path, redis_cluster: object) -> None:
    """Vectors published to a real three-master Redis Cluster, live histories written there: the
    same answers as from one server."""
    from argus.servers import RedisClusterServers
    from index.store import RedisStore, publish, redis_client
    from service.settings import RequestSettings

    assert isinstance(redis_cluster, RedisClusterServers)
    (path,) = list(bundles.iterdir())
    bundle = Bundle.open(path, with_index=False)
    client = redis_client(redis_cluster.url, cluster=True)
    client.flushall(target_nodes=client.PRIMARIES)  # type: ignore[union-attr]
    publish(bundle, client, progress=False)
    users = bundle.user_ids[:50]
    vectors, found = RedisStore(client).get(bundle.version, users)  # MGET split by slot
    assert found.all() and (vectors == bundle.user_vectors[:50]).all()
    store = StoreSettings(bundles=bundles, redis_url=redis_cluster.url, redis_cluster=True)
    settings = Settings(store=store, requests=RequestSettings(events_open=True))
    with client_for(settings) as service:
        for user in users[:5].tolist():
            out = service.post("/candidates", json={"user_id": user, "k": 3}).json()
            assert out["source"] == "stored" and not out["degraded"], out
        stranger = int(bundle.user_ids.max()) + 1
        event = {"item_id": int(bundle.item_ids[0]), "timestamp": 1_700_000_000}
        written = service.post("/events", json={"user_id": stranger, "events": [event]})
        assert written.status_code == 200
        out = service.post("/candidates", json={"user_id": stranger, "k": 3}).json()
        assert out["source"] == "history" and not out["degraded"], out
        assert service.get("/readyz").json()["redis"].startswith("up")
