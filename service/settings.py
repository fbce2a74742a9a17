"""Service settings, one pydantic-settings class per concern, composed by
:class:`Settings`. Each reads environment variables with the ``ARGUS_`` prefix (``argus serve``
flags set some of them); the variable names are flat, so a group is an internal detail:
``ARGUS_REDIS_URL`` is ``settings.store.redis_url``, ``ARGUS_ENCODER_MAX_BATCH`` is
``settings.encoder.max_batch``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from index.store import (
    HISTORY_CAP,
    HISTORY_MAX_USERS,
    HISTORY_TTL_S,
    RedisAuth,
    secrets_dir,
)

Mode = Literal["auto", "offline", "realtime"]


class StoreSettings(BaseSettings):
    """Where bundles, user vectors and live histories live."""

    model_config = SettingsConfigDict(env_prefix="ARGUS_", extra="ignore")

    bundles: Path = Path("bundles")  # ROOT/<version>/ directories from `argus build`
    redis_url: str | None = None  # None: the embedded local store, latest bundle under ROOT
    redis_cluster: bool = False  # the URL names a node of a Redis Cluster
    redis_timeout_s: Annotated[float, Field(gt=0)] = 0.1  # per call; a down Redis degrades fast
    redis_workers: Annotated[int, Field(gt=0)] = 16  # threads (and connections) calling Redis
    redis_failures_to_open: Annotated[int, Field(gt=0)] = 3  # failed calls in a row: stop trying
    redis_health_interval_s: Annotated[float, Field(gt=0)] = 1.0  # PING; success resumes calls
    reload_interval_s: Annotated[float, Field(gt=0)] = 5.0  # how often the pointer is checked
    history_cap: Annotated[int, Field(gt=0)] = HISTORY_CAP  # events kept per user's live history
    history_ttl_s: Annotated[int, Field(gt=0)] = HISTORY_TTL_S
    # Without Redis the live histories live in this process: the least recently written user
    # beyond this many is forgotten, so forged or one-off ids cannot grow memory without bound.
    history_max_users: Annotated[int, Field(gt=0)] = HISTORY_MAX_USERS


class LimitSettings(BaseSettings):
    """What one request may ask for."""

    model_config = SettingsConfigDict(env_prefix="ARGUS_", extra="ignore")

    max_body_bytes: Annotated[int, Field(gt=0)] = 1 << 20
    max_k: Annotated[int, Field(gt=0)] = 1_000
    max_score_items: Annotated[int, Field(gt=0)] = 1_000
    max_history: Annotated[int, Field(gt=0)] = 2_048  # events in a request's history
    max_exclude: Annotated[int, Field(gt=0)] = 10_000  # exclude_item_ids per /candidates


class ServerSettings(BaseSettings):
    """The HTTP server's own limits: what a slow or idle client may hold."""

    model_config = SettingsConfigDict(env_prefix="ARGUS_", extra="ignore")

    # A request's headers must arrive within this long of its first byte (or of the connection),
    # its body within ``body_timeout_s`` of its headers: a slower client gets a 408 and is closed.
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    keep_alive_s: Annotated[int, Field(gt=0)] = 5  # seconds an idle connection is kept
    # Connections and requests in flight per worker process; beyond it uvicorn answers 503.
    max_connections: Annotated[int, Field(gt=0)] = 2_048
    # /docs, the interactive API docs (/openapi.json is always served); false or off: none
    docs: bool = True
    # Swagger UI's files for /docs (`argus docs-assets` fetches them); unset: the cache's copy,
    # else a CDN (service.docs)
    docs_assets: Path | None = None
    # FastAPI's native OpenTelemetry (a span and metrics per request, to the providers the
    # process configures); off, each request skips even the check for providers (3 µs)
    opentelemetry: bool = False


class RequestSettings(BaseSettings):
    """How requests are answered: the user-vector source, writes, the search. The events token
    may also come from a mounted secret file ``argus_events_token`` (index.store.secrets_dir)."""

    model_config = SettingsConfigDict(
        env_prefix="ARGUS_", extra="ignore", secrets_dir=secrets_dir()
    )

    default_mode: Mode = "auto"
    realtime_first: bool = False  # "auto" mode re-encodes the live history before stored vectors
    # POST /events is refused (403) unless a bearer token is set or writes are explicitly open:
    # a forged event hides items from its victim (exclude_seen) and steers their realtime vector.
    events_token: str | None = None
    events_open: bool = False  # accept unauthenticated writes (a demo, a trusted network)
    # The HNSW search (about 1 ms on 1M items) runs inline, which is fastest with one worker
    # process per core (`argus serve --workers N`); true runs it in a worker thread instead, so
    # one process can search on several cores at once (hnswlib releases the GIL).
    ann_offload: bool = False

    @field_validator("events_token")
    @classmethod
    def a_usable_token(cls, token: str | None) -> str | None:
        """An empty token would be a typo that opens writes to anyone sending ``Bearer ``; a
        token a client cannot send in a header is a typo too: both refuse to start."""
        if token is None:
            return None
        if not token.strip():
            raise ValueError(
                "ARGUS_EVENTS_TOKEN is empty: unset it (writes refused) or set a real token"
            )
        if not (token.isascii() and token.isprintable()) or token != token.strip():
            raise ValueError(
                "ARGUS_EVENTS_TOKEN must be printable ASCII without surrounding spaces "
                "(it travels in an HTTP header)"
            )
        return token


class EncoderSettings(BaseSettings):
    """The runtime encoder and its dynamic batcher."""

    model_config = SettingsConfigDict(env_prefix="ARGUS_ENCODER_", extra="ignore")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch: Annotated[int, Field(gt=0)] = 32
    max_delay_ms: Annotated[float, Field(ge=0)] = 2.0
    # ONNX Runtime intra-op threads; 0: the CPUs this process may use (affinity, cgroup quota)
    # or ARGUS_THREADS
    threads: Annotated[int, Field(ge=0)] = 0
    timeout_ms: Annotated[float, Field(gt=0)] = 1_000.0  # then the next vector source answers
    max_queue: Annotated[int, Field(gt=0)] = 1_024  # histories waiting; beyond: the next source
    # Per-user key/value states of the runtime encoder (least recently used out); 0: none, every
    # realtime request re-encodes its whole window.
    cache_mb: Annotated[int, Field(ge=0)] = 512


GROUPS: dict[str, type[BaseSettings]] = {
    "store": StoreSettings,
    "limits": LimitSettings,
    "server": ServerSettings,
    "requests": RequestSettings,
    "encoder": EncoderSettings,
    "redis_auth": RedisAuth,  # read where a client is made (index.store.redis_client)
}


class Settings(BaseModel):
    """Every setting of one service process; each group reads the environment when made."""

    store: StoreSettings = Field(default_factory=StoreSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    requests: RequestSettings = Field(default_factory=RequestSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)

    @staticmethod
    def environment() -> dict[str, Any]:
        """Every environment variable the service reads, with its default."""
        return {
            f"{group.model_config.get('env_prefix', '')}{name}".upper(): field.default
            for group in GROUPS.values()
            for name, field in group.model_fields.items()
        }
