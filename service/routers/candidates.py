"""``POST /candidates``: the ``k`` best items for a user, from the HNSW index of the bundle's
retrieval space, each with its retrieval score and its ranking score."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request, Response

from index.bundle import Bundle, sorted_unique
from service.deps import hot, hot_route, parsed
from service.replies import check_length, json_response, problem
from service.retrieve import top_k
from service.schemas import CandidatesRequest, CandidatesResponse

router = APIRouter()
NOTHING = np.zeros(0, dtype=np.int64)


def excluded_items(bundle: Bundle, body: CandidatesRequest, history: np.ndarray) -> np.ndarray:
    """Catalog item ids the answer must leave out: those asked, the live history's items
    (``exclude_seen`` or ``unfamiliar``), every item of its artists (``unfamiliar="artists"``).
    Ids outside the catalog are dropped, so they never size the search."""
    seen = body.exclude_seen or body.unfamiliar is not None
    if not body.exclude_item_ids and not (seen and len(history)):
        return NOTHING
    asked = np.asarray(body.exclude_item_ids, dtype=np.int64)
    parts = [asked]
    if body.exclude_seen or body.unfamiliar is not None:
        parts.append(history["item_id"].astype(np.int64))
    if body.unfamiliar == "artists":
        parts.append(bundle.artist_items(history["artist_id"]))
    ids = sorted_unique(np.concatenate(parts))
    return ids[bundle.item_rows(ids)[1]]


@router.post("/candidates", **hot_route(CandidatesResponse, CandidatesRequest))
@hot
async def candidates(request: Request) -> Response:
    began = time.perf_counter()
    ctx, body = await parsed(request, CandidatesRequest)
    limits = ctx.settings.limits
    if body.k > limits.max_k:
        raise problem(422, "k", f"k = {body.k} is over the limit of {limits.max_k}")
    check_length(body.history, limits.max_history, "history", "events")
    check_length(body.exclude_item_ids, limits.max_exclude, "exclude_item_ids", "ids")
    served = ctx.served
    user = await ctx.resolver.user_of(served, body, "/candidates")
    excluded = excluded_items(served.bundle, body, user.history)
    if ctx.settings.requests.ann_offload:  # each search in a worker thread: several cores
        found = await ctx.resolver.stage(
            "ann", lambda: top_k(served, user.vector, body.k, excluded), offload=True
        )
    else:  # with the other searches of this turn of the loop
        found = await ctx.resolver.timed_await(
            "ann", ctx.searches.top_k(served, user.vector, body.k, excluded)
        )
    serialize = time.perf_counter()
    response = json_response(
        {
            "user_id": body.user_id,
            "model_version": served.version,
            "source": user.source,
            "degraded": user.degraded,
            "items": found.items(),
            "took_ms": 1e3 * (serialize - began),
        }
    )
    ctx.metrics.stage("serialize").observe(time.perf_counter() - serialize)
    return response
