"""The item index: hnswlib answering inner-product queries, with ``ef_search`` tuned at build time.

``tune_ef`` measures recall@k of the index against exact search on a sample of real queries (the
user vectors of the same export) and picks the smallest ``ef`` that reaches the target: larger
values cost latency for recall nobody asked for, smaller ones miss it.

``choose_search`` then times one query of the tuned index against one exact pass over the
catalog, at the usual number of candidates and at larger ones, and keeps the graph only where it
is clearly faster: on a small catalog, on one whose graph needs a large ``ef`` to reach the
target, or for a deep fetch, the exact pass is both faster and exact.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import hnswlib
import numpy as np
from threadpoolctl import threadpool_limits

from index.pages import anonymous_regions, back_with_huge_pages, mapped_since

SPACES = ("mips", "ip")
SEARCHES = ("auto", "hnsw", "exact")  # how a bundle's service finds candidates; see choose_search
# The exact pass is kept unless the graph is faster by more than this factor: its answers are
# the best ones, and a near tie would otherwise flip from one build to the next.
EXACT_PREFERENCE = 1.25


class ItemIndex:
    """hnswlib over item vectors, answering maximum-inner-product queries.

    ``space="mips"`` (the default) indexes ``[v, sqrt(R^2 - |v|^2)]`` in hnswlib's L2 space and
    queries with ``[q, 0]``, where ``R`` is the largest item norm: then
    ``|q' - v'|^2 = |q|^2 + R^2 - 2 <q, v>``, so the L2 neighbours are exactly the largest inner
    products (Bachrach et al., RecSys 2014). hnswlib's raw ``"ip"`` space builds a graph in which
    many items cannot be reached when norms vary (on the demo's towers, recall@100 stays at 0.78
    even with ``ef`` = every item); it is kept for comparison.
    """

    def __init__(self, index: hnswlib.Index, space: str, max_norm: float) -> None:
        self.index, self.space, self.max_norm = index, space, float(max_norm)
        self.huge_page_bytes = 0  # of the graph, in 2 MiB pages (index.pages)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        space: str = "mips",
        m: int = 16,
        ef_construction: int = 200,
        threads: int = 0,
        seed: int = 0,
    ) -> ItemIndex:
        """An index over the rows of ``vectors`` (labels are row numbers), built on ``threads``
        cores (0: all)."""
        n, dim = vectors.shape
        if n == 0:
            raise ValueError("cannot index an empty catalog")
        max_norm = float(np.linalg.norm(vectors, axis=1).max())
        item_index = cls(_hnsw(space, dim), space, max_norm)
        item_index.index.init_index(
            max_elements=n, M=m, ef_construction=ef_construction, random_seed=seed
        )
        item_index.index.add_items(
            item_index._items(vectors), np.arange(n), num_threads=threads or os.cpu_count() or 1
        )
        return item_index

    @classmethod
    def load(
        cls, path: str, *, space: str, dim: int, max_norm: float, n: int, huge_pages: bool = True
    ) -> ItemIndex:
        """The index saved at ``path``; with ``huge_pages``, its graph's memory in 2 MiB pages
        where the kernel can (:mod:`index.pages`: the same answers, faster at a million items)."""
        index = _hnsw(space, dim)
        before = anonymous_regions() if huge_pages else set()
        index.load_index(path, max_elements=n)
        loaded = cls(index, space, max_norm)
        if huge_pages:
            loaded.huge_page_bytes = back_with_huge_pages(mapped_since(before))
        return loaded

    def save(self, path: str) -> None:
        self.index.save_index(path)

    @property
    def count(self) -> int:
        return int(self.index.get_current_count())

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(ef)

    def _items(self, vectors: np.ndarray) -> np.ndarray:
        if self.space != "mips":
            return vectors
        slack = self.max_norm**2 - np.einsum("ij,ij->i", vectors, vectors)
        return np.hstack([vectors, np.sqrt(np.maximum(slack, 0.0))[:, None]]).astype(np.float32)

    def knn(
        self, queries: np.ndarray, k: int, *, threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows [Q, k] int64, inner products [Q, k] float32)``, best first. Releases the GIL."""
        queries = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
        labels, distances = self.search(queries, k, threads=threads)
        if self.space == "mips":
            norms = np.einsum("ij,ij->i", queries, queries)[:, None]
            scores = 0.5 * (norms + self.max_norm**2 - distances)
        else:
            scores = 1.0 - distances
        return labels.astype(np.int64), scores.astype(np.float32)

    def search(
        self, queries: np.ndarray, k: int, *, threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """hnswlib's own ``(labels [Q, k] uint64, distances [Q, k])`` of float32 ``queries``:
        :meth:`knn` without turning distances into inner products (for a caller that scores
        the rows itself)."""
        if self.space == "mips":  # the transform's extra coordinate is 0 for a query
            padded = np.zeros((len(queries), queries.shape[1] + 1), np.float32)
            padded[:, :-1] = queries
            queries = padded
        labels, distances = self.index.knn_query(queries, k=k, num_threads=threads)
        return labels, distances


def _hnsw(space: str, dim: int) -> hnswlib.Index:
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; choose one of {', '.join(SPACES)}")
    return hnswlib.Index(space="l2", dim=dim + 1) if space == "mips" else hnswlib.Index("ip", dim)


def exact_top_k(
    queries: np.ndarray, vectors: np.ndarray, k: int, *, block: int = 256
) -> np.ndarray:
    """(Q, k) row numbers of the ``k`` largest inner products of each query, best first."""
    k = min(k, len(vectors))
    out = np.empty((len(queries), k), dtype=np.int64)
    for begin in range(0, len(queries), block):
        scores = queries[begin : begin + block] @ vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        out[begin : begin + block] = np.take_along_axis(top, order, 1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` that appears in the same row of ``found``."""
    pairs = zip(found, truth, strict=True)
    hits = [len(np.intersect1d(f, t, assume_unique=True)) for f, t in pairs]
    return float(np.sum(hits) / truth.size)


@dataclass(frozen=True)
class Tuning:
    ef_search: int
    recall: float  # recall@k at ef_search on the sample
    k: int
    target: float
    queries: int
    tried: dict[int, float]  # every ef measured -> its recall

    @property
    def reached(self) -> bool:
        return self.recall >= self.target


def tune_ef(
    index: ItemIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    k: int = 100,
    target: float = 0.95,
    threads: int = 0,
) -> Tuning:
    """The smallest ``ef`` whose recall@k against exact search on ``queries`` reaches ``target``.

    Doubles ``ef`` from ``k`` until the target is reached (or ``ef`` covers the whole catalog),
    then bisects between the last miss and the first hit. Recall grows with ``ef`` in practice;
    the result is always an ``ef`` that was measured to reach the target, when any did.
    """
    n = index.count
    k = min(k, n)
    truth = exact_top_k(queries, vectors, k)
    threads = threads or os.cpu_count() or 1
    tried: dict[int, float] = {}

    def measure(ef: int) -> float:
        if ef not in tried:
            index.set_ef(ef)
            labels, _ = index.knn(queries, k, threads=threads)
            tried[ef] = recall(labels, truth)
        return tried[ef]

    low, high = 0, k  # low: largest ef known to miss (0: none); high: candidate
    while measure(high) < target and high < n:
        low, high = high, min(2 * high, n)
    if measure(high) >= target:
        while high - low > 1:
            mid = (low + high) // 2
            if mid >= k and measure(mid) >= target:
                high = mid
            else:
                low = mid
    index.set_ef(high)
    return Tuning(high, tried[high], k, target, len(queries), dict(sorted(tried.items())))


@dataclass(frozen=True)
class SearchTiming:
    """Milliseconds of one query fetching ``fetch`` items, one thread, the two ways a service
    can search."""

    fetch: int
    hnsw_ms: float  # the index at its ``ef`` (hnswlib searches at least ``fetch`` deep)
    exact_ms: float  # :func:`exact_top_k` over every item


def time_search(
    index: ItemIndex, vectors: np.ndarray, queries: np.ndarray, fetch: int, *, rounds: int = 5
) -> SearchTiming:
    """Each search's mean time per query in its fastest of ``rounds`` rounds, the two
    interleaved round by round, one query at a time as a service asks. The fastest round is the
    machine's own speed, where other work on a busy build machine would slow either search by
    up to 8x. The exact pass runs on one BLAS thread, as the service runs it."""
    chunks = [c for c in np.array_split(np.asarray(queries, np.float32), rounds) if len(c)]
    hnsw, exact = [], []
    for chunk in chunks:
        began = time.perf_counter()
        for query in chunk:
            index.search(query[None, :], fetch)
        hnsw.append((time.perf_counter() - began) / len(chunk))
        with threadpool_limits(1, user_api="blas"):
            began = time.perf_counter()
            for query in chunk:
                exact_top_k(query[None, :], vectors, fetch)
            exact.append((time.perf_counter() - began) / len(chunk))
    return SearchTiming(fetch, 1e3 * min(hnsw), 1e3 * min(exact))


@dataclass(frozen=True)
class SearchChoice:
    """How a service finds a query's nearest items: a search that fetches ``exact_from`` items
    or more scores every item exactly, a smaller one searches the graph."""

    exact_from: int
    timings: tuple[SearchTiming, ...] = ()  # what the choice was measured on (none: by hand)


def choose_search(
    index: ItemIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    k: int = 100,
    search: str = "auto",
) -> SearchChoice:
    """Where the graph stops paying. ``"hnsw"``: the graph up to half the catalog, beyond which an
    exact pass is as cheap and never comes up short; ``"exact"``: every search exact; ``"auto"``:
    times both at ``k`` items, then twice as many, and so on (the graph's time grows with the
    fetch, the exact pass's hardly), and switches to exact at the first fetch where the graph is
    not faster by more than :data:`EXACT_PREFERENCE`: from 0 when that is ``k`` already (a
    smaller fetch costs the graph as much, its ``ef`` being at least ``k``'s)."""
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}; choose one of {', '.join(SEARCHES)}")
    half = index.count // 2 + 1
    if search != "auto":
        return SearchChoice(half if search == "hnsw" else 0)
    timings: list[SearchTiming] = []
    fetch = first = min(k, index.count)
    while fetch < half:
        timings.append(time_search(index, vectors, queries, fetch))
        if timings[-1].exact_ms <= EXACT_PREFERENCE * timings[-1].hnsw_ms:
            return SearchChoice(0 if fetch == first else fetch, tuple(timings))
        fetch *= 2
    return SearchChoice(half, tuple(timings))
