"""Every call the service makes to Redis goes through one :class:`RedisGate`, so that a Redis
outage or a slow Redis costs answers their freshness (``degraded=true``), never their arrival.

* **Bounded work.** Calls run on the gate's own pool of ``workers`` threads (the Redis client's
  connection pool has as many connections); at most ``4 * workers`` calls wait or run, and a
  call beyond that is not tried (:class:`RedisUnavailable`, counted in
  ``argus_redis_shed_total``). A slow Redis therefore holds ``workers`` threads, not every
  request and not the default executor that the rest of the service uses.
* **No retries, no reconnect storm.** The client answers a timeout at once (no redis-py retry
  with back-off); after ``failures_to_open`` failed calls in a row, or one failed health check,
  the gate *opens*: calls are not tried until the health check's ``PING`` (every
  ``interval_s``, its own thread) succeeds,
  so during an outage one connection attempt per interval reaches Redis, not one per request.
* **Health is a metric, not readiness.** ``argus_redis_up`` is the health check's last answer.
  A replica without Redis still answers (realtime, then popularity), so readiness ignores Redis:
  otherwise every replica would go unready at once and the degraded answers would reach no one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import redis

from index.store import RedisClient
from service.metrics import Metrics

T = TypeVar("T")
log = logging.getLogger("argus.service")


class RedisUnavailable(redis.ConnectionError):
    """Not tried: the gate is open (Redis failing its health check) or every worker is busy."""


class RedisGate:
    def __init__(
        self,
        client: RedisClient,
        metrics: Metrics,
        *,
        workers: int = 16,
        failures_to_open: int = 3,
        interval_s: float = 1.0,
    ) -> None:
        self.client, self.metrics = client, metrics
        self.workers, self.failures_to_open, self.interval_s = workers, failures_to_open, interval_s
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="argus-redis")
        self.limit = 4 * workers
        self.pending = 0  # calls waiting for or running on a worker
        self.failures = 0  # failed calls in a row
        self.open = False  # calls are not tried until a health check succeeds
        metrics.redis_up.set(1)

    async def call(self, work: Callable[[], T]) -> T:
        """``work()`` (blocking Redis calls) on a worker; a Redis error it raises counts as a
        failure. Raises :class:`RedisUnavailable` without trying when open or saturated."""
        if self.open:
            self.metrics.redis_shed.labels("open").inc()
            raise RedisUnavailable("Redis is failing its health check; not tried")
        if self.pending >= self.limit:
            self.metrics.redis_shed.labels("busy").inc()
            raise RedisUnavailable(f"all {self.workers} Redis workers busy; not tried")
        self.pending += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.pool, work)
        except redis.RedisError:
            self.record(ok=False)
            raise
        finally:
            self.pending -= 1
        return result

    def record(self, *, ok: bool) -> None:
        """The outcome of one call (event-loop thread only: no lock needed)."""
        if ok:
            self.failures = 0
            return
        self.failures += 1
        if not self.open and self.failures >= self.failures_to_open:
            self.open = True
            log.warning(
                "Redis failed %d calls in a row: not tried until it answers a PING", self.failures
            )

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    async def check(self) -> bool:
        """One health check: sets ``argus_redis_up`` and closes (or opens) the gate."""
        up = await asyncio.to_thread(self.ping)
        self.metrics.redis_up.set(1 if up else 0)
        if up and self.open:
            log.info("Redis answers again: calls resume")
        self.open, self.failures = (False, 0) if up else (True, self.failures)
        return up

    async def watch(self) -> None:
        """Check every ``interval_s`` until cancelled; no failure ends the watch (a dead watch
        would leave an open gate open for good)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # e.g. the thread pool refusing work during shutdown
                log.exception("Redis health check failed")

    @property
    def up(self) -> bool:
        return not self.open

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
