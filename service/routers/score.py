"""``POST /score``: the ranking feature ``<u, v>`` of given items, optionally with the vectors.

An item the catalog lacks is scored with the bundle's cold item vector (what fine-tuning scored
an item with no event yet with) and listed in ``unknown_item_ids``; a user with no vector is
scored with the item prior alone (``source`` "popular"). Without either in the bundle, those
scores are null."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from index.bundle import dots
from service.deps import hot, hot_route, parsed
from service.replies import base64_f32, check_length, json_response
from service.schemas import ScoreRequest, ScoreResponse

router = APIRouter()


@router.post("/score", **hot_route(ScoreResponse, ScoreRequest))
@hot
async def score(request: Request) -> Response:
    began = time.perf_counter()
    ctx, body = await parsed(request, ScoreRequest)
    bundle, resolver, metrics = ctx.served, ctx.resolver, ctx.metrics
    limits = ctx.settings.limits
    check_length(body.item_ids, limits.max_score_items, "item_ids", "items")
    check_length(body.history, limits.max_history, "history", "events")
    user = await resolver.user_of(bundle, body, "/score")
    ids = np.asarray(body.item_ids, dtype=np.int64)
    served = bundle.bundle
    vectors, known = served.ranking_items(ids)
    scored = known if served.cold_item_vector is None else np.ones_like(known)
    ranking = served.prior_query if user.vector is None else served.ranking_part(user.vector)
    scores: list[float | None] = [None] * len(ids)
    if ranking is not None:
        values = dots(vectors, ranking)
        scores = [
            float(v) if k else None for v, k in zip(values.tolist(), scored.tolist(), strict=True)
        ]
    out: dict[str, Any] = {
        "user_id": body.user_id,
        "model_version": bundle.version,
        "source": user.source,
        "degraded": user.degraded,
        "scores": scores,
        "unknown_item_ids": ids[~known].tolist(),
    }
    if body.return_vectors and body.vectors_format == "base64":
        out["user_vector"] = None if ranking is None else base64_f32(ranking)
        out["item_vectors"] = base64_f32(vectors)
    elif body.return_vectors:
        out["user_vector"] = ranking
        out["item_vectors"] = (
            vectors
            if scored.all()
            else [v if k else None for v, k in zip(vectors, scored, strict=True)]
        )
    serialize = time.perf_counter()
    out["took_ms"] = 1e3 * (serialize - began)
    response = json_response(out)
    metrics.stage("serialize").observe(time.perf_counter() - serialize)
    return response
