"""Service settings: environment variables with the ``ARGUS_`` prefix (or ``argus serve`` flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Mode = Literal["auto", "offline", "realtime"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARGUS_", extra="ignore")

    # Where bundles live and which one is live.
    bundles: Path = Path("bundles")  # ROOT/<version>/ directories from `argus build`
    redis_url: str | None = None  # None: the embedded local store, latest bundle under ROOT
    redis_timeout_s: Annotated[float, Field(gt=0)] = (
        0.1  # per Redis call; a down Redis degrades quickly
    )
    reload_interval_s: Annotated[float, Field(gt=0)] = (
        5.0  # how often the version pointer is checked
    )

    # Requests.
    max_body_bytes: Annotated[int, Field(gt=0)] = 1 << 20
    max_k: Annotated[int, Field(gt=0)] = 1_000
    max_score_items: Annotated[int, Field(gt=0)] = 1_000
    max_history: Annotated[int, Field(gt=0)] = 2_048  # events in a request's history
    default_mode: Mode = "auto"
    realtime_first: bool = False  # "auto" mode re-encodes the live history before stored vectors
    events_token: str | None = None  # bearer token required by POST /events when set
    history_cap: Annotated[int, Field(gt=0)] = 2_048  # events kept per user's live history
    history_ttl_s: Annotated[int, Field(gt=0)] = 30 * 86_400
    # The HNSW search (about 1 ms on 1M items) runs inline, which is fastest with one worker
    # process per core (`argus serve --workers N`); true runs it in a worker thread instead, so
    # one process can search on several cores at once (hnswlib releases the GIL).
    ann_offload: bool = False

    # The runtime encoder.
    encoder_device: Literal["auto", "cpu", "cuda"] = "auto"
    encoder_max_batch: Annotated[int, Field(gt=0)] = 32
    encoder_max_delay_ms: Annotated[float, Field(ge=0)] = 2.0
    encoder_threads: Annotated[int, Field(ge=0)] = (
        0  # ONNX Runtime intra-op threads, 0: its default
    )
