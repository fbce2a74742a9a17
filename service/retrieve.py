"""Candidate retrieval: the best items of the served bundle for a user vector (plain numpy and
hnswlib, testable without HTTP). The search runs in the retrieval space; every candidate also gets
its ranking score, the ``/score`` dot product, so a ranker has both features from one call.

:class:`Searches` runs the searches that requests start in two turns of the event loop as one
hnswlib call: the index stays in the CPU's caches from one query to the next, where a search
between two requests' Python work finds it evicted (in a busy server a lone search took 2.5x
its time in a tight loop). Each query's answer is the one it gets alone."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.bundle import Bundle, dots, members, take_rows
from index.hnsw import ItemIndex, exact_top_k
from service.metrics import Metrics
from service.state import Served


@dataclass(frozen=True)
class Found:
    """The answer of :func:`top_k`: item ids best first, with their retrieval and ranking scores
    (None for the popular list, which has neither)."""

    item_ids: np.ndarray  # (n,) int64
    scores: np.ndarray | None  # (n,) float32 retrieval scores
    ranking: np.ndarray | None  # (n,) float32 ranking scores, /score's for the same items

    def items(self) -> list[dict[str, Any]]:
        """The reply's ``items``: one plain dict per item (``tolist`` converts each array once,
        in C, instead of one numpy scalar at a time)."""
        ids = self.item_ids.tolist()
        if self.scores is None or self.ranking is None:
            return [{"item_id": i, "score": None, "ranking_score": None} for i in ids]
        return [
            {"item_id": i, "score": s, "ranking_score": r}
            for i, s, r in zip(ids, self.scores.tolist(), self.ranking.tolist(), strict=True)
        ]


def first_fetch(n: int, k: int, excluded: np.ndarray) -> int:
    """How many items the first search fetches: ``k``, and room for as many excluded ones (at
    most their number). Most excluded items are nowhere near a query: a user's 50 played items
    can leave out 1,400 of their artists', and fetching all that room made one search 13x
    slower (``ef`` grows with the fetch)."""
    return min(n, k + min(len(excluded), k))


def next_fetch(n: int, k: int, excluded: np.ndarray, fetch: int, kept: int) -> int:
    """After a search of ``fetch`` items kept ``kept`` < ``k``: enough for ``k`` at the rate
    kept so far, with a margin, and at least twice the last; never past ``k`` plus every
    excluded item, which always leaves ``k``."""
    wanted = max(2 * fetch, -(-5 * k * fetch // (4 * max(kept, 1))))
    return min(n, wanted, k + len(excluded))


def searched(bundle: Bundle, fetch: int) -> bool:
    """Whether ``fetch`` items are looked for in the index, else by an exact pass, which the
    bundle's build found faster from :attr:`Bundle.exact_from` items on (and at most half the
    catalog: beyond it an exact pass is as cheap and never comes up short)."""
    return fetch < bundle.exact_from


def top_k(
    served: Served,
    vector: np.ndarray | None,
    k: int,
    excluded: np.ndarray,
    first: np.ndarray | None = None,
) -> Found:
    """The ``k`` best items for the user ``vector`` ([ranking | retrieval], or None: the popular
    ones) that are not in ``excluded`` (catalog item ids, sorted and unique); fetches more and
    retries until it has ``k`` or the whole catalog was searched. ``first``: the rows of the
    first search, when :class:`Searches` ran it."""
    bundle = served.bundle
    n = len(bundle.item_ids)
    if vector is None:
        popular = bundle.popular
        if len(excluded):
            popular = popular[~members(popular, excluded)]
        return Found(popular[:k], None, None)
    assert bundle.index is not None
    query, items = bundle.retrieval_part(vector), bundle.retrieval_item_vectors
    fetch = first_fetch(n, k, excluded)
    while True:
        if not searched(bundle, fetch):
            rows = exact_top_k(query[None, :], items, min(n, k + len(excluded)))[0]
        elif first is not None:
            rows, first = first, None
        else:
            rows = bundle.index.search(query[None, :], fetch)[0][0].astype(np.int64)
        ids = take_rows(bundle.item_ids, rows)
        if len(excluded):
            keep = ~members(ids, excluded)
            rows, ids = rows[keep], ids[keep]
        if len(rows) >= k or not searched(bundle, fetch):
            # Exact inner products (the MIPS transform's are off in the 7th digit); order by them.
            scores = dots(take_rows(items, rows), query)
            order = np.argsort(-scores, kind="stable")[:k]
            rows = rows[order]
            ranking = dots(take_rows(bundle.item_vectors, rows), bundle.ranking_part(vector))
            return Found(ids[order], scores[order], ranking)
        fetch = next_fetch(n, k, excluded, fetch, len(rows))


class Searches:
    """The first searches that requests start in a turn of the event loop and the turn after
    it, run as one hnswlib call per index and size (a query's result depends on its ``k``, which
    sets hnswlib's ``ef`` floor, so only equal sizes share a call: each answer is the one it gets
    alone). The call runs at the end of the second turn, so the requests whose bytes arrived
    meanwhile join it (under 32 connections that took calls from 9 to 19 queries and the
    throughput up 1.13-1.16x, against the end of the first turn); a lone request waits two
    empty turns, microseconds. Used from the event loop's thread only."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.pending: dict[tuple[ItemIndex, int], list[tuple[np.ndarray, asyncio.Future[Any]]]]
        self.pending = {}

    async def top_k(
        self, served: Served, vector: np.ndarray | None, k: int, excluded: np.ndarray
    ) -> Found:
        """:func:`top_k`, its first search run with the others of these turns."""
        bundle = served.bundle
        fetch = first_fetch(len(bundle.item_ids), k, excluded)
        first = None
        if vector is not None and bundle.index is not None and searched(bundle, fetch):
            first = await self.search(bundle.index, bundle.retrieval_part(vector), fetch)
        return top_k(served, vector, k, excluded, first)

    def search(self, index: ItemIndex, query: np.ndarray, fetch: int) -> asyncio.Future[Any]:
        """The rows (int64) of the ``fetch`` items nearest ``query``, when the call ran."""
        loop = asyncio.get_running_loop()
        if not self.pending:  # the end of the next turn: call_soon runs callbacks a turn later
            loop.call_soon(loop.call_soon, self.run)
        future = loop.create_future()
        self.pending.setdefault((index, fetch), []).append((query, future))
        return future

    def run(self) -> None:
        pending, self.pending = self.pending, {}
        for (index, fetch), waiting in pending.items():
            self.metrics.ann_batch.observe(len(waiting))
            began = time.perf_counter()
            try:
                labels, _ = index.search(np.stack([query for query, _ in waiting]), fetch)
            except Exception as error:  # each request answers it as a search of its own would
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            finally:
                self.metrics.stage("search").observe(time.perf_counter() - began)
            rows = labels.astype(np.int64)
            for (_, future), row in zip(waiting, rows, strict=True):
                if not future.done():  # a request cancelled meanwhile has no one to tell
                    future.set_result(row)
