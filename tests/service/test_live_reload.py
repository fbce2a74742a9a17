"""A new version published under load, against a real uvicorn server and a real Redis."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from index.bundle import Bundle, HnswParams, build
from index.store import publish
from service.settings import Settings, StoreSettings
from tests.conftest import serving


def changed_export(exported: Path, out: Path) -> Path:
    """The same users and items with different vectors: any mixing of versions shows."""
    shutil.copytree(exported, out)
    for name, scale in (("user_vectors.npy", -1.0), ("item_vectors.npy", 2.0)):
        np.save(out / name, (np.load(out / name) * scale).astype(np.float32))
    return out


@pytest.fixture
def server_url(bundles: Path, redis_url: str) -> Iterator[str]:
    (path,) = list(bundles.iterdir())
    publish(Bundle.open(path, with_index=False), redis.Redis.from_url(redis_url), progress=False)
    settings = Settings(
        store=StoreSettings(bundles=bundles, redis_url=redis_url, reload_interval_s=0.05)
    )
    yield from serving(settings)


def test_publishing_under_concurrent_load_fails_nothing_and_mixes_nothing(
    server_url: str, bundles: Path, exported: Path, redis_url: str, tmp_path: Path
) -> None:
    (old_path,) = list(bundles.iterdir())
    old = Bundle.open(old_path, with_index=False)
    users = old.user_ids[:10].tolist()
    items = old.item_ids[:25].tolist()
    responses: list[tuple[int, int, dict]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=server_url, timeout=10) as http:
            i = worker
            while not stop.is_set():
                user = users[i % len(users)]
                r = http.post("/score", json={"user_id": user, "item_ids": items})
                with lock:
                    responses.append((r.status_code, user, r.json()))
                i += 1

    workers = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        new_dir = build(
            changed_export(exported, tmp_path / "export2"),
            bundles,
            HnswParams(k=20, search="hnsw"),
            progress=False,
        ).path
        new = Bundle.open(new_dir, with_index=False)
        publish(new, redis.Redis.from_url(redis_url), progress=False)
        deadline = time.monotonic() + 10
        while True:
            with lock:
                seen = sum(
                    1 for _, _, body in responses[-50:] if body.get("model_version") == new.version
                )
            if seen == 50:
                break
            assert time.monotonic() < deadline, "the service never moved to the new version"
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join()

    bundles_by_version = {b.version: b for b in (old, new)}
    statuses = [status for status, _, _ in responses]
    assert statuses.count(200) == len(statuses), f"failed requests: {set(statuses)}"
    versions = {body["model_version"] for _, _, body in responses}
    assert versions == {old.version, new.version}
    for _, user, body in responses:
        b = bundles_by_version[body["model_version"]]
        assert body["source"] == "stored"
        u = b.ranking_part(b.user_vectors[np.searchsorted(b.user_ids, user)])
        rows = np.searchsorted(b.item_ids, items)
        exact = b.item_vectors[rows].astype(np.float64) @ u.astype(np.float64)
        assert body["scores"] == exact.astype(np.float32).tolist()
    assert len(responses) > 100
