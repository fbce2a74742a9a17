"""The replay tooling (argus/replay.py) against a real uvicorn server of the tiny bundle: what
the service answers equals the bundle evaluated offline, and the pairs are the ones meant."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from argus.replay import (
    Client,
    Pairs,
    artist_rates,
    candidates,
    counter_scores,
    like_rate_scores,
    offline,
    quick_replay,
    score_pairs,
    session_replay,
)
from index.bundle import Bundle, list_versions
from model.contract import DAY
from model.data.events import Events, read_events
from model.future import WindowTargets
from model.impressions import SESSION_GAP, impression_grades, session_ids
from model.metrics import recall
from service.settings import EncoderSettings, Settings, StoreSettings
from tests.conftest import serving
from tests.events import events_from


@pytest.fixture
def served(bundles: Path) -> Iterator[tuple[str, Bundle]]:
    settings = Settings(
        store=StoreSettings(bundles=bundles), encoder=EncoderSettings(max_delay_ms=0)
    )
    bundle = Bundle.open(list_versions(bundles)[-1])
    yield from ((url, bundle) for url in serving(settings))


def replay_of(sim_data: Path, bundle: Bundle) -> tuple[Events, WindowTargets, Pairs]:
    """The events, 40 users' window of 3 days after the bundle's cut-off, and its pairs."""
    events = read_events(sim_data)
    start = int(bundle.manifest["trained_until"])
    window = WindowTargets.of(events, start, days=3.0, users=40)
    return events, window, Pairs.of(events, window.users, window.start, days=3.0)


def test_the_service_answers_what_the_bundle_says_offline(
    served: tuple[str, Bundle], sim_data: Path
) -> None:
    url, bundle = served
    _, window, pairs = replay_of(sim_data, bundle)
    assert len(window) > 10 and len(pairs.hi) > 50
    client = Client(url)
    k = 50
    service = candidates(client, window, k)
    scores = score_pairs(client, pairs)
    local, local_scores = offline(bundle, window, pairs, k)
    # /score is the same dot product (float32 summation order aside), undefined at the same places.
    assert np.array_equal(np.isnan(scores), np.isnan(local_scores))
    np.testing.assert_allclose(
        scores[~np.isnan(scores)], local_scores[~np.isnan(scores)], rtol=0, atol=1e-5
    )
    # /candidates through HNSW finds (nearly) what exact search finds, with and without seen items.
    for got, exact in ((service.all, local.all), (service.new, local.new)):
        overlap = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(got, exact, strict=True)])
        assert overlap > 0.9, overlap
    for listed, seen in zip(service.new, window.seen, strict=True):
        assert not np.isin(listed, seen).any()  # "new" lists leave the user's earlier items out
    new = window.new_items()
    assert abs(recall(service.all, window.items, k) - recall(local.all, window.items, k)) < 0.05
    assert abs(recall(service.new, new, k) - recall(local.new, new, k)) < 0.05
    assert set(service.sources) <= {"stored", "popular"}


def test_pairs_are_impressions_of_one_user_and_day_ordered_by_grade(
    serving_root: Path, sim_data: Path
) -> None:
    bundle = Bundle.open(list_versions(serving_root)[-1], with_index=False)
    events, window, pairs = replay_of(sim_data, bundle)
    assert np.isin(pairs.user, window.users).all()
    assert (pairs.timestamp >= window.start).all() and (
        pairs.timestamp < window.start + 3 * DAY
    ).all()
    assert (pairs.user[pairs.hi] == pairs.user[pairs.lo]).all()
    assert (pairs.timestamp[pairs.hi] // DAY == pairs.timestamp[pairs.lo] // DAY).all()
    grade = impression_grades(events)
    by_key = {
        (int(u), int(i), int(t)): int(g)
        for u, i, t, g in zip(events.user_id, events.item_id, events.timestamp, grade, strict=True)
    }
    grades = np.array(
        [
            by_key[(int(u), int(i), int(t))]
            for u, i, t in zip(pairs.user, pairs.item, pairs.timestamp, strict=True)
        ]
    )
    assert (grades[pairs.hi] > grades[pairs.lo]).all() and (pairs.weight > 0).all()
    # Perfect and reversed scores bound the metric; an unscored impression loses to any scored one.
    assert pairs.accuracy(grades.astype(float)) == 1.0
    assert pairs.accuracy(-grades.astype(float)) == 0.0
    lowest = grades.astype(float)
    lowest[grades == grades.min()] = np.nan  # unscored, but never the better one of a pair
    assert pairs.accuracy(lowest) == 1.0
    highest = grades.astype(float)
    highest[grades == grades.max()] = np.nan  # unscored and always the better one: all wrong
    assert pairs.accuracy(highest) < 1.0


def test_quick_replay_is_the_demos_line(served: tuple[str, Bundle], sim_data: Path) -> None:
    url, bundle = served
    measured = quick_replay(url, read_events(sim_data), bundle, users=25, k=20)
    assert (
        measured.users == 25 and 0.0 <= measured.popular <= 1.0 and 0.0 <= measured.service <= 1.0
    )
    assert measured.pairs > 0
    assert 0.0 <= measured.pair_accuracy <= 1.0 and 0.0 <= measured.popular_pair_accuracy <= 1.0
    line = measured.line()
    assert f"recall@20 {measured.service:.3f} vs most popular {measured.popular:.3f}" in line
    assert (
        f"PairAccuracy {measured.pair_accuracy:.4f} vs most popular "
        f"{measured.popular_pair_accuracy:.4f}" in line
    )


def graded_events(columns: str, rows: Sequence[tuple[object, ...]]) -> Events:
    """Events from ``rows`` of the named columns; an impression (source > 0) not liked is hated."""
    arrays = {n: np.array(c) for n, c in zip(columns.split(), zip(*rows, strict=True), strict=True)}
    return events_from(**arrays, disliked=~arrays["liked"] & (arrays["source"] > 0))


def test_an_items_past_like_rate_counts_only_impressions_before_the_window() -> None:
    # item 1: shown 3 times before the window, liked twice; item 2: shown once, not liked;
    # item 3: organic only (never shown): the overall rate; the window's own likes never count
    rows = [  # user, item, timestamp, source, liked
        (1, 1, 10, 1, True),
        (1, 1, 20, 1, True),
        (2, 1, 30, 1, False),
        (2, 2, 40, 1, False),
        (2, 3, 50, 0, True),
        (3, 1, 200, 1, True),
        (3, 2, 210, 1, True),
        (3, 3, 220, 1, False),
    ]
    events = graded_events("user_id item_id timestamp source liked", rows)
    pairs = Pairs.of(events, None, start=100, days=1.0)
    scores = like_rate_scores(events, pairs, start=100, prior=1.0)
    overall = 2 / 4  # likes over impressions before the window
    expected = {1: (2 + overall) / (3 + 1), 2: (0 + overall) / (1 + 1), 3: overall}
    assert scores.tolist() == [expected[int(i)] for i in pairs.item]
    assert len(pairs.hi) == 2  # user 3's like of item 1 and of item 2 above their hate of 3
    # by what the catalog knows: say it knows items 1 and 3 only; a score that ranks item 3
    # first loses both pairs, the like rate wins the first (0.625 > 0.5) and loses the second
    known = np.isin(pairs.item, [1, 3])
    ranked = np.where(pairs.item == 3, 2.0, np.where(pairs.item == 1, 1.0, np.nan))
    groups = pairs.by_catalog(known, {"s": ranked, "rate": scores})
    assert list(groups) == ["both known", "only the worse known"]
    assert groups["both known"] == {"share": 0.5, "s": 0.0, "rate": 1.0}
    assert groups["only the worse known"] == {"share": 0.5, "s": 0.0, "rate": 0.0}


def test_the_counters_read_the_users_own_record_on_the_artist_before_the_window() -> None:
    # before the window (t < 100) user 1 liked artist 10's item twice and hated artist 20's once;
    # in it they are shown one more item of each; only item 3 had a positive before (user 2's)
    rows = [  # user, item, artist, timestamp, source, liked
        (1, 1, 10, 10, 1, True),
        (1, 1, 10, 20, 1, True),
        (1, 2, 20, 30, 1, False),
        (2, 3, 10, 45, 0, True),
        (1, 3, 10, 200, 1, False),  # the window's own feedback never counts
        (1, 4, 20, 210, 1, True),
    ]
    events = graded_events("user_id item_id artist_id timestamp source liked", rows)
    pairs = Pairs.of(events, None, start=100, days=1.0)
    assert sorted(pairs.item.tolist()) == [3, 4]
    rates = artist_rates(events, pairs, 100)
    by_item = dict(zip(pairs.item.tolist(), rates.tolist(), strict=True))
    assert by_item == {3: (2 + 1) / (2 + 2), 4: (0 + 1) / (1 + 2)}  # smoothed to 1/2
    scores = dict(
        zip(pairs.item.tolist(), counter_scores(events, pairs, 100).tolist(), strict=True)
    )
    assert scores[3] == pytest.approx(np.log(2) + np.log(3))  # log1p(1) + logit(3/4)
    assert scores[4] == pytest.approx(np.log(1 / 2))  # log1p(0) + logit(1/3)
    assert pairs.accuracy(counter_scores(events, pairs, 100)) == 0.0  # the hate ranked first


def test_a_difference_of_pair_accuracies_resamples_users_not_pairs() -> None:
    # impressions 0-3 are user 7's (two days: like, skip each), 4-5 user 8's (one pair of
    # weight 2)
    pairs = Pairs(
        rows=np.arange(6),
        user=np.array([7, 7, 7, 7, 8, 8]),
        item=np.arange(6),
        timestamp=np.zeros(6, np.int64),
        grade=np.array([4, 1, 4, 1, 4, 1]),
        group=np.array([0, 0, 1, 1, 2, 2]),
        hi=np.array([0, 2, 4]),
        lo=np.array([1, 3, 5]),
        weight=np.array([1.0, 1.0, 2.0]),
    )
    a = np.array([2.0, 1.0, 1.0, 1.0, 0.0, 1.0])  # wins, ties, loses
    b = np.array([np.nan, 1.0, 0.0, 1.0, 0.0, 1.0])  # unscored loses: loses, loses, loses
    d = pairs.difference(a, b, resamples=4_000)
    assert d["difference"] == pytest.approx((1.0 + 0.5 + 0.0) / 4)  # weighted: 1.5 of 4
    # resampled by user: only 7 (0.75), only 8 (0) or both (0.375): a wide interval
    assert d["low"] == pytest.approx(0.0) and d["high"] == pytest.approx(0.75)
    assert pairs.difference(a, a) == {"difference": 0.0, "low": 0.0, "high": 0.0}
    # a log without impressions (MovieLens) has no pairs: no difference, and no error
    none = dataclasses.replace(pairs, hi=pairs.hi[:0], lo=pairs.lo[:0], weight=pairs.weight[:0])
    assert all(np.isnan(v) for v in none.difference(a, b).values())


def test_session_replay_scores_each_session_realtime_and_stored(
    served: tuple[str, Bundle], sim_data: Path
) -> None:
    url, bundle = served
    events, window, _ = replay_of(sim_data, bundle)
    users = window.users[:12]
    client = Client(url)
    whole = session_replay(client, events, users, window.start, days=3.0, k=20)
    assert whole.pairs > 0 and whole.sessions > 0
    assert set(whole.pair_accuracy) == set(whole.recall) == {"realtime", "stored", "MostPop"}
    assert all(0.0 <= v <= 1.0 for v in [*whole.pair_accuracy.values(), *whole.recall.values()])
    assert whole.sources.get("realtime", 0) > 0 and whole.sources.get("stored", 0) > 0
    # The realtime leg reads the history in the request: it is not the stored vector's answer.
    assert whole.pair_accuracy["realtime"] != whole.pair_accuracy["stored"]
    # Revealing the sessions' first events scores only the rest: fewer pairs, no session whose
    # events are all revealed.
    mine = events.take(np.isin(events.user_id, users))
    session = session_ids(mine, SESSION_GAP)
    in_window = (mine.timestamp >= window.start) & (mine.timestamp < window.start + 3 * DAY)
    lengths = np.unique(session[in_window], return_counts=True)[1]
    longest = int(lengths.max())
    revealed = session_replay(client, events, users, window.start, days=3.0, k=20, reveal=2)
    assert revealed.pairs < whole.pairs
    nothing = session_replay(client, events, users, window.start, days=3.0, k=20, reveal=longest)
    assert nothing.pairs == 0 and not nothing.sources
