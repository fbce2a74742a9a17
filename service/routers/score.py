"""``POST /score``: the ranking feature ``<u, v>`` of given items, optionally with the vectors."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from index.bundle import dots, rows_of
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
    rows, known = rows_of(bundle.bundle.item_ids, ids)
    vectors = bundle.bundle.item_vectors[rows]
    scores: list[float | None] = [None] * len(ids)
    ranking = None if user.vector is None else bundle.bundle.ranking_part(user.vector)
    if ranking is not None:
        values = dots(vectors, ranking)
        scores = [
            float(v) if k else None for v, k in zip(values.tolist(), known.tolist(), strict=True)
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
        out["item_vectors"] = base64_f32(np.where(known[:, None], vectors, 0))
    elif body.return_vectors:
        out["user_vector"] = ranking
        out["item_vectors"] = (
            vectors
            if known.all()
            else [v if k else None for v, k in zip(vectors, known, strict=True)]
        )
    serialize = time.perf_counter()
    out["took_ms"] = 1e3 * (serialize - began)
    response = json_response(out)
    metrics.stage("serialize").observe(time.perf_counter() - serialize)
    return response
