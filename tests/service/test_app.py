from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from argus.cli import app as app_cli
from argus.servers import RedisServer, SlowProxy, free_port
from index.bundle import Bundle, HnswParams, build
from index.store import publish
from service.app import create_app
from service.docs import ASSETS
from service.encoder import Encoder
from service.settings import (
    LimitSettings,
    RequestSettings,
    ServerSettings,
    Settings,
    StoreSettings,
)
from tests.index.conftest import export_with_users
from tests.service.conftest import client_for


def served(client: TestClient) -> Bundle:
    bundle = client.app.state.backend.served.bundle  # type: ignore[attr-defined]
    assert isinstance(bundle, Bundle)
    return bundle


def assert_422_naming(response: httpx.Response, field: str) -> None:
    """A 422 whose error list names ``field`` in some error's location."""
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(field in map(str, error["loc"]) for error in errors), response.text


def history(bundle: Bundle, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = rng.choice(bundle.item_ids, n, replace=False)
    return [
        {"item_id": int(i), "timestamp": 1_700_000_000 + 60 * t, "played_ratio": 1.0, "source": 1}
        for t, i in enumerate(items)
    ]


def test_score_is_the_dot_product_of_the_bundle_vectors(local: TestClient) -> None:
    bundle = served(local)
    user = int(bundle.user_ids[5])
    items = [int(i) for i in bundle.item_ids[[3, 0, 77, 12]]] + [-1, 10**15]
    body = local.post("/score", json={"user_id": user, "item_ids": items, "return_vectors": True})
    assert body.status_code == 200, body.text
    out = body.json()
    assert out["source"] == "stored" and out["model_version"] == bundle.version
    u = bundle.ranking_part(bundle.user_vectors[5])  # /score answers in the ranking space
    exact = bundle.item_vectors[[3, 0, 77, 12]].astype(np.float64) @ u.astype(np.float64)
    assert out["scores"][:4] == exact.astype(np.float32).tolist()  # the dot product, rounded once
    # Items the catalog lacks: the cold item vector's score, and named as unknown.
    cold = bundle.cold_item_vector
    assert cold is not None and out["unknown_item_ids"] == [-1, 10**15]
    cold_score = np.float32(cold.astype(np.float64) @ u.astype(np.float64))
    assert out["scores"][4:] == [float(cold_score)] * 2
    assert np.array_equal(np.array(out["user_vector"], np.float32), u)
    assert np.array_equal(
        np.array(out["item_vectors"][:4], np.float32), bundle.item_vectors[[3, 0, 77, 12]]
    )
    assert np.array_equal(np.array(out["item_vectors"][4:], np.float32), [cold, cold])
    # The same vectors as base64 float32: bit for bit.
    fast = local.post(
        "/score",
        json={
            "user_id": user,
            "item_ids": items,
            "return_vectors": True,
            "vectors_format": "base64",
        },
    ).json()
    assert fast["scores"] == out["scores"]
    assert np.array_equal(np.frombuffer(base64.b64decode(fast["user_vector"]), "<f4"), u)
    rows = np.frombuffer(base64.b64decode(fast["item_vectors"]), "<f4").reshape(len(items), -1)
    assert np.array_equal(rows[:4], bundle.item_vectors[[3, 0, 77, 12]])
    assert np.array_equal(rows[4:], [cold, cold])


def test_a_user_without_a_vector_is_scored_by_the_item_prior(local: TestClient) -> None:
    bundle = served(local)
    stranger = int(bundle.user_ids.max()) + 1
    items = [int(i) for i in bundle.item_ids[[3, 0, 77]]] + [-1]
    out = local.post("/score", json={"user_id": stranger, "item_ids": items}).json()
    assert out["source"] == "popular" and bundle.cold_item_vector is not None
    prior = np.r_[bundle.item_vectors[[3, 0, 77], -1], bundle.cold_item_vector[-1]]
    assert out["scores"] == prior.tolist()  # the item vectors' last coordinate: the item prior


def test_candidates_are_the_top_k_without_seen_or_excluded_items(local: TestClient) -> None:
    bundle = served(local)
    user = int(bundle.user_ids[7])
    u = bundle.user_vectors[7]
    q, r = bundle.retrieval_part(u), bundle.ranking_part(u)
    best = bundle.item_ids[np.argsort(-(bundle.retrieval_item_vectors @ q))]
    excluded = [int(i) for i in best[:5]]
    events = [{"item_id": int(i), "timestamp": 10 + t} for t, i in enumerate(best[5:8])]
    local.post("/events", json={"user_id": user, "events": events})  # now "seen"
    out = local.post(
        "/candidates", json={"user_id": user, "k": 30, "exclude_item_ids": excluded}
    ).json()
    assert out["source"] == "stored"
    ids = [c["item_id"] for c in out["items"]]
    scores = [c["score"] for c in out["items"]]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert not set(ids) & set(excluded) and not set(ids) & {int(i) for i in best[5:8]}
    assert scores == sorted(scores, reverse=True)
    rows = np.searchsorted(bundle.item_ids, ids)
    np.testing.assert_allclose(
        scores, bundle.retrieval_item_vectors[rows] @ q, rtol=1e-6, atol=1e-7
    )
    # Each candidate's ranking score is exactly what /score says of it.
    ranking = [c["ranking_score"] for c in out["items"]]
    np.testing.assert_allclose(ranking, bundle.item_vectors[rows] @ r, rtol=1e-6, atol=1e-7)
    scored = local.post("/score", json={"user_id": user, "item_ids": ids}).json()["scores"]
    assert ranking == scored
    # With exclude_seen off the seen items may come back; asking for more than is left gets all.
    n = len(bundle.item_ids)
    every = local.post(
        "/candidates",
        json={"user_id": user, "k": n, "exclude_item_ids": excluded, "exclude_seen": False},
    ).json()["items"]
    assert len(every) == n - len(excluded)


def test_every_vector_source_is_reached(local: TestClient) -> None:
    bundle = served(local)
    encoder = Encoder(bundle.encoder_path, max_len=96, device="cpu")
    stranger = int(bundle.user_ids.max()) + 1_000
    events = history(bundle, 6)

    # realtime: the request's history, through the runtime encoder.
    out = local.post(
        "/score",
        json={
            "user_id": stranger,
            "item_ids": [int(bundle.item_ids[0])],
            "history": events,
            "return_vectors": True,
        },
    ).json()
    from service.schemas import Event, as_history

    live = as_history([Event(**e) for e in events])
    # the encoder's vector with the live history's feedback read in, as the export reads it
    encoded = encoder.encode([live])[0]
    direct = bundle.ranking_part(bundle.read_feedback(encoded, live))
    assert bundle.readout.on and not np.allclose(direct, bundle.ranking_part(encoded))
    assert out["source"] == "realtime"
    np.testing.assert_allclose(out["user_vector"], direct, rtol=0, atol=1e-6)
    # stored: a known user, no history.
    assert (
        local.post("/candidates", json={"user_id": int(bundle.user_ids[0]), "k": 3}).json()[
            "source"
        ]
        == "stored"
    )
    # mode offline ignores the request's history.
    assert (
        local.post(
            "/candidates",
            json={"user_id": int(bundle.user_ids[0]), "k": 3, "history": events, "mode": "offline"},
        ).json()["source"]
        == "stored"
    )
    # popular: nobody knows this user.
    out = local.post("/candidates", json={"user_id": stranger, "k": 4}).json()
    assert out["source"] == "popular"
    assert [c["item_id"] for c in out["items"]] == bundle.popular[:4].tolist()
    # history: the user's live events, posted to /events, re-encoded.
    assert local.post("/events", json={"user_id": stranger, "events": events}).status_code == 200
    out = local.post(
        "/score",
        json={"user_id": stranger, "item_ids": [int(bundle.item_ids[0])], "return_vectors": True},
    ).json()
    assert out["source"] == "history"
    np.testing.assert_allclose(out["user_vector"], direct, rtol=0, atol=1e-6)
    metrics = local.get("/metrics").text
    for source in ("realtime", "stored", "history", "popular"):
        assert f'source="{source}"' in metrics


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/candidates", {"k": 5}, "user_id"),
        ("/candidates", {"user_id": "abc"}, "user_id"),
        ("/candidates", {"user_id": 1, "k": 0}, "k"),
        ("/candidates", {"user_id": 1, "k": 5000}, "k"),
        ("/candidates", {"user_id": 1, "mode": "fast"}, "mode"),
        ("/candidates", {"user_id": 1, "colour": "red"}, "colour"),
        ("/candidates", {"user_id": 1, "history": [{"item_id": 1}]}, "timestamp"),
        (
            "/candidates",
            {"user_id": 1, "history": [{"item_id": 1, "timestamp": t} for t in range(3000)]},
            "history",
        ),
        ("/score", {"user_id": 1, "item_ids": []}, "item_ids"),
        ("/score", {"user_id": 1, "item_ids": list(range(1001))}, "item_ids"),
        ("/score", {"user_id": 1, "item_ids": ["x"]}, "item_ids"),
        ("/score", {"user_id": 1, "item_ids": [1], "vectors_format": "xml"}, "vectors_format"),
        ("/events", {"user_id": 1, "events": []}, "events"),
        (
            "/events",
            {"user_id": 1, "events": [{"item_id": 1, "timestamp": 1, "played_ratio": -1}]},
            "played_ratio",
        ),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    local: TestClient, path: str, body: dict, field: str
) -> None:
    response = local.post(path, json=body)
    assert_422_naming(response, field)
    # every 422 has the documented ValidationError shape (schemathesis found one without "type")
    assert all(set(error) == {"loc", "msg", "type"} for error in response.json()["detail"])


def test_one_item_has_one_score_whatever_the_batch_it_is_asked_in(local: TestClient) -> None:
    bundle = served(local)
    user = int(bundle.user_ids[0])
    rng = np.random.default_rng(3)
    items = [int(i) for i in rng.choice(bundle.item_ids, 1000)]  # with repeats

    def scores(ids: list[int]) -> list[float]:
        reply = local.post("/score", json={"user_id": user, "item_ids": ids})
        assert reply.status_code == 200, reply.text
        return reply.json()["scores"]

    alone = {i: scores([i])[0] for i in items[:40]}
    assert scores([items[0]] * 3) == [alone[items[0]]] * 3
    for size in (2, 7, 16, 33, 1000):  # (the tiny bundle has fewer items: ids repeat)
        batch = scores(items[:size])
        assert [batch[j] for j in range(min(size, 40))] == [alone[i] for i in items[:size][:40]]
    # /candidates' ranking score of an item is /score's number for it, to the last digit.
    for k in (1, 10, 100):
        answer = local.post("/candidates", json={"user_id": user, "k": k}).json()["items"]
        ids = [c["item_id"] for c in answer]
        assert [c["ranking_score"] for c in answer] == [scores([i])[0] for i in ids[:10]] + [
            c["ranking_score"] for c in answer[10:]
        ]
        assert [c["ranking_score"] for c in answer] == scores(ids)


EVENT = {"item_id": 1, "timestamp": 1_700_000_000}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/candidates", {"user_id": True}, "user_id"),
        ("/candidates", {"user_id": "2502"}, "user_id"),
        ("/candidates", {"user_id": 1.5}, "user_id"),
        ("/candidates", {"user_id": 1, "k": 2.5}, "k"),
        ("/candidates", {"user_id": 1, "k": "5"}, "k"),
        ("/candidates", {"user_id": 1, "k": True}, "k"),
        ("/candidates", {"user_id": 1, "exclude_seen": 0}, "exclude_seen"),
        ("/candidates", {"user_id": 1, "exclude_item_ids": [False]}, "exclude_item_ids"),
        ("/score", {"user_id": 1, "item_ids": [1], "return_vectors": 0}, "return_vectors"),
        ("/score", {"user_id": 1, "item_ids": [True]}, "item_ids"),
        ("/score", {"user_id": 1, "item_ids": ["17788"]}, "item_ids"),
        ("/candidates", {"user_id": 1, "history": [{**EVENT, "liked": 1}]}, "liked"),
        ("/candidates", {"user_id": 1, "history": [{**EVENT, "source": "1"}]}, "source"),
        (
            "/score",
            {"user_id": 1, "item_ids": [1], "history": [{**EVENT, "played_ratio": "1"}]},
            "played_ratio",
        ),
        ("/events", {"user_id": 1, "events": [{**EVENT, "timestamp": 1.5}]}, "timestamp"),
    ],
)
def test_ids_counts_and_flags_must_be_json_integers_and_booleans(
    local: TestClient, path: str, body: dict, field: str
) -> None:
    assert_422_naming(local.post(path, json=body), field)


def test_a_whole_number_written_with_a_point_is_the_integer_it_equals(local: TestClient) -> None:
    """JSON Schema's "integer" counts 7.0 as 7: what the published schema allows is served."""
    user = int(served(local).user_ids[0])
    exact = local.post("/candidates", json={"user_id": user, "k": 5}).json()
    pointed = local.post("/candidates", json={"user_id": float(user), "k": 5.0}).json()
    assert pointed["user_id"] == user and pointed["items"] == exact["items"]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({**EVENT, "timestamp": -(2**63)}, "timestamp"),
        ({**EVENT, "timestamp": -1}, "timestamp"),
        ({**EVENT, "timestamp": 2**63 - 1}, "timestamp"),
        ({**EVENT, "timestamp": 2**32}, "timestamp"),
        ({**EVENT, "played_ratio": 1e308}, "played_ratio"),
        ({**EVENT, "played_ratio": 10.5}, "played_ratio"),
        ({**EVENT, "artist_id": -2}, "artist_id"),
    ],
)
def test_live_events_outside_the_data_contract_are_a_422_naming_the_field(
    local: TestClient, event: dict, field: str
) -> None:
    for path, body in [
        ("/candidates", {"user_id": 1, "history": [event]}),
        ("/score", {"user_id": 1, "item_ids": [1], "history": [event]}),
        ("/events", {"user_id": 1, "events": [event]}),
    ]:
        assert_422_naming(local.post(path, json=body), field)
    # The contract's own edges are served.
    edge = {**EVENT, "timestamp": 2**32 - 1, "played_ratio": 10.0, "artist_id": -1}
    ok = local.post("/candidates", json={"user_id": 1, "k": 3, "history": [edge]})
    assert ok.status_code == 200, ok.text


def test_limits_and_the_events_token(bundles: Path) -> None:
    settings = Settings(
        store=StoreSettings(bundles=bundles),
        limits=LimitSettings(max_body_bytes=2_000),
        requests=RequestSettings(events_token="s3cret"),
    )
    with client_for(settings) as client:
        big = client.post("/score", json={"user_id": 1, "item_ids": list(range(900))})
        assert big.status_code == 413 and "limit" in big.text
        # Without Content-Length (chunked), the body is counted as it arrives.
        body = orjson.dumps({"user_id": 1, "item_ids": list(range(900))})
        chunks = (body[i : i + 500] for i in range(0, len(body), 500))
        json_type = {"Content-Type": "application/json"}
        chunked = client.post("/score", content=chunks, headers=json_type)
        assert chunked.status_code == 413 and "Content-Length" in chunked.text, chunked.text
        small = orjson.dumps({"user_id": 1, "item_ids": [1, 2]})
        fine = client.post("/score", content=iter([small[:5], small[5:]]), headers=json_type)
        assert fine.status_code == 200, fine.text
        series = client.get("/metrics").text
        # refused by Content-Length before routing, then by counting inside the route
        assert 'argus_requests_total{endpoint="unmatched",status="413"} 1.0' in series
        assert 'argus_requests_total{endpoint="/score",status="413"} 1.0' in series
        event = {"user_id": 1, "events": [{"item_id": 1, "timestamp": 1}]}
        assert client.post("/events", json=event).status_code == 401
        wrong = client.post("/events", json=event, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.post("/events", json=event, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == {"user_id": 1, "appended": 1}
        # a header is Latin-1 text: a non-ASCII bearer is a wrong token, not a 500
        latin_1 = {"Authorization": "Bearer sécret".encode()}
        latin = client.post("/events", json=event, headers=latin_1)
        assert latin.status_code == 401, latin.text


def test_writes_are_refused_unless_a_token_is_set_or_writes_are_open(bundles: Path) -> None:
    event = {"user_id": 1, "events": [{"item_id": 1, "timestamp": 1}]}
    with client_for(Settings(store=StoreSettings(bundles=bundles))) as closed:
        refused = closed.post("/events", json=event, headers={"Authorization": "Bearer x"})
        assert refused.status_code == 403
        assert "ARGUS_EVENTS_TOKEN" in refused.text and "ARGUS_EVENTS_OPEN" in refused.text
        (nothing,) = closed.app.state.backend.history.get([1])  # type: ignore[attr-defined]
        assert len(nothing) == 0  # refused before anything was stored
    for typo in ("", "   ", " padded ", "jeton-sécret"):
        with pytest.raises(ValueError, match="ARGUS_EVENTS_TOKEN"):
            RequestSettings(events_token=typo)


def test_a_local_history_forgets_the_least_recently_written_user_beyond_its_cap(
    bundles: Path,
) -> None:
    store = StoreSettings(bundles=bundles, history_max_users=3)
    settings = Settings(store=store, requests=RequestSettings(events_open=True))
    with client_for(settings) as client:
        for user in (1, 2, 3, 1, 4):  # 1 is written again: 2 is now the oldest
            event = {"user_id": user, "events": [{"item_id": 5, "timestamp": 10 + user}]}
            assert client.post("/events", json=event).status_code == 200
        history = client.app.state.backend.history  # type: ignore[attr-defined]
        kept = [len(events) for events in history.get([1, 2, 3, 4])]
        assert len(history) == 3 and kept == [2, 0, 1, 1]


def test_ops_endpoints_and_every_metric_series(local: TestClient) -> None:
    bundle = served(local)
    assert local.get("/healthz").json() == {"status": "alive"}
    assert local.get("/readyz").json() == {"ready": True, "model_version": bundle.version}
    assert local.get("/bundle").json()["files"] == bundle.manifest["files"]
    assert (
        local.get("/docs").status_code == 200 and "/candidates" in local.get("/openapi.json").text
    )
    local.post("/candidates", json={"user_id": 10**9, "k": 2, "history": history(bundle, 3)})
    local.post("/candidates", json={"user_id": int(bundle.user_ids[0]), "k": 2})
    metrics = local.get("/metrics").text
    for series in (
        "argus_request_duration_seconds_bucket",
        "argus_requests_total",
        "argus_stage_duration_seconds_bucket",
        "argus_vector_source_total",
        "argus_store_errors_total",
        "argus_encoder_batch_size_bucket",
        "argus_encoder_queue_delay_seconds_bucket",
        "argus_bundle_info",
        "argus_bundle_age_seconds",
        "argus_bundle_reloads_total",
    ):
        assert series in metrics, series
    for stage in ("parse", "store", "encoder", "ann", "serialize"):
        assert f'stage="{stage}"' in metrics
    search = "exact" if bundle.exact_from == 0 else "hnsw"
    assert f'argus_bundle_info{{search="{search}",version="{bundle.version}"}} 1.0' in metrics


def test_a_new_bundle_is_swapped_in_and_a_bad_one_rejected(
    bundles: Path, exported: Path, tmp_path: Path
) -> None:
    settings = Settings(store=StoreSettings(bundles=bundles, reload_interval_s=0.05))
    with client_for(settings) as client:
        old = served(client).version
        # A newer, corrupt bundle: rejected, the old one keeps serving.
        bad = bundles / "29990101T0000Z-badbad"
        shutil.copytree(bundles / old, bad)
        (bad / "manifest.json").write_text("{}")
        time.sleep(0.5)
        assert (
            client.post("/candidates", json={"user_id": 1, "k": 2}).json()["model_version"] == old
        )
        assert "29990101T0000Z-badbad" in client.app.state.backend.rejected  # type: ignore[attr-defined]
        assert 'argus_bundle_reloads_total{result="rejected"} 1.0' in client.get("/metrics").text
        shutil.rmtree(bad)
        # A good newer bundle is picked up.
        other = export_with_users(exported, tmp_path / "export2", 50, seed=3)
        new = Path(build(other, bundles, HnswParams(k=20, search="hnsw"), progress=False).path).name
        deadline = time.monotonic() + 5
        while (
            client.post("/candidates", json={"user_id": 1, "k": 2}).json()["model_version"] != new
        ):
            assert time.monotonic() < deadline, "the new bundle was not loaded"
            time.sleep(0.05)


def metric(client: TestClient, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_redis_down_degrades_stays_ready_and_a_restart_recovers(
    bundles: Path, redis_server: RedisServer, redis_url: str
) -> None:
    (path,) = [p for p in bundles.iterdir()]
    bundle = Bundle.open(path, with_index=False)
    publish(bundle, redis.Redis.from_url(redis_url), progress=False)
    store = StoreSettings(
        bundles=bundles, redis_url=redis_url, reload_interval_s=0.1, redis_health_interval_s=0.2
    )
    settings = Settings(store=store, requests=RequestSettings(events_open=True))
    user = int(bundle.user_ids[2])
    event = {"user_id": 1, "events": [{"item_id": 1, "timestamp": 1}]}
    with client_for(settings) as client:
        out = client.post("/candidates", json={"user_id": user, "k": 3}).json()
        assert out["source"] == "stored" and not out["degraded"]
        assert client.get("/readyz").json()["redis"].startswith("up")
        redis_server.stop()
        try:
            for _ in range(5):  # three failures in a row open the gate, then no call is tried
                out = client.post("/candidates", json={"user_id": user, "k": 3})
                assert out.status_code == 200
                assert out.json()["source"] == "popular" and out.json()["degraded"]
            assert metric(client, 'argus_redis_shed_total{reason="open"}') >= 2
            live = client.post(
                "/score",
                json={
                    "user_id": user,
                    "item_ids": [int(bundle.item_ids[0])],
                    "history": history(bundle, 4),
                },
            )
            assert live.status_code == 200 and live.json()["source"] == "realtime"
            # Ready means "can answer": a Redis outage must not take every replica out.
            time.sleep(0.5)  # a health check or two
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["redis"].startswith("down")
            assert metric(client, "argus_redis_up") == 0.0
            written = client.post("/events", json=event)
            assert written.status_code == 503 and "unavailable" in written.text
        finally:
            redis_server.start()
        publish(bundle, redis.Redis.from_url(redis_url), progress=False)  # a fresh server is empty
        deadline = time.monotonic() + 5
        while (
            client.post("/candidates", json={"user_id": user, "k": 3}).json()["source"] != "stored"
        ):
            assert time.monotonic() < deadline, "did not recover within 5 s"
            time.sleep(0.05)
        assert metric(client, "argus_redis_up") == 1.0
        assert client.post("/events", json=event).status_code == 200


def test_a_version_that_vanishes_from_a_live_redis_is_flagged_within_seconds(
    bundles: Path, redis_url: str, exported: Path
) -> None:
    (path,) = [p for p in bundles.iterdir()]
    bundle = Bundle.open(path, with_index=False)
    client_r = redis.Redis.from_url(redis_url)
    publish(bundle, client_r, progress=False)
    store = StoreSettings(bundles=bundles, redis_url=redis_url, reload_interval_s=0.2)
    user = int(bundle.user_ids[2])
    # A newer bundle lies beside it, never published: a flushed pointer must not switch to it.
    time.sleep(1.1)  # versions are named by the second
    newer = build(exported, bundles, HnswParams(k=20, sample=100, search="hnsw"), progress=False)
    assert newer.version > bundle.version
    with client_for(Settings(store=store)) as client:
        out = client.post("/candidates", json={"user_id": user, "k": 3}).json()
        assert out["source"] == "stored" and not out["degraded"]
        time.sleep(0.5)
        assert client.get("/readyz").json()["store"] == f"holds {bundle.version}"
        assert metric(client, "argus_store_version_present") == 1.0
        errors = metric(client, "argus_store_errors_total")
        client_r.flushall()  # Redis still answers PING: only its data are gone
        began, answers = time.monotonic(), []
        while time.monotonic() - began < 3:
            reply = client.post("/candidates", json={"user_id": user, "k": 3}).json()
            answers.append((time.monotonic() - began, reply["source"], reply["degraded"]))
            time.sleep(0.05)
        flagged = [t for t, source, degraded in answers if source == "popular" and degraded]
        assert flagged and flagged[0] < 1.5, answers[:5]
        assert all(degraded for t, _, degraded in answers if t >= flagged[0])
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["redis"].startswith("up")
        assert ready.json()["store"].startswith(f"missing {bundle.version}")
        assert ready.json()["model_version"] == bundle.version  # not the unpublished newer one
        assert metric(client, "argus_store_version_present") == 0.0
        assert metric(client, "argus_store_errors_total") > errors
        # Published again: stored answers, not degraded, and the gauge back at 1.
        publish(bundle, client_r, progress=False)
        deadline = time.monotonic() + 2
        while client.post("/candidates", json={"user_id": user, "k": 3}).json()["degraded"]:
            assert time.monotonic() < deadline, "did not recover within 5 s"
            time.sleep(0.05)
        time.sleep(0.5)
        assert metric(client, "argus_store_version_present") == 1.0
        assert client.get("/readyz").json()["store"] == f"holds {bundle.version}"


def test_a_slow_redis_costs_one_timeout_then_nothing(
    bundles: Path, redis_url: str, redis_server: RedisServer
) -> None:
    (path,) = [p for p in bundles.iterdir()]
    bundle = Bundle.open(path, with_index=False)
    publish(bundle, redis.Redis.from_url(redis_url), progress=False)
    proxy = SlowProxy(redis_server.port)
    store = StoreSettings(
        bundles=bundles, redis_url=proxy.url, redis_timeout_s=0.1, redis_health_interval_s=0.2
    )
    user = int(bundle.user_ids[2])
    ask = {"user_id": user, "k": 3}
    try:
        with client_for(Settings(store=store)) as client:
            assert client.post("/candidates", json=ask).json()["source"] == "stored"
            proxy.delay_s = 2.0  # accepts, answers after 2 s
            took = []
            for _ in range(8):
                began = time.perf_counter()
                out = client.post("/candidates", json=ask).json()
                took.append(time.perf_counter() - began)
                assert out["source"] == "popular" and out["degraded"]
            # one timeout per request (no retries, no second call), none once the gate opens
            assert max(took) < 0.1 + 0.15, took
            assert sorted(took)[4] < 0.05, took
            proxy.delay_s = 0.0
            deadline = time.monotonic() + 5
            while client.post("/candidates", json=ask).json()["source"] != "stored":
                assert time.monotonic() < deadline, "did not recover within 5 s"
                time.sleep(0.05)
    finally:
        proxy.close()


def test_unfamiliar_leaves_out_the_live_historys_items_and_optionally_its_artists(
    local: TestClient,
) -> None:
    bundle = served(local)
    known = bundle.item_artist_ids >= 0
    assert known.any()  # the tiny export carries real artists
    user = int(bundle.user_ids[3])
    listened = bundle.item_ids[np.flatnonzero(known)[:2]]
    artists = bundle.item_artist_ids[np.flatnonzero(known)[:2]]
    events = [
        {"item_id": int(i), "artist_id": int(a), "timestamp": 10 + t, "played_ratio": 1.0}
        for t, (i, a) in enumerate(zip(listened, artists, strict=True))
    ]
    n = len(bundle.item_ids)

    def ask(**extra: object) -> list[int]:
        body = {"user_id": user, "k": n, "history": events, "exclude_seen": False, **extra}
        reply = local.post("/candidates", json=body)
        assert reply.status_code == 200, reply.text
        return [c["item_id"] for c in reply.json()["items"]]

    assert set(listened.tolist()) <= set(ask())
    by_item = ask(unfamiliar="items")
    assert not set(by_item) & set(listened.tolist()) and len(by_item) == n - 2
    same_artist = bundle.item_ids[np.isin(bundle.item_artist_ids, artists)]
    by_artist = ask(unfamiliar="artists")
    assert not set(by_artist) & set(same_artist.tolist())
    assert len(by_artist) == n - len(same_artist) > 0
    bad = local.post("/candidates", json={"user_id": user, "unfamiliar": "genres"})
    assert bad.status_code == 422 and "unfamiliar" in bad.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/candidates", {"user_id": 2**63, "k": 10}, "user_id"),
        ("/candidates", {"user_id": -(2**63) - 1}, "user_id"),
        ("/score", {"user_id": 2**63, "item_ids": [1]}, "user_id"),
        ("/score", {"user_id": 1, "item_ids": [1, 2**63]}, "item_ids"),
        ("/events", {"user_id": 1, "events": [{"item_id": 1, "timestamp": 2**63}]}, "timestamp"),
        ("/events", {"user_id": 1, "events": [{"item_id": 2**63, "timestamp": 1}]}, "item_id"),
        ("/candidates", {"user_id": 1, "exclude_item_ids": [2**64]}, "exclude_item_ids"),
        (
            "/candidates",
            {"user_id": 1, "history": [{"item_id": 1, "timestamp": 1, "artist_id": 2**63}]},
            "artist_id",
        ),
    ],
)
def test_ids_and_times_beyond_int64_are_a_422_naming_the_field(
    local: TestClient, path: str, body: dict, field: str
) -> None:
    reply = local.post(path, json=body)
    assert_422_naming(reply, field)
    # The largest int64 is still an id like any other (an unknown user: the popular fallback).
    if path == "/candidates" and field == "user_id" and body["user_id"] > 0:
        ok = local.post(path, json={**body, "user_id": 2**63 - 1})
        assert ok.status_code == 200 and ok.json()["source"] == "popular"


def test_the_schema_documents_the_int64_bounds(local: TestClient) -> None:
    schemas = local.get("/openapi.json").json()["components"]["schemas"]
    # exact integers: as a float 2^63 - 1 would read 2^63, an id the service refuses
    user_id = schemas["CandidatesRequest"]["properties"]["user_id"]
    assert user_id["maximum"] == 2**63 - 1 and user_id["minimum"] == -(2**63)
    assert isinstance(user_id["maximum"], int)
    items = schemas["ScoreRequest"]["properties"]["item_ids"]["items"]
    assert items["maximum"] == 2**63 - 1
    event = schemas["Event"]["properties"]
    assert event["timestamp"]["maximum"] == 2**32 - 1 and event["artist_id"]["minimum"] == -1


def test_an_exclude_list_over_the_limit_is_a_422_and_unknown_ids_cost_no_search(
    bundles: Path,
) -> None:
    from tests.service.conftest import client_for

    limits = LimitSettings(max_exclude=50)
    with client_for(Settings(store=StoreSettings(bundles=bundles), limits=limits)) as client:
        bundle = served(client)
        user = int(bundle.user_ids[0])
        over = client.post(
            "/candidates", json={"user_id": user, "exclude_item_ids": list(range(51))}
        )
        assert over.status_code == 422 and "exclude_item_ids" in over.text
        # 50 ids no item has: the answer is the same as with none (they never reach the search).
        unknown = [int(bundle.item_ids.max()) + 1 + i for i in range(50)]
        plain = client.post("/candidates", json={"user_id": user, "k": 10}).json()["items"]
        padded = client.post(
            "/candidates", json={"user_id": user, "k": 10, "exclude_item_ids": unknown}
        ).json()["items"]
        assert padded == plain


def test_answers_never_show_a_redis_password_or_a_build_path(bundles: Path) -> None:
    from index.store import redacted
    from tests.service.conftest import client_for

    assert redacted("redis://:s3cret@cache:6380/0") == "redis://:***@cache:6380/0"
    assert redacted("rediss://app:s3cret@cache/1") == "rediss://app:***@cache/1"
    assert redacted("redis://cache:6379/0") == "redis://cache:6379/0"
    dead = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens: readiness says why
    settings = Settings(store=StoreSettings(bundles=bundles, redis_url=dead, redis_timeout_s=0.2))
    with client_for(settings) as client:
        ready = client.get("/readyz")
        assert "s3cret" not in ready.text
        manifest = client.get("/bundle")
        assert manifest.status_code == 200 and "version" in manifest.json()
        assert str(bundles.parent) not in manifest.text and "source" not in manifest.json()


def test_a_bundle_still_arriving_is_retried_and_then_served(
    bundles: Path, exported: Path, tmp_path: Path
) -> None:
    settings = Settings(store=StoreSettings(bundles=bundles, reload_interval_s=0.05))
    staging = tmp_path / "staging"
    other = export_with_users(exported, tmp_path / "export2", 40, seed=5)
    new = Path(build(other, staging, HnswParams(k=20, search="hnsw"), progress=False).path)
    with client_for(settings) as client:
        old = served(client).version
        # The directory lands on the shared volume before its index does: refused for now ...
        shutil.copytree(new, bundles / new.name, ignore=shutil.ignore_patterns("items.hnsw"))
        backend = client.app.state.backend  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while new.name not in backend.rejected:
            assert time.monotonic() < deadline, "the incomplete bundle was never tried"
            time.sleep(0.05)
        assert client.post("/candidates", json={"user_id": 1}).json()["model_version"] == old
        # ... and served once the last file is there (retried after a back-off, not given up on).
        shutil.copyfile(new / "items.hnsw", bundles / new.name / "items.hnsw")
        deadline = time.monotonic() + 10
        while client.post("/candidates", json={"user_id": 1}).json()["model_version"] != new.name:
            assert time.monotonic() < deadline, "the completed bundle was not loaded"
            time.sleep(0.1)
        assert new.name not in backend.rejected


def test_a_pointer_that_is_not_a_version_is_never_joined_onto_the_bundle_root(
    bundles: Path, redis_url: str
) -> None:
    (path,) = list(bundles.iterdir())
    bundle = Bundle.open(path, with_index=False)
    client_redis = redis.Redis.from_url(redis_url)
    publish(bundle, client_redis, progress=False)
    settings = Settings(
        store=StoreSettings(bundles=bundles, redis_url=redis_url, reload_interval_s=0.05)
    )
    with client_for(settings) as client:
        for hostile in ("../" + path.name, "/etc", path.name + "/../" + path.name):
            client_redis.set("argus:current", hostile)
            backend = client.app.state.backend  # type: ignore[attr-defined]
            deadline = time.monotonic() + 5
            while hostile not in backend.rejected:
                assert time.monotonic() < deadline, hostile
                time.sleep(0.05)
            assert backend.rejected[hostile].permanent
            assert "is not a bundle version" in backend.rejected[hostile].reason
            assert client.post("/candidates", json={"user_id": 1}).json()["model_version"] == (
                bundle.version
            )
        time.sleep(0.3)  # never retried: one rejection each
        assert 'argus_bundle_reloads_total{result="rejected"} 3.0' in client.get("/metrics").text


def test_corrupt_redis_values_degrade_and_are_counted_never_a_500(
    bundles: Path, redis_url: str
) -> None:
    from index.store import history_key, meta_key, vector_prefix

    (path,) = list(bundles.iterdir())
    bundle = Bundle.open(path, with_index=False)
    r = redis.Redis.from_url(redis_url)
    publish(bundle, r, progress=False)
    settings = Settings(store=StoreSettings(bundles=bundles, redis_url=redis_url))
    good, bad = int(bundle.user_ids[0]), int(bundle.user_ids[1])
    r.set(f"{vector_prefix(bundle.version)}{bad}", b"\x00" * 7)  # not 4 * dim bytes
    with client_for(settings) as client:
        body = {"user_id": bad, "k": 3}
        out = client.post("/candidates", json=body)
        assert (
            out.status_code == 200 and out.json()["degraded"] and out.json()["source"] == "popular"
        )
        assert (
            client.post("/candidates", json={"user_id": good, "k": 3}).json()["source"] == "stored"
        )
        # A history entry of the wrong size: the stored vector still answers, flagged.
        r.rpush(history_key(good), b"short")
        out = client.post("/candidates", json={"user_id": good, "k": 3})
        assert (
            out.status_code == 200 and out.json()["degraded"] and out.json()["source"] == "stored"
        )
        scored = client.post("/score", json={"user_id": bad, "item_ids": [int(bundle.item_ids[0])]})
        assert scored.status_code == 200 and scored.json()["degraded"]
        assert "argus_store_corrupt_values_total 3.0" in client.get("/metrics").text
    # Version meta missing a field: every stored lookup degrades, nothing fails.
    r.hdel(meta_key(bundle.version), "buckets")
    with client_for(settings) as client:
        out = client.post("/candidates", json={"user_id": good, "k": 3})
        assert out.status_code == 200 and out.json()["degraded"]
        assert "argus_store_corrupt_values_total" in client.get("/metrics").text


def test_an_encoder_that_cannot_answer_in_time_degrades_to_the_next_source(
    bundles: Path,
) -> None:
    from service.settings import EncoderSettings
    from tests.service.conftest import client_for

    # A 1 µs deadline: the runtime encoder never answers in time.
    slow = EncoderSettings(timeout_ms=0.001, max_delay_ms=50)
    with client_for(Settings(store=StoreSettings(bundles=bundles), encoder=slow)) as client:
        bundle = served(client)
        known = int(bundle.user_ids[4])
        events = history(bundle, 5)
        out = client.post("/candidates", json={"user_id": known, "k": 3, "history": events})
        assert out.status_code == 200, out.text
        assert out.json()["source"] == "stored" and out.json()["degraded"]
        stranger = int(bundle.user_ids.max()) + 7
        out = client.post("/candidates", json={"user_id": stranger, "k": 3, "history": events})
        assert out.json()["source"] == "popular" and out.json()["degraded"]
        metrics = client.get("/metrics").text
        assert "argus_encoder_unavailable_total 2.0" in metrics
        assert "argus_encoder_alive 1.0" in metrics
        assert client.get("/readyz").status_code == 200
        # A retired encoder takes the replica out of rotation (readiness), it does not hang it.
        client.app.state.backend.served.batcher.close()  # type: ignore[attr-defined]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "encoder" in ready.json()["reason"]
        assert "argus_encoder_alive 0.0" in client.get("/metrics").text


def test_writes_check_the_token_before_the_body_and_say_how_to_authenticate(
    bundles: Path,
) -> None:
    settings = Settings(
        store=StoreSettings(bundles=bundles), requests=RequestSettings(events_token="s3cret")
    )
    with client_for(settings) as client:
        bad_body = {"user_id": "nobody", "events": []}
        refused = client.post("/events", json=bad_body)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith(
            "Bearer"
        )
        authorized = {"Authorization": "Bearer s3cret"}
        assert client.post("/events", json=bad_body, headers=authorized).status_code == 422
        schema = client.get("/openapi.json").json()
        write = schema["paths"]["/events"]["post"]
        assert {"400", "401", "403", "408", "413", "422", "503"} <= set(write["responses"])
        assert write["security"] and "HTTPBearer" in schema["components"]["securitySchemes"]
        for path in ("/candidates", "/score"):
            assert {"400", "408", "413", "422", "503"} <= set(
                schema["paths"][path]["post"]["responses"]
            )
        metrics = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        assert list(metrics) == ["text/plain"]
        assert client.get("/docs").status_code == 200


def test_docs_can_be_turned_off_and_closed_writes_declare_no_credentials(bundles: Path) -> None:
    settings = Settings(store=StoreSettings(bundles=bundles), server=ServerSettings(docs=False))
    with client_for(settings) as client:
        assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
        schema = client.get("/openapi.json").json()
        assert "security" not in schema["paths"]["/events"]["post"]
        assert "securitySchemes" not in schema.get("components", {})


def reference_candidates(bundle: Bundle, user_row: int, k: int, excluded: list[int]) -> list[dict]:
    """/candidates from the bundle's arrays alone: every item scored exactly (float64, rounded
    once), the excluded ones left out, the best ``k`` with both scores."""
    vector = bundle.user_vectors[user_row].astype(np.float64)
    query, ranking = bundle.retrieval_part(vector), bundle.ranking_part(vector)
    retrieval = (bundle.retrieval_item_vectors.astype(np.float64) @ query).astype(np.float32)
    rank = (bundle.item_vectors.astype(np.float64) @ ranking).astype(np.float32)
    order = [r for r in np.argsort(-retrieval, kind="stable") if bundle.item_ids[r] not in excluded]
    return [
        {
            "item_id": int(bundle.item_ids[r]),
            "score": float(retrieval[r]),
            "ranking_score": float(rank[r]),
        }
        for r in order[:k]
    ]


def test_candidates_and_scores_equal_a_reference_built_from_the_bundle_alone(
    local: TestClient,
) -> None:
    bundle = served(local)
    n = len(bundle.item_ids)
    for user_row in (0, 3, 7):
        user = int(bundle.user_ids[user_row])
        for k, excluded in ((n, []), (n // 2 + 1, [int(i) for i in bundle.item_ids[::5]])):
            body = {"user_id": user, "k": k, "exclude_item_ids": excluded}
            reply = local.post("/candidates", json=body).json()
            assert (reply["source"], reply["degraded"]) == ("stored", False)
            assert reply["model_version"] == bundle.version
            expected = reference_candidates(bundle, user_row, k, excluded)
            assert reply["items"] == expected  # item for item, score for score
            ids = [c["item_id"] for c in expected]
            scores = local.post("/score", json={"user_id": user, "item_ids": ids}).json()
            assert scores["scores"] == [c["ranking_score"] for c in expected]


def test_a_bundle_that_searches_exactly_serves_the_reference_and_says_so(
    exported: Path, tmp_path: Path
) -> None:
    """Built with ``search="exact"`` (what ``auto`` picks where the graph is not faster), the
    service answers every size of request from every item, and its bundle metric says how."""
    build(exported, tmp_path, HnswParams(k=20, sample=100, search="exact"), progress=False)
    with client_for(Settings(store=StoreSettings(bundles=tmp_path))) as client:
        bundle = served(client)
        assert bundle.exact_from == 0
        for user_row, k in ((0, 1), (3, 5), (7, 20)):
            user = int(bundle.user_ids[user_row])
            excluded = [int(i) for i in bundle.item_ids[user_row::7]]
            body = {"user_id": user, "k": k, "exclude_item_ids": excluded}
            reply = client.post("/candidates", json=body).json()
            assert reply["items"] == reference_candidates(bundle, user_row, k, excluded)
        info = f'argus_bundle_info{{search="exact",version="{bundle.version}"}}'
        assert metric(client, info) == 1.0
        metrics = client.get("/metrics").text
        assert "\nargus_ann_batch_size_count 0.0\n" in metrics  # the graph was never asked


def test_the_docs_are_served_with_their_own_assets_and_no_cdn(
    bundles: Path, tmp_path: Path
) -> None:
    assets = tmp_path / "swagger-ui"
    result = CliRunner().invoke(app_cli, ["docs-assets", "--dir", str(assets)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in assets.iterdir()) == sorted(ASSETS)
    settings = Settings(
        store=StoreSettings(bundles=bundles), server=ServerSettings(docs_assets=assets)
    )
    with client_for(settings) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
        assert "cdn" not in page.text.lower() and "http" not in page.text.split("<body>")[-1]
        script = client.get("/docs/assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and "SwaggerUIBundle" in script.text
        assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN: not served
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"ARGUS_DOCS_ASSETS=.*argus docs-assets"):
        create_app(
            Settings(store=StoreSettings(bundles=bundles), server=ServerSettings(docs_assets=empty))
        )


def test_the_hot_lane_answers_as_the_router_would(local: TestClient) -> None:
    """POST /candidates and /score go straight to their endpoints (service.middleware.HotLane);
    what they answer, and what the router answers for anything else on those paths, is the
    usual: the endpoint's 200, its 422s with the app's handler, counted under the route."""
    user = int(served(local).user_ids[0])
    labels = 'endpoint="/candidates",status="{}"'
    before = {s: metric(local, f"argus_requests_total{{{labels.format(s)}}}") for s in (200, 422)}
    assert local.post("/candidates", json={"user_id": user, "k": 3}).status_code == 200
    assert_422_naming(local.post("/candidates", json={"user_id": user, "k": 0}), "k")
    assert_422_naming(local.post("/candidates", content=b"{not json"), "body")
    for status, more in ((200, 1), (422, 2)):
        assert (
            metric(local, f"argus_requests_total{{{labels.format(status)}}}")
            == before[status] + more
        )
    assert local.get("/candidates").status_code == 405  # another method: the router's answer
    slash = local.post("/score/", json={"user_id": user, "item_ids": [1]}, follow_redirects=False)
    assert slash.status_code == 307 and slash.headers["location"].endswith("/score")


def test_fastapis_opentelemetry_hooks_are_off_unless_asked(bundles: Path) -> None:
    store = StoreSettings(bundles=bundles)
    off = create_app(Settings(store=store))
    on = create_app(Settings(store=store, server=ServerSettings(opentelemetry=True)))
    hooks = ("tracing", "metrics", "logs")
    assert not any(off._telemetry[hook] for hook in hooks)  # type: ignore[literal-required]
    assert all(on._telemetry[hook] for hook in hooks)  # type: ignore[literal-required]
