"""Candidate retrieval: the best items of the served bundle for a user vector (plain numpy and
hnswlib, testable without HTTP). The search runs in the retrieval space; every candidate also gets
its ranking score, the ``/score`` dot product, so a ranker has both features from one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from index.bundle import dots
from index.hnsw import exact_top_k
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


def top_k(served: Served, vector: np.ndarray | None, k: int, excluded: np.ndarray) -> Found:
    """The ``k`` best items for the user ``vector`` ([ranking | retrieval], or None: the popular
    ones) that are not in ``excluded`` (catalog item ids); fetches more and retries until it has
    ``k`` or the whole catalog was searched."""
    bundle = served.bundle
    n = len(bundle.item_ids)
    if vector is None:
        popular = bundle.popular
        if len(excluded):
            popular = popular[~np.isin(popular, excluded)]
        return Found(popular[:k], None, None)
    assert bundle.index is not None
    query, items = bundle.retrieval_part(vector), bundle.retrieval_item_vectors
    fetch = min(n, k + len(excluded))
    while True:
        if 2 * fetch > n:  # most of the catalog: exact search is as cheap and never comes up short
            rows = exact_top_k(query[None, :], items, min(n, k + len(excluded)))[0]
        else:
            rows = bundle.index.search(query[None, :], fetch)[0][0].astype(np.int64)
        ids = bundle.item_ids[rows]
        if len(excluded):
            keep = ~np.isin(ids, excluded)
            rows, ids = rows[keep], ids[keep]
        if len(rows) >= k or 2 * fetch > n:
            # Exact inner products (the MIPS transform's are off in the 7th digit); order by them.
            scores = dots(items[rows], query)
            order = np.argsort(-scores, kind="stable")[:k]
            rows = rows[order]
            ranking = dots(bundle.item_vectors[rows], bundle.ranking_part(vector))
            return Found(ids[order], scores[order], ranking)
        fetch = min(n, 2 * fetch)
