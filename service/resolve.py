"""Which user vector answers a request, in order (the response's ``source``):

1. ``realtime`` — the live history (the request's, else the user's list in the store) through the
   runtime encoder, when the request asks (``mode="realtime"``, or ``"auto"`` with a history in
   the request) or the service is configured to (``realtime_first``);
2. ``stored`` — the user's vector of the served version;
3. ``history`` — the runtime encoder on the stored live history (a user newer than the bundle);
4. ``popular`` — no vector: the bundle's popularity ranking (``/candidates``) or no scores.

``degraded`` is true when the store failed and a later source had to answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import redis

from index.store import CorruptValue, VersionUnavailable
from model.contract import HISTORY_EVENT
from service.encoder import EncoderUnavailable
from service.metrics import Metrics
from service.redis_gate import RedisUnavailable
from service.schemas import Event, UserRequest, as_history
from service.settings import Mode, RequestSettings
from service.state import Backend, Served

T = TypeVar("T")


@dataclass
class UserVector:
    vector: np.ndarray | None
    source: str
    degraded: bool
    history: np.ndarray  # the live history used (for exclude_seen), maybe empty


@dataclass
class Lookup:
    history: np.ndarray  # the stored live history, maybe empty
    vector: np.ndarray | None  # the stored vector of the served version, when found and asked
    degraded: bool  # a store failed or held a corrupt value
    failed: bool = False  # a Redis call failed (the gate counts it)


class Resolver:
    """The user vector of a request, and the timed stages it takes (store, encoder, search)."""

    def __init__(self, backend: Backend, settings: RequestSettings, metrics: Metrics) -> None:
        self.backend, self.settings, self.metrics = backend, settings, metrics

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """The block's wall time, observed as stage ``name``."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage(name).observe(time.perf_counter() - began)

    async def stage(self, name: str, work: Callable[[], T], *, offload: bool) -> T:
        """``work()`` timed as ``name``, in a worker thread when ``offload``, else inline (a
        thread hop costs more than a lookup in memory)."""
        began = time.perf_counter()  # not `timed`: a generator's context costs a microsecond
        try:
            return await asyncio.to_thread(work) if offload else work()
        finally:
            self.metrics.stage(name).observe(time.perf_counter() - began)

    async def timed_await(self, name: str, work: Awaitable[T]) -> T:
        """``await work``, timed as ``name``."""
        began = time.perf_counter()
        try:
            return await work
        finally:
            self.metrics.stage(name).observe(time.perf_counter() - began)

    async def store(self, work: Callable[[], T]) -> T:
        """A store call: through the Redis gate (its bounded workers; RedisUnavailable when it
        is not tried) with Redis, inline with the embedded store."""
        gate = self.backend.gate
        if gate is None:
            return await self.stage("store", work, offload=False)
        with self.timed("store"):
            return await gate.call(work)

    async def fetch(self, served: Served, user_id: int, history: bool, realtime: bool) -> Lookup:
        """:meth:`lookup` through :meth:`store`; a call not tried is an empty, degraded lookup."""
        try:
            found = await self.store(lambda: self.lookup(served, user_id, history, realtime))
        except RedisUnavailable:
            return Lookup(np.empty(0, dtype=HISTORY_EVENT), None, True)
        if self.backend.gate is not None:
            self.backend.gate.record(ok=not found.failed)
        return found

    async def encode(self, served: Served, user_id: int, history: np.ndarray) -> np.ndarray | None:
        """The runtime encoder's vector of ``user_id``'s ``history`` (continuing their cached
        state), or None when it cannot answer in time (queue full, deadline passed, retired):
        the caller goes on to the next source."""
        with self.timed("encoder"):
            try:
                vector = await served.batcher.encode(history, user_id)  # the newest max_len
                return served.bundle.read_feedback(vector, history)
            except EncoderUnavailable:
                self.metrics.encoder_unavailable.inc()
                return None

    def lookup(self, served: Served, user_id: int, history: bool, realtime: bool) -> Lookup:
        """One trip to the stores (blocking): the live history when ``history`` is asked, then
        the stored vector unless the realtime path will answer from a non-empty history. A
        failed Redis call ends the trip: a second one would most likely wait as long."""
        events, degraded = np.empty(0, dtype=HISTORY_EVENT), False
        if history:
            try:
                (events,) = self.backend.history.get([user_id])
            except CorruptValue:
                self.metrics.store_corrupt.inc()
                degraded = True
            except redis.RedisError:
                self.metrics.store_errors.inc()
                return Lookup(events, None, True, failed=True)
        if realtime and len(events):
            return Lookup(events, None, degraded)
        try:
            vectors, found = served.store.get(served.version, [user_id])
            return Lookup(events, vectors[0] if found[0] else None, degraded)
        except CorruptValue:
            self.metrics.store_corrupt.inc()
            return Lookup(events, None, True)
        except redis.RedisError:
            self.metrics.store_errors.inc()
            return Lookup(events, None, True, failed=True)
        except VersionUnavailable:
            self.metrics.store_errors.inc()
            return Lookup(events, None, True)

    async def user_of(self, served: Served, body: UserRequest, endpoint: str) -> UserVector:
        """:meth:`resolve` for a request body, counted by endpoint and source."""
        user = await self.resolve(served, body.user_id, body.history, body.mode)
        self.metrics.child(self.metrics.vector_source, endpoint, user.source).inc()
        return user

    async def resolve(
        self, served: Served, user_id: int, events: list[Event] | None, mode: Mode | None
    ) -> UserVector:
        mode = mode or self.settings.default_mode
        given = as_history(events) if events is not None else None
        realtime = mode == "realtime" or (
            mode == "auto" and (given is not None or self.settings.realtime_first)
        )
        encoder_failed = False
        if realtime and given is not None and len(given):
            vector = await self.encode(served, user_id, given)
            if vector is not None:
                return UserVector(vector, "realtime", False, given)
            encoder_failed, realtime = True, False  # the next source answers, flagged
        found = await self.fetch(served, user_id, given is None, realtime)
        history = found.history if given is None else given
        degraded = found.degraded or encoder_failed
        if realtime and len(history):
            vector = await self.encode(served, user_id, history)
            if vector is not None:
                return UserVector(vector, "realtime", degraded, history)
            encoder_failed = degraded = True  # fetch the stored vector the lookup skipped
            again = await self.fetch(served, user_id, False, False)
            found = Lookup(history, again.vector, again.degraded)
        if found.vector is not None:
            return UserVector(found.vector, "stored", degraded, history)
        if mode != "offline" and len(history) and not encoder_failed:
            vector = await self.encode(served, user_id, history)
            if vector is not None:
                return UserVector(vector, "history", degraded, history)
            degraded = True
        return UserVector(None, "popular", degraded, history)
