from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from argus.replay import Pairs, popularity_scores
from model.contract import DAY
from model.data.events import Events, read_events
from model.data.simulate import SimConfig, Simulator, Truth
from model.future import (
    WindowTargets,
    ease_scores,
    estimated_offsets,
    fit_oracle,
    history_latents,
    mapped_to_truth,
    oracle_ranking,
    popular_ranking,
    positive_factors,
    recency_scores,
    recent_events,
    split_users,
)
from model.metrics import recall
from tests.events import events_from


def test_targets_are_the_distinct_positives_of_the_window_and_new_ones_were_never_met() -> None:
    t0 = 10 * DAY
    rows = [  # user, item, time, played_ratio
        (1, 5, t0 - 100, 1.0),
        (1, 6, t0 - 50, 0.0),  # a skip before the window: still "seen"
        (1, 5, t0 + 10, 1.0),
        (1, 6, t0 + 20, 1.0),
        (1, 7, t0 + 30, 1.0),
        (1, 7, t0 + 40, 1.0),  # twice: one target
        (1, 8, t0 + 8 * DAY, 1.0),  # after the window
        (2, 9, t0 + 10, 0.0),  # a skip: no target, user 2 has none
    ]
    u, i, t, r = (np.array(c) for c in zip(*rows, strict=True))
    events = events_from(user_id=u, item_id=i, timestamp=t, played_ratio=r)
    window = WindowTargets.of(events, t0)
    assert window.users.tolist() == [1]
    assert window.items[0].tolist() == [5, 6, 7] and window.seen[0].tolist() == [5, 6]
    assert [n.tolist() for n in window.new_items()] == [[7]]
    assert recall([np.array([7, 5])], window.items, 1) == pytest.approx(1 / 3)
    assert recall([np.array([7, 5])], window.items, 2) == pytest.approx(2 / 3)
    popular = popular_ranking(events, window, 2, exclude_seen=True)
    assert not np.isin(popular[0], [5, 6]).any()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Events, Truth, int]:
    out: Path = tmp_path_factory.mktemp("world")
    cfg = SimConfig(n_users=5000, n_items=20000, n_days=30, seed=0)
    Simulator(cfg).run(out, progress=False)
    return read_events(out), Truth(out), cfg.start_time + (cfg.n_days - 7) * DAY


def test_in_the_default_world_personal_taste_beats_popularity_two_to_one(
    world: tuple[Events, Truth, int],
) -> None:
    """Issue 16 (3b): the oracle's recall@100 of items new to the user is >= 2x MostPop's."""
    events, truth, start = world
    fit, test = split_users(WindowTargets.of(events, start, users=2000))
    weight = fit_oracle(truth, fit, 100, exclude_seen=True)
    new = test.new_items()
    oracle = recall(oracle_ranking(truth, test, 100, True, weight), new, 100)
    popular = recall(popular_ranking(events, test, 100, True), new, 100)
    assert oracle >= 2.0 * popular, (oracle, popular)
    assert popular > 0.03  # popularity still finds something: not a degenerate world


def test_a_users_own_feedback_shows_part_of_their_personal_offset(
    world: tuple[Events, Truth, int],
) -> None:
    """The ceiling check of ``benchmarks/pair_ceiling.py``: the offset estimated from a user's
    feedback before the window points the right way, and ranking their window impressions with
    it recovers part of what the offset is worth to the oracle, not all of it."""
    events, truth, start = world
    inside = (events.timestamp >= start) & (events.source > 0)
    users = np.unique(events.user_id[inside])[:600]
    offsets = estimated_offsets(truth, events, users, start)
    at = np.full(len(users), start - 1)
    true = truth.user_latent(users, at) - truth.user_latent(users, at, offset=False)
    estimated = np.flatnonzero(np.abs(offsets).sum(1) > 0)
    assert len(estimated) > 0.8 * len(users)
    correlation = [np.corrcoef(offsets[u], true[u])[0, 1] for u in estimated]
    assert np.median(correlation) > 0.3, np.median(correlation)

    pairs = Pairs.of(events, users, start, days=7.0)
    rows = truth.item_rows(pairs.item)
    latent, bias = truth.item_latent(rows), truth.arrays["item_bias"][rows]
    when = np.full(len(pairs.user), start - 1)
    no_offset = truth.user_latent(pairs.user, when, offset=False)
    with_estimate = no_offset + offsets[np.searchsorted(users, pairs.user)]

    def accuracy(user: np.ndarray) -> float:
        return pairs.accuracy(np.einsum("nk,nk->n", user, latent) + bias)

    oracle = pairs.accuracy(truth.affinity(pairs.user, pairs.item, pairs.timestamp))
    assert accuracy(no_offset) + 0.02 < accuracy(with_estimate) < oracle - 0.01

    # a model reads only its last max_len events: a short history shows less of the offset
    short = estimated_offsets(truth, events, users, start, last=100)
    with_short = no_offset + short[np.searchsorted(users, pairs.user)]
    assert accuracy(no_offset) < accuracy(with_short) < accuracy(with_estimate) - 0.005
    everything = estimated_offsets(truth, events, users, start, last=10**9)
    np.testing.assert_array_equal(everything, offsets)


def test_history_latents_are_the_mean_true_latent_of_each_users_last_events(
    world: tuple[Events, Truth, int],
) -> None:
    """The taste probe's reference: hand-computed for two users, zero for a user with no
    event before the cut, and the whole history's mean shows the taste better than a short one."""
    events, truth, start = world
    users = np.unique(events.user_id)[:300]
    users = np.r_[users, events.user_id.max() + 1]  # never seen
    means = history_latents(truth, events, users, start, 50)
    for u in (0, 7):
        rows = np.flatnonzero((events.user_id == users[u]) & (events.timestamp < start))[-50:]
        expected = truth.item_latent(truth.item_rows(events.item_id[rows])).mean(0)
        np.testing.assert_allclose(means[u], expected, rtol=1e-6)
    assert not means[-1].any()
    users, means = users[:-1], means[:-1]
    taste = truth.user_latent(users, np.full(len(users), start - 1), offset=False)

    def fit(x: np.ndarray) -> float:  # in-sample R² of a least-squares readout
        design = np.c_[x, np.ones(len(x))]
        residual = taste - design @ np.linalg.lstsq(design, taste, rcond=None)[0]
        return 1 - float((residual**2).sum() / ((taste - taste.mean(0)) ** 2).sum())

    one = history_latents(truth, events, users, start, 1)
    assert fit(one) + 0.05 < fit(means), (fit(one), fit(means))


def test_recent_events_are_each_users_last_ones_under_the_mask() -> None:
    user = np.array([1, 1, 1, 1, 2, 2, 3])
    events = Events.from_arrays(
        user_id=user,
        item_id=np.arange(7),
        timestamp=np.arange(7) + DAY,
        source=np.zeros(7),
        artist_id=np.full(7, -1),
        played_ratio=np.ones(7),
        liked=np.zeros(7, bool),
        disliked=np.zeros(7, bool),
    )
    mask = np.array([True, True, False, True, True, True, False])
    assert recent_events(events, mask, 2).tolist() == [0, 1, 0, 1, 1, 1, 0]
    assert recent_events(events, mask, 1).tolist() == [0, 0, 0, 1, 0, 1, 0]
    assert not recent_events(events, np.zeros(7, dtype=bool), 3).any()


def test_items_mapped_to_the_truth_from_their_own_latent_are_the_truth(
    world: tuple[Events, Truth, int],
) -> None:
    """``mapped_to_truth`` fits a linear map from learned item vectors to the true latent and
    bias: handed the truth itself it returns it; an item without a vector gets the intercept."""
    _, truth, _ = world
    ids = truth.arrays["item_ids"][:3000]
    rows = truth.item_rows(ids)
    exact = np.column_stack([truth.item_latent(rows), truth.arrays["item_bias"][rows]])
    order = np.argsort(ids)
    query = np.array([ids[5], -7])
    latent, bias = mapped_to_truth(truth, ids[order], exact[order], query)
    np.testing.assert_allclose(latent[0], exact[5, :-1], atol=1e-4)
    assert bias[0] == pytest.approx(exact[5, -1], abs=1e-4)
    # no vector: the map's intercept, what a zero vector maps to (here the exact map's 0)
    np.testing.assert_allclose(latent[1], 0.0, atol=1e-4)
    assert bias[1] == pytest.approx(0.0, abs=1e-4)


def test_the_logs_show_items_only_in_part_even_to_a_perfect_user(
    world: tuple[Events, Truth, int],
) -> None:
    """The pair ceiling's item rows: the true user scored against items as a rank-64 SVD of the
    positives shows them (mapped to the truth) beats MostPop, yet stays well below the oracle,
    which knows the items exactly."""
    events, truth, start = world
    inside = (events.timestamp >= start) & (events.source > 0)
    users = np.unique(events.user_id[inside])[:800]
    pairs = Pairs.of(events, users, start, days=7.0)
    item_ids, factors = positive_factors(events, start)
    assert factors.shape == (len(item_ids), 64) and np.all(np.diff(item_ids) > 0)
    user = truth.user_latent(pairs.user, np.full(len(pairs.user), start - 1))
    latent, bias = mapped_to_truth(truth, item_ids, factors, pairs.item)
    learned = pairs.accuracy(np.einsum("nk,nk->n", user, latent) + bias)
    exact = pairs.accuracy(
        truth.affinity(pairs.user, pairs.item, np.full(len(pairs.user), start - 1))
    )
    popular = pairs.accuracy(np.log1p(popularity_scores(events, pairs, start)))
    assert popular + 0.005 < learned < exact - 0.02, (popular, learned, exact)


def test_unfamiliar_artists_keeps_targets_by_new_artists_and_hides_every_item_of_known_ones() -> (
    None
):
    rows = [  # user, item, artist, timestamp, liked
        (1, 10, 1, 100, True),
        (1, 20, 2, 110, True),
        (2, 12, 2, 120, True),  # another user's: item 12 is artist 2's too
        (1, 11, 1, 1_000, True),  # window: a known artist
        (1, 30, 3, 1_010, True),  # window: a new artist
        (1, 40, -1, 1_020, True),  # window: an unknown artist
    ]
    user, item, artist, time, liked = (np.array(c) for c in zip(*rows, strict=True))
    events = events_from(user_id=user, item_id=item, timestamp=time, artist_id=artist, liked=liked)
    window = WindowTargets.of(events, 1_000, days=1.0)
    assert window.users.tolist() == [1] and window.items[0].tolist() == [11, 30, 40]
    unfamiliar = window.unfamiliar_artists(events)
    assert unfamiliar.items[0].tolist() == [30]
    assert unfamiliar.seen[0].tolist() == [10, 11, 12, 20]


def test_mostpop_lists_never_hold_a_seen_item_even_when_short() -> None:
    """A user who has seen most of the popular items gets a shorter list, never a seen item."""
    t0 = 10 * DAY
    items = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 4])  # popularity 4, 3, 2, 1
    events = events_from(
        user_id=np.arange(len(items)) + 10,
        item_id=items,
        timestamp=t0 - 100 + np.arange(len(items)),
        played_ratio=np.ones(len(items)),
    )
    window = WindowTargets(
        start=t0,
        users=np.array([1, 2]),
        items=[np.array([4]), np.array([1])],
        seen=[np.array([1, 2, 3]), np.array([], np.int64)],
    )
    lists = popular_ranking(events, window, 3, exclude_seen=True)
    assert [row.tolist() for row in lists] == [[4], [1, 2, 3]]
    every = popular_ranking(events, window, 3, exclude_seen=False)
    assert [row.tolist() for row in every] == [[1, 2, 3]] * 2


def test_recency_weighs_each_positive_by_its_age_and_discounts_old_items() -> None:
    t0 = 100 * DAY
    events = events_from(
        user_id=[1, 2, 3, 4, 5],
        item_id=[7, 7, 8, 8, 9],
        timestamp=[t0 - 1 * DAY, t0 - 3 * DAY, t0 - 50 * DAY, t0 - 2 * DAY, t0 + DAY],
        played_ratio=[1.0, 1.0, 0.0, 1.0, 1.0],  # item 8 first met as a skip 50 days ago
    )
    ids = np.array([7, 8, 9])
    scores = recency_scores(events, ids, t0, scale_days=7.0)
    assert scores == pytest.approx([np.exp(-1 / 7) + np.exp(-3 / 7), np.exp(-2 / 7), 0.0])
    aged = recency_scores(events, ids, t0, scale_days=7.0, age_days=10.0)
    assert aged == pytest.approx(scores / [1 + 3 / 10, 1 + 50 / 10, 1.0])


def test_ease_scores_an_items_companion_for_a_user_who_met_the_item() -> None:
    """Items 1 and 2 are always liked together, as are 3 and 4: a user who liked 1 gets 2 first
    and nothing for the other pair; a user with no history before the window gets zeros."""
    t0 = 10 * DAY
    users = np.repeat(np.arange(10, 30), 2)
    items = np.where(np.arange(40) % 4 < 2, 1, 3) + np.arange(40) % 2
    events = events_from(
        user_id=np.r_[users, 1],
        item_id=np.r_[items, 1],
        timestamp=np.r_[np.arange(40), 50] + t0 - DAY,
        played_ratio=np.ones(41),
    )
    window = WindowTargets(
        start=t0,
        users=np.array([1, 2]),
        items=[np.array([2]), np.array([1])],
        seen=[np.array([1]), np.array([], np.int64)],
    )
    scores = ease_scores(events, window, np.array([1, 2, 3, 4]), ridge=1.0)
    assert scores.shape == (2, 4)
    assert np.argmax(scores[0]) == 1 and scores[0, 1] > 0.5
    assert scores[0, 2:] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert not scores[1].any()
    assert [w.users.tolist() for w in (window.with_history(), window.subset(np.array([1])))] == [
        [1],
        [2],
    ]


def test_the_recall_ceiling_finds_the_new_hits_that_returning_users_go_on_to_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Old items were liked by many long ago; in the last days new items 100..109 took over, and
    in the window the returning users like those. MostPop lists the old ones; what is popular
    now among what is new finds the hits, and every family reports both ways of choosing."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    from benchmarks.recall_ceiling import markdown, measure

    rng = np.random.default_rng(0)
    rows = []  # user, item, day
    for user in range(60):
        rows += [(user, int(rng.integers(0, 20)), int(rng.integers(0, 40))) for _ in range(8)]
        rows += [(user, 100 + int(rng.integers(0, 10)), 75 + int(rng.integers(0, 4)))]
        rows += [(user, 100 + int(rng.integers(0, 10)), 81 + int(rng.integers(0, 19)))]
    u, i, d = (np.array(c) for c in zip(*rows, strict=True))
    events = events_from(user_id=u, item_id=i, timestamp=d * DAY + u, played_ratio=np.ones(len(u)))
    result = measure(events, test_fraction=0.2, k=5, folds=2)
    table = result["rankings"]
    assert result["users_with_history"] == 60
    assert table["recency"]["all"]["generous"] > 2 * table["MostPop"]["all"]["generous"]
    assert table["blend"]["new"]["fair"] is not None and table["MostPop"]["new"]["fair"] is None
    text = markdown(result, lambda value, part: f"{value:.3f}")
    assert "| recency |" in text and "60 of 60 window users" in text
