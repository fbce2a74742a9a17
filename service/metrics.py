"""Prometheus series of the service, in a registry per app."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from service.encoder_cache import CacheReport

# No *_created series: a timestamp per series that no dashboard or alert uses.
disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class LoopBuckets:
    """One labelled child of a :class:`LoopHistogram`: counts per bucket and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: "le"
        self.sum += value


class LoopCount:
    """One labelled child of a :class:`LoopCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopFamily:
    """Series written by the event loop's thread alone (every request's timings and counts):
    each child is plain numbers, updated without the lock ``prometheus_client`` takes on every
    update, and ``/metrics`` reads them through :meth:`collect` as the same series a
    ``Histogram`` or ``Counter`` would give. A writer on another thread could lose updates."""

    def __init__(
        self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.child()
        return child

    def child(self) -> Any:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return []  # the registry then leaves the names unchecked for clashes, as for any collector


class LoopHistogram(LoopFamily):
    def __init__(self, *args: Any, buckets: tuple[float, ...]) -> None:
        super().__init__(*args)
        self.bounds = tuple(sorted(float(bound) for bound in buckets))

    def child(self) -> LoopBuckets:
        return LoopBuckets(self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [*map(floatToGoString, self.bounds), "+Inf"]
        for values, child in list(self.children.items()):
            counts, total, cumulative = list(child.counts), child.sum, []
            running = 0
            for le, count in zip(les, counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            family.add_metric(list(values), cumulative, total)
        yield family


class LoopCounter(LoopFamily):
    def child(self) -> LoopCount:
        return LoopCount()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            family.add_metric(list(values), child.value)
        yield family


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
        # written on every request, by the event loop's thread: no lock per update
        self.request_seconds = LoopHistogram(
            "argus_request_duration_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            r,
            buckets=LATENCY_BUCKETS,
        )
        self.requests = LoopCounter(
            "argus_requests_total",
            "Requests by endpoint and status code.",
            ["endpoint", "status"],
            r,
        )
        self.stage_seconds = LoopHistogram(
            "argus_stage_duration_seconds",
            "Latency of one stage of a request.",
            ["stage"],
            r,
            buckets=LATENCY_BUCKETS,
        )
        self.ann_batch = LoopHistogram(
            "argus_ann_batch_size",
            "Queries per hnswlib call: the searches requests started in two turns of the event "
            "loop (of one size), run together.",
            [],
            r,
            buckets=BATCH_BUCKETS,
        ).labels()
        self.vector_source = LoopCounter(
            "argus_vector_source_total", "User vectors by source.", ["endpoint", "source"], r
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
            "argus_bundle_info",
            "The loaded bundle (value 1) and how it searches candidates (hnsw or exact).",
            ["version", "search"],
            registry=r,
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
