"""Candidate retrieval: the best items of the served bundle for a user vector (plain numpy and
hnswlib, testable without HTTP). The search runs in the retrieval space; every candidate also gets
its ranking score, the ``/score`` dot product, so a ranker has both features from one call."""

from __future__ import annotations

from typing import Any

import numpy as np

from index.bundle import dots
from index.hnsw import exact_top_k
from service.state import Served


def top_k(
    served: Served, vector: np.ndarray | None, k: int, excluded: np.ndarray
) -> list[dict[str, Any]]:
    """The ``k`` best items for the user ``vector`` ([ranking | retrieval], or None: the popular
    ones) that are not in ``excluded`` (catalog item ids); fetches more and retries until it has
    ``k`` or the whole catalog was searched."""
    bundle = served.bundle
    n = len(bundle.item_ids)
    if vector is None:
        popular = bundle.popular
        chosen = popular[~np.isin(popular, excluded)][:k]
        return [{"item_id": int(i), "score": None, "ranking_score": None} for i in chosen]
    assert bundle.index is not None
    query, items = bundle.retrieval_part(vector), bundle.retrieval_item_vectors
    fetch = min(n, k + len(excluded))
    while True:
        if 2 * fetch > n:  # most of the catalog: exact search is as cheap and never comes up short
            rows = exact_top_k(query[None, :], items, min(n, k + len(excluded)))[0]
        else:
            rows = bundle.index.knn(query[None, :], fetch)[0][0]
        # Exact inner products (the MIPS transform's are off in the 7th digit); order by them.
        scores = dots(items[rows], query)
        order = np.argsort(-scores, kind="stable")
        rows, scores = rows[order], scores[order]
        keep = ~np.isin(bundle.item_ids[rows], excluded)
        if keep.sum() >= k or 2 * fetch > n:
            rows, scores = rows[keep][:k], scores[keep][:k]
            ranking = dots(bundle.item_vectors[rows], bundle.ranking_part(vector))
            return [
                {"item_id": int(i), "score": float(s), "ranking_score": float(r)}
                for i, s, r in zip(bundle.item_ids[rows], scores, ranking, strict=True)
            ]
        fetch = min(n, 2 * fetch)
