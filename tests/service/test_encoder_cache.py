"""The runtime encoder's key/value cache: incremental vectors equal full re-encodes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from index.bundle import Bundle, HnswParams, build, list_versions
from model.checkpoint import load_model
from model.contract import ENCODER_FILE, HISTORY_EVENT, STEP_FILE
from model.export import export_onnx, export_step_onnx
from service.encoder import DynamicBatcher, Encoder
from service.encoder_cache import CacheReport, EncoderCache, classify
from service.settings import EncoderSettings, RequestSettings, Settings, StoreSettings
from tests.service.conftest import client_for


def random_events(rng: np.random.Generator, n: int, after: int) -> np.ndarray:
    """``n`` events after time ``after``: every field varies (gaps, sources, feedback, NaN)."""
    out = np.zeros(n, dtype=HISTORY_EVENT)
    out["item_id"] = rng.integers(1, 5_000, n)
    out["artist_id"] = np.where(rng.random(n) < 0.2, -1, rng.integers(0, 300, n))
    out["timestamp"] = after + np.cumsum(rng.choice([0, 5, 60, 3_600, 90_000], n))
    out["source"] = rng.integers(0, 4, n)
    ratio = rng.random(n).astype(np.float32)
    out["played_ratio"] = np.where(rng.random(n) < 0.2, np.nan, ratio)
    out["liked"] = rng.random(n) < 0.1
    out["disliked"] = rng.random(n) < 0.05
    return out


def encoder_of(root: Path, max_len: int) -> Encoder:
    bundle = Bundle.open(list_versions(root)[-1], with_index=False)
    return Encoder(bundle.encoder_path, max_len=max_len, device="cpu", step_path=bundle.step_path)


def test_cached_vectors_equal_full_re_encodes_over_random_event_streams(
    serving_root: Path,
) -> None:
    """Five users' histories grow by 1-3 events at a time, past ``max_len`` (the window rolls),
    are asked again unchanged, are edited in the middle or cut short; requests come alone and in
    concurrent groups (one user twice in a batch too). Every vector equals a full encode of the
    same history by a cache-less encoder within 1e-4, and every outcome occurs."""
    max_len = 24
    encoder = encoder_of(serving_root, max_len)
    reference = encoder_of(serving_root, max_len)
    assert encoder.stateful
    reports: list[CacheReport] = []
    batcher = DynamicBatcher(
        encoder, max_batch=8, max_delay_ms=5, cache_bytes=64 << 20, observe_cache=reports.append
    )
    rng = np.random.default_rng(3)
    histories = {user: random_events(rng, 1, 1_700_000_000) for user in range(5)}
    worst = 0.0

    async def ask(pairs: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        return list(await asyncio.gather(*(batcher.encode(h, u) for u, h in pairs)))

    for _ in range(70):
        users = rng.choice(5, size=int(rng.integers(1, 4)), replace=True).tolist()
        asked = []
        for user in users:
            h = histories[user]
            action = rng.random()
            if action < 0.7:  # new events
                h = np.concatenate(
                    [h, random_events(rng, int(rng.integers(1, 4)), h[-1]["timestamp"])]
                )
            elif action < 0.8 and len(h) > 2:  # an edited event in the middle
                h = h.copy()
                h[len(h) // 2]["liked"] = not h[len(h) // 2]["liked"]
            elif action < 0.9 and len(h) > 2:  # a shorter history
                h = h[: len(h) // 2]
            histories[user] = h  # (else: the same history again)
            asked.append((user, h))
        for (_, h), got in zip(asked, asyncio.run(ask(asked)), strict=True):
            want = reference.encode([h])[0]
            worst = max(worst, float(np.abs(got - want).max()))
    batcher.close()
    assert worst < 1e-4
    outcomes = sum((r.outcomes for r in reports), Counter())
    assert all(outcomes[name] > 0 for name in ("hit", "extend", "miss", "diverged")), outcomes
    assert max(len(h) for h in histories.values()) > max_len  # the window rolled
    step_tokens = sum(r.step_tokens for r in reports)
    assert 0 < step_tokens < sum(r.full_tokens for r in reports)


def test_the_cache_keeps_its_byte_budget_least_recently_used_out(serving_root: Path) -> None:
    encoder = encoder_of(serving_root, 96)
    rng = np.random.default_rng(0)
    states = encoder.encode_states([random_events(rng, 30, 1_700_000_000) for _ in range(4)])
    size = states[0].nbytes
    layers, one, heads, length, width = states[0].keys.shape()
    assert (one, length) == (1, 30)
    kv = 2 * layers * heads * length * width * 4  # keys and values of every layer
    assert kv < size < kv + 30 * HISTORY_EVENT.itemsize + 1_024
    cache = EncoderCache(max_bytes=3 * size)
    for user, state in enumerate(states[:3]):
        cache.put(user, state)
    assert cache.get(0) is states[0]  # 0 is now the most recently used
    cache.put(3, states[3])
    assert cache.get(1) is None and len(cache) == 3 and cache.bytes == 3 * size
    assert cache.get(0) is states[0] and cache.get(3) is states[3]
    cache.put(0, states[0])  # replacing an entry does not count it twice
    assert cache.bytes == 3 * size
    EncoderCache(max_bytes=size - 1).put(9, states[0])  # too big to keep: not kept, no error
    assert classify(None, states[0].events) == "miss"
    assert classify(states[0], states[0].events) == "hit"
    assert classify(states[0], states[0].events[:-1]) == "diverged"
    with pytest.raises(ValueError, match="max_bytes"):
        EncoderCache(-1)


def test_a_bundle_swap_starts_an_empty_cache(
    bundles: Path, finetuned: Path, exported: Path, tmp_path: Path
) -> None:
    """A user's state cached under one bundle is never continued by the next bundle's encoder:
    after the swap the first realtime request is a full encode by the new encoder."""
    settings = Settings(
        store=StoreSettings(bundles=bundles, reload_interval_s=0.05),
        requests=RequestSettings(events_open=True),
        encoder=EncoderSettings(max_delay_ms=0),
    )
    rng = np.random.default_rng(1)
    events = random_events(rng, 12, 1_700_000_000)
    body = [
        {
            "item_id": int(e["item_id"]),
            "artist_id": int(e["artist_id"]),
            "timestamp": int(e["timestamp"]),
            "source": int(e["source"]),
            "played_ratio": None if np.isnan(e["played_ratio"]) else float(e["played_ratio"]),
            "liked": bool(e["liked"]),
            "disliked": bool(e["disliked"]),
        }
        for e in events
    ]
    with client_for(settings) as client:
        backend = client.app.state.backend  # type: ignore[attr-defined]
        bundle = backend.served.bundle
        items = [int(i) for i in bundle.item_ids[:5]]

        def realtime(n: int) -> list[float]:
            client.post("/events", json={"user_id": 7, "events": body[n - 1 : n]})
            reply = client.post(
                "/score", json={"user_id": 7, "item_ids": items, "mode": "realtime"}
            ).json()
            assert reply["source"] == "realtime"
            return reply["scores"]

        for n in range(1, 8):
            realtime(n)
        old = backend.served
        assert old.batcher.cache is not None and len(old.batcher.cache) == 1

        # A new bundle whose encoder differs: every weight perturbed.
        model, _ = load_model(finetuned)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        changed = tmp_path / "changed"
        changed.mkdir()
        for f in exported.iterdir():
            (changed / f.name).write_bytes(f.read_bytes())
        export_onnx(model, changed / ENCODER_FILE)
        export_step_onnx(model, changed / STEP_FILE)
        build(changed, bundles, HnswParams(k=20, sample=50, search="hnsw"), progress=False)
        deadline = time.monotonic() + 10
        while backend.served is old and time.monotonic() < deadline:
            time.sleep(0.05)
        new = backend.served
        assert new is not old and new.batcher.cache is not None and len(new.batcher.cache) == 0

        scores = realtime(8)
        fresh = Encoder(new.bundle.encoder_path, max_len=96, device="cpu")
        u = fresh.encode([events[:8]])[0][: new.bundle.dim]
        rows = np.searchsorted(new.bundle.item_ids, items)
        expected = new.bundle.item_vectors[rows] @ u
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
        stale = Encoder(old.bundle.encoder_path, max_len=96, device="cpu").encode([events[:8]])
        assert np.abs(stale[0][: new.bundle.dim] - u).max() > 1e-3  # a stale state would show
        metrics = client.get("/metrics").text
        assert 'argus_encoder_cache_total{outcome="extend"}' in metrics


def test_a_model_without_a_retrieval_space_steps_too(tmp_path: Path) -> None:
    """Its graphs read no taste inputs (the exporter drops them); the encoder feeds what each
    graph reads, and steps still equal full encodes."""
    from model.argus import Argus, preset

    torch.manual_seed(0)
    model = Argus(preset("argus-tiny", tower_dim=8)).eval()
    export_onnx(model, tmp_path / ENCODER_FILE)
    export_step_onnx(model, tmp_path / STEP_FILE)
    encoder = Encoder(
        tmp_path / ENCODER_FILE, max_len=64, device="cpu", step_path=tmp_path / STEP_FILE
    )
    events = random_events(np.random.default_rng(2), 20, 1_700_000_000)
    (state,) = encoder.encode_states([events[:15]])
    for n in range(16, 21):
        state = encoder.step(state, events[:n])
        assert np.abs(state.vector - encoder.encode([events[:n]])[0]).max() < 1e-4
