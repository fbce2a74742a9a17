"""Prometheus series of the service, in a registry per app."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from service.encoder_cache import CacheReport

# No *_created series: a timestamp per series that no dashboard or alert uses.
disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Every series of one service process, in its own registry, by concern."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # Labelled children, looked up once each: ``labels()`` costs more than the observation.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self._requests(r)
        self._stores(r)
        self._encoder(r)
        self._bundle(r)

    def _requests(self, r: CollectorRegistry) -> None:
        self.request_seconds = Histogram(
            "argus_request_duration_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "argus_requests_total",
            "Requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "argus_stage_duration_seconds",
            "Latency of one stage of a request.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.vector_source = Counter(
            "argus_vector_source_total",
            "User vectors by source.",
            ["endpoint", "source"],
            registry=r,
        )

    def _stores(self, r: CollectorRegistry) -> None:
        self.store_corrupt = Counter(
            "argus_store_corrupt_values_total",
            "Values in the store no writer makes (wrong vector length, history entry size, meta): "
            "answered from the next source, flagged degraded.",
            registry=r,
        )
        self.store_errors = Counter(
            "argus_store_errors_total", "Failed user-vector store or history calls.", registry=r
        )
        self.redis_up = Gauge(
            "argus_redis_up",
            "1 when Redis answered the last health check (PING); 0: calls are not tried and "
            "answers are degraded.",
            registry=r,
        )
        self.store_version = Gauge(
            "argus_store_version_present",
            "0 when Redis answers but no longer holds the served version's user vectors "
            "(checked each reload interval: a flush, a restart without persistence, an expiry), "
            "so answers are degraded; else 1.",
            registry=r,
        )
        self.redis_shed = Counter(
            "argus_redis_shed_total",
            "Redis calls not tried, by reason: open (failing its health check) or busy (every "
            "Redis worker taken): answered from the next source, flagged degraded.",
            ["reason"],
            registry=r,
        )

    def _encoder(self, r: CollectorRegistry) -> None:
        self.encoder_unavailable = Counter(
            "argus_encoder_unavailable_total",
            "Requests the runtime encoder could not answer in time (queue full, deadline, "
            "retired): answered from the next source, flagged degraded.",
            registry=r,
        )
        self.encoder_alive = Gauge(
            "argus_encoder_alive",
            "1 while the served bundle's runtime encoder worker runs.",
            registry=r,
        )
        self.encoder_batch = Histogram(
            "argus_encoder_batch_size",
            "Histories per runtime encoder batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.encoder_queue_seconds = Histogram(
            "argus_encoder_queue_delay_seconds",
            "Wait before a history's batch ran.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encoder_cache = Counter(
            "argus_encoder_cache_total",
            "Runtime encodes by what the key/value cache held: hit (the same history: no work), "
            "extend (its new events only), miss (no state), diverged (the history no longer "
            "extends the cached one: encoded in full).",
            ["outcome"],
            registry=r,
        )
        self.encoder_tokens = Counter(
            "argus_encoder_tokens_total",
            "Events the runtime encoder ran, by kind: full (whole windows) or step (new events "
            "after a cached state).",
            ["kind"],
            registry=r,
        )
        self.encoder_cache_bytes = Gauge(
            "argus_encoder_cache_bytes", "Bytes of cached encoder states.", registry=r
        )
        self.encoder_cache_users = Gauge(
            "argus_encoder_cache_users", "Users with a cached encoder state.", registry=r
        )

    def _bundle(self, r: CollectorRegistry) -> None:
        self.bundle_info = Gauge(
            "argus_bundle_info", "The loaded bundle (value 1).", ["version"], registry=r
        )
        self.bundle_age = Gauge(
            "argus_bundle_age_seconds", "Seconds since the loaded bundle was built.", registry=r
        )
        self.reloads = Counter(
            "argus_bundle_reloads_total", "Bundle loads by result.", ["result"], registry=r
        )

    def child(self, family: Any, *labels: str) -> Any:
        """``family.labels(*labels)``, kept after the first call (dict reads are thread-safe and
        a race only builds the same child twice)."""
        key = (family, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def stage(self, name: str) -> Any:
        """The stage-latency histogram of ``name``."""
        return self.child(self.stage_seconds, name)

    def observe_cache(self, report: CacheReport) -> None:
        for outcome, count in report.outcomes.items():
            self.encoder_cache.labels(outcome).inc(count)
        self.encoder_tokens.labels("full").inc(report.full_tokens)
        self.encoder_tokens.labels("step").inc(report.step_tokens)
        self.encoder_cache_bytes.set(report.bytes)
        self.encoder_cache_users.set(report.users)

    def observe_batch(self, size: int, queue_delay_s: float) -> None:
        self.encoder_batch.observe(size)
        self.encoder_queue_seconds.observe(queue_delay_s)
