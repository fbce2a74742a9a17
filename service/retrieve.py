"""Candidate retrieval: the best items of the served bundle for a user vector (plain numpy and
hnswlib, testable without HTTP)."""

from __future__ import annotations

from typing import Any

import numpy as np

from index.hnsw import exact_top_k
from service.state import Served


def top_k(
    served: Served, vector: np.ndarray | None, k: int, excluded: set[int]
) -> list[dict[str, Any]]:
    """The ``k`` best items for ``vector`` (or the popular ones) not in ``excluded``; fetches more
    and retries until it has ``k`` or the whole catalog was searched."""
    bundle = served.bundle
    n = len(bundle.item_ids)
    banned = np.fromiter(excluded, np.int64, len(excluded))
    if vector is None:
        popular = bundle.popular
        return [{"item_id": int(i), "score": None} for i in popular[~np.isin(popular, banned)][:k]]
    assert bundle.index is not None
    fetch = min(n, k + len(excluded))
    while True:
        if 2 * fetch > n:  # most of the catalog: exact search is as cheap and never comes up short
            rows = exact_top_k(vector[None, :], bundle.item_vectors, k + len(excluded))[0]
            ids, scores = bundle.item_ids[rows], bundle.item_vectors[rows] @ vector
        else:
            found, _ = bundle.index.knn(vector[None, :], fetch)
            # Exact inner products (the MIPS transform's are off in the 7th digit), so a score
            # here equals /score's for the same item, and the order follows it.
            rows = found[0]
            scores = bundle.item_vectors[rows] @ vector
            order = np.argsort(-scores, kind="stable")
            ids, scores = bundle.item_ids[rows[order]], scores[order]
        keep = ~np.isin(ids, banned)
        if keep.sum() >= k or 2 * fetch > n:
            return [
                {"item_id": int(i), "score": float(s)}
                for i, s in zip(ids[keep][:k], scores[keep][:k], strict=True)
            ]
        fetch = min(n, 2 * fetch)
