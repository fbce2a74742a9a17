from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from index.hnsw import (
    EXACT_PREFERENCE,
    ItemIndex,
    choose_search,
    exact_top_k,
    recall,
    tune_ef,
)
from model.data.simulate import SimConfig, make_catalog, make_users


def latents(n_items: int, n_users: int, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Simulator item and user latents: clustered, with item norms that vary (as trained towers)."""
    cfg = SimConfig(n_items=n_items, latent_dim=dim, seed=1)
    rng = np.random.default_rng(1)
    catalog = make_catalog(cfg, rng)
    users = make_users(cfg, rng, n_users).latent(catalog.genre_centers, 0.5)
    return catalog.latent, users.astype(np.float32)


def test_exact_top_k_is_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    items, queries = rng.standard_normal((300, 8)), rng.standard_normal((17, 8))
    top = exact_top_k(queries, items, 10, block=5)
    expected = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(top, expected)
    assert exact_top_k(queries, items, 1000).shape == (17, 300)  # k is capped at the catalog


def test_recall_counts_shared_rows() -> None:
    assert recall(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == 2 / 6


@pytest.mark.parametrize("space", ["mips", "ip"])
def test_scores_are_inner_products_of_the_returned_items(space: str) -> None:
    items, users = latents(2_000, 50)
    index = ItemIndex.build(items, space=space, m=8, ef_construction=100)
    index.set_ef(200)
    rows, scores = index.knn(users, 10)
    assert rows.shape == scores.shape == (50, 10) and rows.dtype == np.int64
    expected = np.einsum("qd,qkd->qk", users, items[rows])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-3)
    assert np.all(np.diff(scores, axis=1) <= 1e-4)  # best first


def test_mips_transform_reaches_recall_raw_ip_cannot() -> None:
    """The reason for the default: with every item reachable at ef = n, the transformed index is
    exact, while hnswlib's raw inner-product graph leaves items unreachable on clustered data.
    Built on one thread: a parallel build inserts in a varying order, and one CI run's graph
    left a few items out (0.9978)."""
    items, users = latents(3_000, 200)
    truth = exact_top_k(users, items, 50)
    found = {}
    for space in ("mips", "ip"):
        index = ItemIndex.build(items, space=space, m=8, ef_construction=64, threads=1)
        index.set_ef(len(items))
        found[space] = recall(index.knn(users, 50)[0], truth)
    assert found["mips"] > 0.999
    assert found["ip"] < found["mips"]


def test_tune_ef_picks_the_smallest_ef_reaching_the_target() -> None:
    items, users = latents(4_000, 300)
    index = ItemIndex.build(items, m=4, ef_construction=16)
    tuning = tune_ef(index, items, users, k=50, target=0.97)
    assert tuning.reached and tuning.tried[tuning.ef_search] >= 0.97
    assert tuning.ef_search == 50 or tuning.tried[tuning.ef_search - 1] < 0.97
    assert len(tuning.tried) > 2  # it had to search: the easy case would test nothing
    # And the index is left at the tuned ef: searching again gives the measured recall.
    truth = exact_top_k(users, items, 50)
    assert recall(index.knn(users, 50, threads=2)[0], truth) == pytest.approx(tuning.recall)


def test_an_empty_catalog_or_unknown_space_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        ItemIndex.build(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="unknown space"):
        ItemIndex.build(np.ones((3, 4), np.float32), space="cosine")


def test_a_search_chosen_by_hand_is_kept() -> None:
    items, users = latents(1_000, 20)
    index = ItemIndex.build(items, m=8, ef_construction=32)
    hnsw = choose_search(index, items, users, k=10, search="hnsw")
    assert hnsw.exact_from == 501 and hnsw.timings == ()  # the graph up to half the catalog
    assert choose_search(index, items, users, k=10, search="exact").exact_from == 0
    with pytest.raises(ValueError, match="unknown search 'graph'"):
        choose_search(index, items, users, search="graph")


def test_a_graph_searched_as_deep_as_the_catalog_loses_to_the_exact_pass() -> None:
    """At ``ef`` = every item the graph visits them all, one scattered row at a time: an exact
    pass over the same rows is many times faster (about 7x here), so it is chosen from the
    first fetch on."""
    items, users = latents(2_000, 100)
    index = ItemIndex.build(items, m=8, ef_construction=32)
    index.set_ef(len(items))
    choice = choose_search(index, items, users, k=20)
    assert choice.exact_from == 0
    (timing,) = choice.timings  # decided at the first fetch
    assert timing.fetch == 20 and timing.exact_ms <= EXACT_PREFERENCE * timing.hnsw_ms


def test_a_shallow_graph_search_of_a_large_catalog_is_kept_until_deep_fetches() -> None:
    """A small ``ef`` over 30,000 items beats scoring them all (about 13x here), while a fetch of
    half the catalog would make the graph visit most of it: the switch falls in between."""
    items, users = latents(30_000, 100, dim=32)
    index = ItemIndex.build(items, m=8, ef_construction=32)
    index.set_ef(20)
    choice = choose_search(index, items, users, k=20)
    fetches = [t.fetch for t in choice.timings]
    assert fetches[:2] == [20, 40] and all(b == 2 * a for a, b in pairwise(fetches))
    first, last = choice.timings[0], choice.timings[-1]
    assert first.exact_ms > EXACT_PREFERENCE * first.hnsw_ms  # the graph, at the usual k
    assert 20 < choice.exact_from <= 15_001
    if choice.exact_from < 15_001:  # switched at the last fetch timed: there exact kept up
        assert choice.exact_from == last.fetch
        assert last.exact_ms <= EXACT_PREFERENCE * last.hnsw_ms
