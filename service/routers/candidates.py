"""``POST /candidates``: the ``k`` best items for a user, from the HNSW index of the bundle."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from service.deps import MetricsDep, ResolverDep, ServedBundle, SettingsDep
from service.replies import check_length, json_response, problem
from service.retrieve import top_k
from service.schemas import CandidatesRequest, CandidatesResponse

router = APIRouter()


@router.post("/candidates", response_model=CandidatesResponse)
async def candidates(
    body: CandidatesRequest,
    bundle: ServedBundle,
    settings: SettingsDep,
    resolver: ResolverDep,
    metrics: MetricsDep,
) -> Response:
    began = time.perf_counter()
    limits = settings.limits
    if body.k > limits.max_k:
        raise problem(422, "k", f"k = {body.k} is over the limit of {limits.max_k}")
    check_length(body.history, limits.max_history, "history", "events")
    user = await resolver.user_of(bundle, body, "/candidates")
    excluded = set(body.exclude_item_ids)
    if body.exclude_seen:
        excluded.update(user.history["item_id"].tolist())
    items = await resolver.stage(
        "ann",
        lambda: top_k(bundle, user.vector, body.k, excluded),
        offload=settings.requests.ann_offload,
    )
    serialize = time.perf_counter()
    response = json_response(
        {
            "user_id": body.user_id,
            "model_version": bundle.version,
            "source": user.source,
            "degraded": user.degraded,
            "items": items,
            "took_ms": 1e3 * (time.perf_counter() - began),
        }
    )
    metrics.stage_seconds.labels("serialize").observe(time.perf_counter() - serialize)
    return response
