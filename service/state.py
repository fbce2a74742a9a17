"""What the service serves: one immutable :class:`Served` bundle, swapped whole by a reloader.

The version pointer is Redis's ``argus:current`` when a Redis is configured (falling back to the
newest local bundle while nothing is published), else the newest bundle under the bundle root.
A new version is opened and verified off the event loop; only then is the reference swapped, so
in-flight requests finish on the bundle they started with and a bad bundle never replaces a good
one (it is remembered and not retried: a rebuilt bundle has a new version).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import redis

from index.bundle import Bundle, is_version, list_versions
from index.store import (
    LiveHistory,
    LocalHistory,
    LocalStore,
    RedisClient,
    RedisHistory,
    RedisStore,
    UserVectorStore,
    redacted,
    redis_client,
)
from service.encoder import DynamicBatcher, Encoder
from service.metrics import Metrics
from service.redis_gate import RedisGate
from service.settings import Settings

log = logging.getLogger("argus.service")
RETIRE_AFTER_S = 30.0  # an old bundle's encoder thread stops this long after the swap


@dataclass(frozen=True)
class Served:
    bundle: Bundle
    store: UserVectorStore
    batcher: DynamicBatcher
    built_at: float  # epoch seconds

    @property
    def version(self) -> str:
        return self.bundle.version


class Backend:
    """The bundle, the stores and the reloader of one service process."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.redis: RedisClient | None = None
        self.gate: RedisGate | None = None
        self.redis_store: RedisStore | None = None
        self.history: LiveHistory
        store = settings.store
        if store.redis_url:
            # no retries: a failed call degrades at once; the gate bounds and fuses the calls
            self.redis = redis_client(
                store.redis_url,
                timeout_s=store.redis_timeout_s,
                retries=0,
                max_connections=store.redis_workers + 2,  # + the health check, the reloader
                cluster=store.redis_cluster,
            )
            self.gate = RedisGate(
                self.redis,
                metrics,
                workers=store.redis_workers,
                failures_to_open=store.redis_failures_to_open,
                interval_s=store.redis_health_interval_s,
            )
            self.redis_store = RedisStore(self.redis)
            self.history = RedisHistory(
                self.redis, cap=store.history_cap, ttl_s=store.history_ttl_s
            )
        else:
            self.history = LocalHistory(cap=store.history_cap, max_users=store.history_max_users)
        self.served: Served | None = None
        self.rejected: dict[str, Rejection] = {}  # version -> why it was refused, when to retry
        self.last_reload_error: str | None = None
        self.store_holds_version: bool | None = None  # None: no Redis, or not checked yet
        metrics.store_version.set(1.0)  # 0 only once Redis is seen without the served version

    # -- the pointer and loading -------------------------------------------------------------

    def latest_local(self) -> str | None:
        versions = list_versions(self.settings.store.bundles)
        return versions[-1].name if versions else None

    def pointer(self) -> str | None:
        """The version that should be served (``None``: the current bundle stays). With Redis,
        its pointer decides; while it has none (never published, or flushed) or is down, a
        replica that serves a bundle keeps it: the newest local bundle's vectors may not be in
        Redis at all. Only a replica with nothing loaded starts on the newest local bundle."""
        if self.redis_store is not None:
            try:
                current = self.redis_store.current_version()
            except redis.RedisError:
                current = None
            if current is not None:
                return current
            return None if self.served is not None else self.latest_local()
        return self.latest_local()

    def load(self, version: str) -> Served:
        """Open, verify and wrap bundle ``version`` (blocking: call it off the event loop)."""
        bundle = Bundle.open(self.settings.store.bundles / version)
        s = self.settings.encoder
        encoder = Encoder(
            bundle.encoder_path,
            max_len=int(bundle.manifest["model_config"]["max_len"]),
            device=s.device,
            threads=s.threads,
            step_path=bundle.step_path,
        )
        batcher = DynamicBatcher(
            encoder,
            max_batch=s.max_batch,
            max_delay_ms=s.max_delay_ms,
            observe=self.metrics.observe_batch,
            timeout_s=s.timeout_ms / 1e3,
            max_queue=s.max_queue,
            cache_bytes=s.cache_mb << 20,  # a new bundle starts an empty cache
            observe_cache=self.metrics.observe_cache,
        )
        store: UserVectorStore = self.redis_store or LocalStore.from_bundle(bundle)
        built = datetime.fromisoformat(bundle.manifest["created_at"]).timestamp()
        return Served(bundle, store, batcher, built)

    async def refresh(self) -> None:
        """Load the pointed-to version if it is new. A version that failed is retried with
        exponential back-off (files may still be arriving on a shared volume), one whose name
        is not a bundle version never (it would name a path outside the bundle root)."""
        version = await asyncio.to_thread(self.pointer)
        if version is None:
            return
        if self.served is not None and self.served.version == version:
            return
        earlier = self.rejected.get(version)
        if earlier is not None and (earlier.permanent or time.monotonic() < earlier.retry_at):
            return
        valid = is_version(version)
        try:
            if not valid:
                raise ValueError(f"{version!r} is not a bundle version (YYYYMMDDTHHMM[SS]Z-hash)")
            served = await asyncio.to_thread(self.load, version)
        except Exception as error:  # any failure keeps the old bundle serving
            attempts = 1 if earlier is None else earlier.attempts + 1
            first = max(1.0, self.settings.store.reload_interval_s)
            delay = min(MAX_BACKOFF_S, first * 2 ** (attempts - 1))
            self.rejected[version] = Rejection(
                str(error), attempts, time.monotonic() + delay, permanent=not valid
            )
            self.last_reload_error = f"{version}: {error}"
            self.metrics.reloads.labels("rejected").inc()
            log.error(
                "bundle %s rejected (attempt %d, next in %.0f s), still serving %s: %s",
                version,
                attempts,
                delay,
                self.version,
                error,
            )
            return
        self.rejected.pop(version, None)
        old, self.served = self.served, served
        self.metrics.reloads.labels("loaded").inc()
        self.metrics.bundle_info.clear()
        search = "exact" if served.bundle.exact_from == 0 else "hnsw"
        self.metrics.bundle_info.labels(version, search).set(1)
        log.info("serving bundle %s (was %s)", version, old and old.version)
        if old is not None:
            asyncio.get_running_loop().call_later(
                RETIRE_AFTER_S, lambda: old.batcher.close(wait=False)
            )

    async def reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.store.reload_interval_s)
            try:
                await self.refresh()
                await self.check_store()
            except Exception:  # the reloader must outlive any single failure
                log.exception("reload check failed")

    async def check_store(self) -> None:
        """Whether Redis still holds the served version's user vectors (a flush or a restart
        without persistence empties it while PING still answers): the gauge, /readyz, a log."""
        if self.redis_store is None or self.served is None:
            return
        version = self.served.version
        try:
            holds = await asyncio.to_thread(self.redis_store.holds, version)
        except redis.RedisError:
            return  # Redis down: the gate's health check reports it
        if holds != self.store_holds_version and not holds:
            log.error("Redis no longer holds version %s: answers are degraded", version)
        self.store_holds_version = holds
        self.metrics.store_version.set(1.0 if holds else 0.0)

    @property
    def version(self) -> str | None:
        return None if self.served is None else self.served.version

    def close(self) -> None:
        if self.served is not None:
            self.served.batcher.close()
        if self.gate is not None:
            self.gate.close()
        if self.redis is not None:
            self.redis.close()

    # -- readiness ---------------------------------------------------------------------------

    def not_ready_because(self) -> str | None:
        """Why this replica cannot answer, or None: a bundle is loaded and its encoder runs."""
        if self.served is None:
            return f"no bundle loaded from {self.settings.store.bundles}" + (
                f" (last error: {self.last_reload_error})" if self.last_reload_error else ""
            )
        if not self.served.batcher.alive:
            return "the runtime encoder's worker stopped"
        return None  # Redis is not asked: without it this replica still answers (degraded)

    def redis_health(self) -> str | None:
        """``"up"``/``"down"`` (the last health check) with where, for /readyz; None: no Redis."""
        if self.gate is None:
            return None
        where = redacted(self.settings.store.redis_url or "")
        return f"{'up' if self.gate.up else 'down'} ({where})"

    def store_health(self) -> str | None:
        """For /readyz: whether Redis holds the served version's vectors; None: not known."""
        if self.store_holds_version is None or self.served is None:
            return None
        if self.store_holds_version:
            return f"holds {self.served.version}"
        return (
            f"missing {self.served.version}: stored vectors are gone (flushed or expired), "
            "answers are degraded until it is published again"
        )

    def bundle_age_s(self) -> float:
        return 0.0 if self.served is None else time.time() - self.served.built_at


MAX_BACKOFF_S = 300.0  # the longest wait before a failed version is tried again


@dataclass
class Rejection:
    reason: str
    attempts: int
    retry_at: float  # time.monotonic() of the next try
    permanent: bool = False  # not a version name at all: never tried
