from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster
from typer.testing import CliRunner

from argus.cli import app
from index.bundle import Bundle, HnswParams, build
from index.store import (
    CURRENT,
    PUBLISH_LOCK,
    VERSIONS,
    LocalHistory,
    LocalStore,
    PublishBusy,
    PublishLock,
    RedisHistory,
    RedisStore,
    VersionUnavailable,
    decoded,
    meta_key,
    publish,
    vector_prefix,
)
from model.contract import HISTORY_EVENT
from tests.conftest import RedisTarget
from tests.index.conftest import export_with_users


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def some_ids(bundle: Bundle) -> np.ndarray:
    """Every user of the bundle plus ids it does not know, shuffled."""
    unknown = np.array([0, -5, int(bundle.user_ids.max()) + 1])
    ids = np.concatenate([bundle.user_ids, unknown])
    return np.random.default_rng(0).permutation(ids)


def assert_serves(store: RedisStore | LocalStore, bundle: Bundle) -> None:
    ids = some_ids(bundle)
    vectors, found = store.get(bundle.version, ids)
    known = np.isin(ids, bundle.user_ids)
    assert np.array_equal(found, known)
    rows = np.searchsorted(bundle.user_ids, ids[known])
    assert np.array_equal(vectors[known], bundle.user_vectors[rows])  # bit for bit
    assert not vectors[~known].any()


def test_local_store_reads_the_bundle_and_refuses_other_versions(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    store = LocalStore.from_bundle(bundle)
    assert store.current_version() == bundle.version
    assert_serves(store, bundle)
    with pytest.raises(VersionUnavailable, match="holds"):
        store.get("20990101T0000Z-000000", [1])


def test_a_local_store_without_users_finds_no_one() -> None:
    store = LocalStore("v", np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    vectors, found = store.get("v", [3, 4])
    assert vectors.shape == (2, 4) and not vectors.any() and not found.any()


@pytest.mark.parametrize("layout", ["plain", "hash"])
def test_a_published_version_reads_back_vector_for_vector(
    bundle_dir: Path, redis_target: RedisTarget, layout: str
) -> None:
    bundle = Bundle.open(bundle_dir, with_index=False)
    client = redis_target.client()
    summary = publish(bundle, client, layout=layout, chunk=7, per_bucket=4, progress=False)
    assert summary.previous is None and summary.written == len(bundle.user_ids)
    assert "vectors/s" in summary.line()
    store = RedisStore(client)
    assert store.current_version() == bundle.version
    assert_serves(store, bundle)
    # Raw little-endian float32 under a key that names the version.
    keys = [k.decode() for k in client.scan_iter(f"{vector_prefix(bundle.version)}*")]
    assert keys and all(bundle.version in k for k in keys)
    assert publish(bundle, client, layout=layout, progress=False).already


def test_a_new_version_flips_the_pointer_and_the_old_one_expires(
    exported: Path, bundle_dir: Path, redis_target: RedisTarget, tmp_path: Path
) -> None:
    old = Bundle.open(bundle_dir, with_index=False)
    client = redis_target.client()
    publish(old, client, progress=False)
    other = export_with_users(exported, tmp_path / "export2", 300, seed=1)
    new = Bundle.open(
        build(other, tmp_path / "b2", HnswParams(k=20, search="hnsw"), progress=False).path
    )
    summary = publish(new, client, grace_s=600, progress=False)
    assert summary.previous == old.version
    store = RedisStore(client)
    assert store.current_version() == new.version
    assert_serves(store, new)
    assert_serves(store, old)  # still readable during the grace period ...
    old_keys = [meta_key(old.version), *client.scan_iter(f"{vector_prefix(old.version)}*")]
    assert all(0 < client.ttl(k) <= 600 for k in old_keys)  # ... and then gone
    assert client.ttl(meta_key(new.version)) == -1
    assert client.smembers(VERSIONS) == {new.version.encode()}

    # Rolling back to the old version rewrites it in full and makes it permanent again.
    back = publish(old, client, grace_s=0, progress=False)
    assert back.previous == new.version and back.written == len(old.user_ids)
    assert all(client.ttl(k) == -1 for k in client.scan_iter(f"{vector_prefix(old.version)}*"))
    assert not list(client.scan_iter(f"{vector_prefix(new.version)}*"))  # grace 0: deleted
    assert_serves(RedisStore(client), old)


def test_a_partial_version_is_refused_to_readers(
    bundle_dir: Path, redis_target: RedisTarget
) -> None:
    bundle = Bundle.open(bundle_dir, with_index=False)
    client = redis_target.client()
    client.hset(meta_key(bundle.version), mapping={"layout": "hash", "complete": 0})
    with pytest.raises(VersionUnavailable, match="only partly published"):
        RedisStore(client).get(bundle.version, [1])
    with pytest.raises(VersionUnavailable, match="never published"):
        RedisStore(client).get("20990101T0000Z-000000", [1])


def pause_writes(client: redis.Redis | RedisCluster, ms: int) -> None:
    """CLIENT PAUSE ... WRITE on the server, or on every node of a cluster (0: unpause)."""
    command = ("CLIENT", "PAUSE", ms, "WRITE") if ms else ("CLIENT", "UNPAUSE")
    if isinstance(client, RedisCluster):
        client.execute_command(*command, target_nodes=RedisCluster.ALL_NODES)
    else:
        client.execute_command(*command)


def test_a_publish_killed_midway_changes_nothing_and_a_rerun_finishes(
    exported: Path, bundle_dir: Path, redis_target: RedisTarget, tmp_path: Path
) -> None:
    client = redis_target.client()
    redis_url = redis_target.url
    old = Bundle.open(bundle_dir, with_index=False)
    publish(old, client, progress=False)
    big = export_with_users(exported, tmp_path / "export-big", 200_000, seed=2)
    new = Bundle.open(
        build(big, tmp_path / "b", HnswParams(k=20, search="hnsw"), progress=False).path
    )
    command = [
        sys.executable,
        "-m",
        "argus",
        "publish",
        "--bundle",
        str(new.path),
        "--redis-url",
        redis_url,
        "--chunk",
        "500",
        "--layout",
        "plain",  # as the rerun below
        "--quiet",
        *(["--cluster"] if redis_target.cluster else []),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    written = 0
    while written == 0:  # wait for the first transactions to land ...
        assert process.poll() is None, process.communicate()[0].decode()
        assert time.monotonic() < deadline, "publish never started writing"
        written = int(client.hget(meta_key(new.version), "written") or 0)
        time.sleep(0.002)
    pause_writes(client, 20_000)  # ... hold it mid-way ...
    try:
        time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # ... and kill it
        process.wait(timeout=10)
    finally:
        pause_writes(client, 0)
    meta = decoded(client.hgetall(meta_key(new.version)))
    assert 0 < int(meta["written"]) < int(meta["units"]) and meta["complete"] == "0"
    store = RedisStore(client)
    assert store.current_version() == old.version
    assert_serves(store, old)
    with pytest.raises(VersionUnavailable, match="partly"):
        store.get(new.version, new.user_ids[:5])

    # The killed run still holds the publish lock until it expires (60 s unless renewed): a
    # rerun refuses, naming the lock; after the expiry (here: an operator's DEL) it resumes.
    assert 0 < client.ttl(PUBLISH_LOCK) <= 60
    with pytest.raises(PublishBusy, match=PUBLISH_LOCK):
        publish(new, client, progress=False)
    client.delete(PUBLISH_LOCK)
    rerun = publish(new, client, progress=False)
    assert rerun.previous == old.version and 0 < rerun.written < len(new.user_ids)
    assert "resumed" in rerun.line()
    assert RedisStore(client).current_version() == new.version
    assert_serves(RedisStore(client), new)


def test_publish_and_build_from_the_command_line(
    exported: Path, redis_url: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["build", "--export", str(exported), "--bundles", str(tmp_path), "--k", "20", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "ef_search=" in result.output and "recall@20=" in result.output
    path = result.output.strip().splitlines()[-1]
    result = runner.invoke(app, ["publish", "--bundle", path, "--redis-url", redis_url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "vectors/s" in result.output and Path(path).name in result.output
    assert client_for(redis_url).get(CURRENT) == Path(path).name.encode()

    bad = runner.invoke(app, ["publish", "--bundle", str(tmp_path / "nope"), "--quiet"])
    assert bad.exit_code == 2 and "manifest.json: missing" in bad.output
    down = runner.invoke(
        app, ["publish", "--bundle", path, "--redis-url", "redis://127.0.0.1:1/0", "--quiet"]
    )
    assert down.exit_code == 2 and "cannot reach Redis" in down.output
    bad_layout = runner.invoke(
        app, ["publish", "--bundle", path, "--redis-url", redis_url, "--layout", "x", "--quiet"]
    )
    assert bad_layout.exit_code == 2 and "unknown layout" in bad_layout.output


def events(timestamps: list[int], first_item: int = 1) -> np.ndarray:
    out = np.zeros(len(timestamps), dtype=HISTORY_EVENT)
    out["timestamp"] = timestamps
    out["item_id"] = np.arange(first_item, first_item + len(timestamps))
    out["played_ratio"] = np.nan
    return out


@pytest.mark.parametrize("kind", ["redis", "local"])
def test_live_history_is_capped_and_in_time_order(kind: str, redis_target: RedisTarget) -> None:
    history: RedisHistory | LocalHistory = (
        RedisHistory(redis_target.client(), cap=5, ttl_s=60)
        if kind == "redis"
        else LocalHistory(cap=5)
    )
    history.append(7, events([10, 20, 30]))
    history.append(7, events([25, 40, 50, 60], first_item=100))
    history.append(8, events([1]))
    seven, eight, nobody = history.get([7, 8, 9])
    assert seven.dtype == HISTORY_EVENT
    assert seven["timestamp"].tolist() == [25, 30, 40, 50, 60]  # the cap keeps the newest
    assert seven["item_id"].tolist() == [100, 3, 101, 102, 103]
    assert np.isnan(seven["played_ratio"]).all()
    assert eight["item_id"].tolist() == [1] and len(nobody) == 0
    with pytest.raises(TypeError, match="HISTORY_EVENT"):
        history.append(7, np.zeros(3))
    if kind == "redis":
        assert 0 < redis_target.client().ttl("argus:hist:7") <= 60


def test_one_publish_at_a_time_the_second_refuses_or_waits(
    bundle_dir: Path, redis_target: RedisTarget
) -> None:
    client = redis_target.client()
    redis_url = redis_target.url
    bundle = Bundle.open(bundle_dir, with_index=False)
    held = PublishLock(client)
    held.acquire()
    try:
        with pytest.raises(PublishBusy, match=r"another publish .* holds argus:publish-lock"):
            publish(bundle, client, progress=False)
        assert client.get(CURRENT) is None  # the refused run wrote nothing
        cluster = ["--cluster"] if redis_target.cluster else []
        result = CliRunner().invoke(
            app,
            ["publish", "--bundle", str(bundle_dir), "--redis-url", redis_url, "--quiet", *cluster],
        )
        assert result.exit_code == 2 and "--wait SECONDS" in result.output, result.output
        # A waiting run goes as soon as the holder is done.
        threading.Timer(0.5, held.release).start()
        began = time.monotonic()
        summary = publish(bundle, client, progress=False, wait_s=10)
        assert 0.4 < time.monotonic() - began < 10 and summary.version == bundle.version
    finally:
        held.release()
    assert client.get(PUBLISH_LOCK) is None  # released by its holder
