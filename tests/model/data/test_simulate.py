from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from argus.cli import app
from model.contract import DAY
from model.data.events import Events, read_events
from model.data.simulate import CumulativeWeights, SimConfig, Simulator, Truth
from model.impressions import group_pairs, impression_grades, pair_weight_table
from model.metrics import pair_accuracy

ARGS = ["simulate", "--users", "200", "--items", "1000", "--days", "14", "--seed", "1", "--quiet"]


def simulate(out: Path, *extra: str) -> Path:
    result = CliRunner().invoke(app, [*ARGS, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert "simulated" in result.output and "events/s" in result.output
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> tuple[Events, Truth]:
    """Enough users for the weekly cycle and the popularity skew to show clearly."""
    out = tmp_path_factory.mktemp("sim-medium")
    Simulator(SimConfig(n_users=2000, n_items=5000, n_days=28, seed=3)).run(out, progress=False)
    return read_events(out), Truth(out)


def test_writes_valid_events_truth_and_summary(small: Path) -> None:
    events = read_events(small)  # validates schema and order
    assert len(events) > 5_000
    assert set(np.unique(events.user_id)) <= set(range(1, 201))
    assert set(np.unique(events.source)) == {0, 1, 2, 3}
    assert not np.isnan(events.played_ratio).any()  # every simulated event is a listen
    assert (
        np.diff(events.timestamp)[np.diff(events.user_id) == 0] > 0
    ).all()  # sessions never overlap
    truth = Truth(small)
    assert truth.arrays["item_latent"].shape == (1000, SimConfig().latent_dim)
    assert truth.arrays["user_taste_start"].shape == (200, SimConfig().n_genres)
    assert set(np.unique(events.item_id)) <= set(truth.arrays["item_ids"].tolist())
    summary = json.loads((small / "simulation.json").read_text())["summary"]
    assert summary["events"] == len(events)


def test_same_seed_same_bytes_other_seed_other_bytes(small: Path, tmp_path: Path) -> None:
    again = simulate(tmp_path / "again")
    for name in ("events.parquet", "truth.npz"):
        assert (small / name).read_bytes() == (again / name).read_bytes(), name
    other = simulate(tmp_path / "other", "--set", "seed=2")
    assert (small / "events.parquet").read_bytes() != (other / "events.parquet").read_bytes()


def test_chunks_in_worker_processes_write_the_same_bytes_as_one_process(tmp_path: Path) -> None:
    """Several chunks simulated by two worker processes (in order, one BLAS thread each) give
    the bytes one process writes."""
    written = [
        simulate(tmp_path / f"workers-{n}", "--set", "users_per_chunk=60", "--set", f"workers={n}")
        for n in (1, 2)
    ]
    for name in ("events.parquet", "truth.npz"):
        assert (written[0] / name).read_bytes() == (written[1] / name).read_bytes(), name


def test_rates_within_the_documented_ranges(small: Path) -> None:
    events = read_events(small)
    assert 0.01 <= events.liked.mean() <= 0.08
    assert 0.001 <= events.disliked.mean() <= 0.02
    assert 0.40 <= (events.source > 0).mean() <= 0.75
    assert not (events.liked & events.disliked).any()
    assert 0.1 <= events.skipped.mean() <= 0.5


def test_feedback_follows_true_affinity(small: Path) -> None:
    events, truth = read_events(small), Truth(small)
    affinity = truth.affinity(events.user_id, events.item_id, events.timestamp)
    assert affinity[events.liked].mean() > affinity[events.skipped].mean() + 0.5
    assert affinity[events.skipped].mean() > affinity[events.disliked].mean()
    full = events.played_ratio >= 1.0
    assert affinity[full].mean() > affinity[events.skipped].mean()


def test_policy_shows_items_the_user_likes_more_than_random_ones(
    medium: tuple[Events, Truth],
) -> None:
    events, truth = medium
    shown = events.take(events.source > 0)
    random_items = np.random.default_rng(0).choice(truth.arrays["item_ids"], len(shown))
    assert (
        truth.affinity(shown.user_id, shown.item_id, shown.timestamp).mean()
        > truth.affinity(shown.user_id, random_items, shown.timestamp).mean() + 1.0
    )


def test_organic_events_replay_liked_items(medium: tuple[Events, Truth]) -> None:
    events, _ = medium
    liked_at: dict[tuple[int, int], int] = {}
    for user, item, ts in zip(
        events.user_id[events.liked],
        events.item_id[events.liked],
        events.timestamp[events.liked],
        strict=True,
    ):
        liked_at.setdefault((int(user), int(item)), int(ts))
    organic = np.flatnonzero(events.source == 0)
    replays = sum(
        1
        for i in organic
        if liked_at.get((int(events.user_id[i]), int(events.item_id[i])), 1 << 62)
        < events.timestamp[i]
    )
    assert replays / len(organic) > 0.05


def test_popularity_is_skewed_and_weekends_are_busier(medium: tuple[Events, Truth]) -> None:
    events, truth = medium
    counts = np.sort(np.unique(events.item_id, return_counts=True)[1])[::-1]
    n_items = len(truth.arrays["item_ids"])
    assert (
        0.2 < counts[: n_items // 100].sum() / counts.sum() < 0.8
    )  # top 1% of items: a heavy head
    assert len(counts) > 0.5 * n_items  # ... and a long tail that is still played
    weekday = (events.timestamp // DAY + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
    per_day = np.bincount(weekday, minlength=7)
    assert per_day[5:].mean() > 1.15 * per_day[:3].mean()


def test_truth_rejects_unknown_items(small: Path) -> None:
    with pytest.raises(KeyError, match="unknown item id"):
        Truth(small).affinity(np.array([1]), np.array([10**9]), np.array([0]))


def test_bad_settings_fail_with_the_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*ARGS, "--out", str(tmp_path), "--set", "n_genre=3"])
    assert result.exit_code == 2 and "'n_genre' is not a setting" in result.output
    result = CliRunner().invoke(app, [*ARGS, "--out", str(tmp_path), "--set", "organic_share=lots"])
    assert result.exit_code == 2 and "organic_share='lots': expected float" in result.output
    with pytest.raises(ValueError, match="n_users must be >= 1"):
        SimConfig(n_users=0)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        SimConfig(workers=-1)


def test_a_masked_draw_is_the_full_draw_on_the_mask_from_the_same_random_stream() -> None:
    """The surfaces draw by taste and by popularity only where each is used; the random
    numbers (and so the data) must not depend on that."""
    catalog = Simulator(SimConfig(n_users=10, n_items=500, n_days=1)).catalog
    rng = np.random.default_rng(3)
    start = rng.integers(0, 400, (50, 8))
    end = start + rng.integers(1, 100, (50, 8))
    where = rng.random((50, 8)) < 0.3
    full = catalog.sample_in_range(np.random.default_rng(7), start, end, catalog.cum_taste)
    masked_rng = np.random.default_rng(7)
    masked = catalog.sample_in_range(masked_rng, start, end, catalog.cum_taste, where)
    np.testing.assert_array_equal(masked[where], full[where])
    assert (masked[~where] == -1).all() and ((full >= start) & (full < end)).all()
    later = np.random.default_rng(7)
    later.random(start.shape)  # the masked draw consumed exactly one full draw's numbers
    assert masked_rng.random() == later.random()


@pytest.mark.parametrize("per_item", [1, 8])
def test_the_guide_table_search_is_searchsorted(per_item: int) -> None:
    """``CumulativeWeights.search`` returns exactly ``np.searchsorted(cum, x, "right")``: on
    skewed and flat weights, zero weights (equal sums), the sums themselves, the ends and beyond,
    in the draws' 2-d shape."""
    rng = np.random.default_rng(3)
    zipf = (rng.permutation(5_000) + 1.0) ** -0.9
    zipf[rng.choice(5_000, 300, replace=False)] = 0.0  # runs of equal cumulative sums
    for weights in (zipf, zipf**0.3, np.ones(7)):
        cum = CumulativeWeights(weights, per_item=per_item)
        x = np.concatenate(
            [
                rng.random(20_000) * cum.cum[-1],
                cum.cum,
                np.nextafter(cum.cum, 0),
                [0.0, -1.0, cum.cum[-1], 2 * cum.cum[-1]],
            ]
        )
        expected = np.searchsorted(cum.cum, x, side="right")
        np.testing.assert_array_equal(cum.search(x), expected)
        grid = x[: 2 * (len(x) // 2)].reshape(-1, 2)
        np.testing.assert_array_equal(cum.search(grid), expected[: grid.size].reshape(-1, 2))


@pytest.mark.parametrize("strength", [0.3])
def test_in_a_world_with_moods_the_session_matters_to_the_oracle(
    tmp_path: Path, strength: float
) -> None:
    """Within a session, the oracle that knows its mood orders the impressions better than the
    one with the day's taste alone, by at least 0.02 PairAccuracy; and the first events of a
    session show its mood (its genre is over-represented among them)."""
    out = simulate(tmp_path / "moods", "--set", f"mood_strength={strength}")
    events, truth = read_events(out), Truth(out)
    assert truth.has_moods
    assert 0.01 <= events.liked.mean() <= 0.08 and 0.001 <= events.disliked.mean() <= 0.02
    genre = truth.moods(events.user_id, events.timestamp)
    assert (genre >= 0).all()  # every event lies in its session
    grade = impression_grades(events)
    rows = np.flatnonzero(grade >= 0)
    session = np.searchsorted(
        truth.arrays["session_user"] * 10**10 + truth.arrays["session_start"],
        events.user_id[rows] * 10**10 + events.timestamp[rows],
        side="right",
    )
    hi, lo, weight = group_pairs(session, grade[rows], pair_weight_table())
    args = events.user_id[rows], events.item_id[rows], events.timestamp[rows]
    with_mood = pair_accuracy(truth.affinity(*args), hi, lo, weight)
    day_taste = pair_accuracy(truth.affinity(*args, mood=False), hi, lo, weight)
    assert with_mood >= day_taste + 0.02, (with_mood, day_taste)
    item_genre = truth.arrays["item_genre"][truth.item_rows(events.item_id)]
    assert (item_genre == genre).mean() > 2.0 / SimConfig().n_genres  # moods show in the plays
    # Off by default: a world without moods has none, and its truth ignores the flag.
    plain = Truth(simulate(tmp_path / "plain"))
    assert not plain.has_moods and (plain.moods(events.user_id[:5], events.timestamp[:5]) < 0).all()
