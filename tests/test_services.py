"""The session's Redis is a real server that speaks the protocol and survives a restart."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from argus.servers import RedisServer


def test_redis_is_a_real_server_storing_raw_float32(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    vector = np.arange(8, dtype="<f4")
    client.set("argus:test:vector", vector.tobytes())
    assert np.array_equal(np.frombuffer(client.get("argus:test:vector"), dtype="<f4"), vector)  # type: ignore[arg-type]
    assert client.info("server")["redis_version"].split(".")[0].isdigit()


def test_redis_can_be_stopped_and_restarted(redis_server: RedisServer, redis_url: str) -> None:
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=0.2).ping()
    redis_server.start()
    assert redis.Redis.from_url(redis_url).ping()
