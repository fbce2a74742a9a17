import asyncio
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.metrics import Metrics
from service.retrieve import Found, Searches, first_fetch, next_fetch, top_k
from service.state import Served


def same(a: Found, b: Found) -> bool:
    arrays = [(a.item_ids, b.item_ids), (a.scores, b.scores), (a.ranking, b.ranking)]
    return all(np.array_equal(x, y) for x, y in arrays)  # type: ignore[arg-type]


def test_searches_of_one_turn_share_calls_and_answer_as_alone(local: TestClient) -> None:
    served: Served = local.app.state.backend.served  # type: ignore[attr-defined]
    bundle = served.bundle
    n = len(bundle.item_ids)
    rng = np.random.default_rng(0)
    asks = []
    for row in range(24):  # three sizes of search, some with exclusions, and no vector
        k = (3, 5, 5, 8)[row % 4]
        excluded = np.sort(rng.choice(bundle.item_ids, row % 3, replace=False))
        vector = None if row == 7 else bundle.user_vectors[row % len(bundle.user_vectors)]
        asks.append((vector, k, excluded))
    assert n >= 2 * (8 + 2)  # every vector's first search is in the index

    metrics = Metrics()
    searches = Searches(metrics)

    async def together() -> list[Found]:
        return await asyncio.gather(*(searches.top_k(served, *ask) for ask in asks))

    found = asyncio.run(together())
    for answer, (vector, k, excluded) in zip(found, asks, strict=True):
        assert same(answer, top_k(served, vector, k, excluded))  # item for item, score for score
        assert len(answer.item_ids) == k and not np.isin(answer.item_ids, excluded).any()
    read = metrics.registry.get_sample_value
    assert read("argus_ann_batch_size_sum") == 23  # every query with a vector ...
    calls = read("argus_ann_batch_size_count")
    assert calls is not None and calls < 23  # ... in fewer calls: one per size and turn
    assert read("argus_stage_duration_seconds_count", {"stage": "search"}) == calls


def test_a_lone_search_is_one_call_of_one(local: TestClient) -> None:
    served: Served = local.app.state.backend.served  # type: ignore[attr-defined]
    metrics = Metrics()
    searches = Searches(metrics)
    vector, none = served.bundle.user_vectors[0], np.zeros(0, np.int64)
    answer = asyncio.run(searches.top_k(served, vector, 4, none))
    assert same(answer, top_k(served, vector, 4, none))
    assert metrics.registry.get_sample_value("argus_ann_batch_size_bucket", {"le": "1.0"}) == 1


def test_a_search_whose_room_the_excluded_items_take_fetches_more_until_it_has_k(
    local: TestClient,
) -> None:
    served: Served = local.app.state.backend.served  # type: ignore[attr-defined]
    bundle = served.bundle
    n, k = len(bundle.item_ids), 3
    vector = bundle.user_vectors[0]
    nearest = bundle.item_ids[np.argsort(-(bundle.retrieval_item_vectors @ vector[bundle.dim :]))]
    excluded = np.sort(nearest[: n // 4])  # the quarter nearest the query: the first search ...
    assert first_fetch(n, k, excluded) == 2 * k < n // 4  # ... finds nothing to keep
    found = top_k(served, vector, k, excluded)
    assert found.item_ids.tolist() == nearest[n // 4 : n // 4 + k].tolist()


@pytest.mark.parametrize("exact_from", [0, 6])
def test_a_fetch_from_the_bundles_exact_from_on_is_an_exact_pass(
    local: TestClient, exact_from: int
) -> None:
    """A bundle that searches exactly from ``exact_from`` items fetched (0: always) answers those
    searches from every item, without the graph: the nearest items by their exact inner
    products, less the excluded ones."""
    served: Served = local.app.state.backend.served  # type: ignore[attr-defined]
    exact = replace(served, bundle=replace(served.bundle, exact_from=exact_from))
    bundle, rng = exact.bundle, np.random.default_rng(1)
    metrics = Metrics()
    searches = Searches(metrics)
    graph = 0  # first searches the graph should answer
    for row, k in zip(range(12), [3, 8] * 6, strict=True):
        vector = bundle.user_vectors[row]
        excluded = np.sort(rng.choice(bundle.item_ids, row % 3, replace=False))
        found = asyncio.run(searches.top_k(exact, vector, k, excluded))
        nearest = bundle.item_ids[
            np.argsort(-(bundle.retrieval_item_vectors @ vector[bundle.dim :]))
        ]
        assert found.item_ids.tolist() == nearest[~np.isin(nearest, excluded)][:k].tolist()
        graph += first_fetch(len(bundle.item_ids), k, excluded) < exact_from
    assert graph == (0 if exact_from == 0 else 6)  # k = 3 fetches at most 6: the graph
    assert metrics.registry.get_sample_value("argus_ann_batch_size_sum") == graph


def test_each_fetch_at_least_doubles_and_never_passes_what_always_suffices() -> None:
    n, k, excluded = 10_000, 100, np.arange(700)
    assert first_fetch(n, k, excluded) == 200 and first_fetch(n, k, excluded[:30]) == 130
    assert first_fetch(150, k, excluded) == 150
    assert next_fetch(n, k, excluded, 200, 80) == 400  # nearly there: twice the last
    assert next_fetch(n, k, excluded, 200, 10) == k + len(excluded)  # the cap: always enough
    assert next_fetch(n, k, excluded, 200, 40) == 625  # 5/4 of k at the rate kept, 40 in 200
    assert next_fetch(n, k, excluded, 200, 0) == 800  # nothing kept: as far as it may need
    assert next_fetch(500, k, excluded, 200, 0) == 500  # the whole catalog
