"""User-vector stores, the versioned publish to Redis, and live histories.

Redis keys (every vector key contains the bundle version, so a reader asks for the version of the
items it serves and can never mix two)::

    argus:current                 the live version (a string), flipped only after a full write
    argus:versions                set of versions that have keys in Redis
    argus:version:<v>             hash: layout, dim, n_users, buckets, units, written, complete
    argus:uv:<v>:<user_id>        "plain" layout (default): value = vector bytes
    argus:uv:<v>:b<bucket>        "hash" layout: field = decimal user id, value = vector bytes
    argus:hist:<user_id>          list of packed events (model.contract.HISTORY_EVENT), capped

Vectors are raw little-endian float32. ``benchmarks/publish.py`` compares the two layouts on 1M
vectors: both write above 200k vectors/s; "hash" (about 128 users per bucket) takes 5% less Redis
memory, but "plain" reads a user in 0.16 ms instead of 0.28 ms and 64 users in 0.45 ms instead of
1.41 ms (one MGET instead of a pipeline of HMGETs). Reads are the service's hot path, so "plain"
is the default; "hash" stays available for memory-bound deployments.

A publish writes a version in order, a chunk of whole keys per pipeline, then advances
``written`` once the chunk is acknowledged (never ahead of the data; a rerun rewrites at most one
chunk); a killed publish leaves ``argus:current`` untouched and a rerun resumes from ``written``.
Every command touches one key (no MULTI/EXEC across keys), so all of this works on a Redis
Cluster too (``RedisClient``), where the ``hash`` layout is the faster writer. Readers refuse a
version whose ``complete`` flag is not set. After the flip every other version gets a TTL (the
grace period), so services still holding the previous bundle keep reading its vectors until they
reload.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import redis
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterPipeline, RedisCluster
from redis.retry import Retry
from tqdm import tqdm

from index.bundle import Bundle, rows_of
from model.contract import DAY, HISTORY_EVENT, PUBLISH_CHUNK, PUBLISH_GRACE
from model.data.events import parse_duration

CURRENT = "argus:current"
PUBLISH_LOCK = "argus:publish-lock"  # SET NX with expiry: one publish at a time
VERSIONS = "argus:versions"
LAYOUTS = ("plain", "hash")
GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads any id pattern over buckets


# A single Redis or a Redis Cluster (redis-py's cluster client): the store, publish and live
# histories use only single-key commands, pipelines and MGETs split by slot, so both work.
RedisClient = redis.Redis | RedisCluster


def meta_key(version: str) -> str:
    return f"argus:version:{version}"


def vector_prefix(version: str) -> str:
    return f"argus:uv:{version}:"


# Live histories: events kept per user, how long one lives after its last append, and (without
# Redis) how many users one process remembers.
HISTORY_CAP = 2_048
HISTORY_TTL_S = 30 * DAY
HISTORY_MAX_USERS = 100_000


def history_key(user_id: int) -> str:
    return f"argus:hist:{user_id}"


class VersionUnavailable(LookupError):
    """The asked-for version is not (completely) in the store."""


class CorruptValue(ValueError):
    """A value in Redis that no publish or ``/events`` call writes: a vector of the wrong length,
    a history entry of the wrong size, version meta missing a field."""


Ids = Sequence[int] | np.ndarray


def as_ids(user_ids: Ids) -> np.ndarray:
    return np.asarray(user_ids, dtype=np.int64).reshape(-1)


class UserVectorStore(Protocol):
    """Where the service reads the stored user vectors of the version it serves."""

    def current_version(self) -> str | None:
        """The version the store calls live (``None`` when there is none)."""
        ...

    def get(self, version: str, user_ids: Ids) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors [n, dim] float32, found [n] bool)``: rows of unknown users are zero.
        Raises :class:`VersionUnavailable` for a version the store does not fully hold."""
        ...


class LocalStore:
    """The embedded store: the bundle's own ``user_vectors.npy``, memory-mapped."""

    def __init__(self, version: str, user_ids: np.ndarray, user_vectors: np.ndarray) -> None:
        # a plain array over the same map: np.memmap's indexing costs more than a lookup's read
        self.version, self.user_ids, self.user_vectors = version, user_ids, np.asarray(user_vectors)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> LocalStore:
        return cls(bundle.version, bundle.user_ids, bundle.user_vectors)

    def current_version(self) -> str | None:
        return self.version

    def get(self, version: str, user_ids: Ids) -> tuple[np.ndarray, np.ndarray]:
        if version != self.version:
            raise VersionUnavailable(f"the local store holds {self.version}, not {version}")
        ids = as_ids(user_ids)
        rows, found = rows_of(self.user_ids, ids)
        if len(self.user_ids) == 0:
            return np.zeros((len(ids), self.user_vectors.shape[1]), np.float32), found
        vectors = self.user_vectors.take(rows, axis=0)  # a copy; every row is in range
        if not found.all():
            vectors[~found] = 0.0
        return vectors, found


class Layout(Protocol):
    """How one version's vectors map onto Redis keys. A unit is one key; publish writes whole
    units in order and counts progress in units."""

    name: str
    buckets: int

    def units(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(order, offsets)``: unit ``i`` holds users ``order[offsets[i]:offsets[i + 1]]``."""
        ...

    def write(self, pipe: Any, version: str, user_ids: np.ndarray, blobs: list[bytes]) -> None: ...

    def read(self, client: RedisClient, version: str, user_ids: np.ndarray) -> list[Any]: ...


class PlainKeys:
    """One key per user: MSET to write, MGET to read."""

    name, buckets = "plain", 0

    def units(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(user_ids)), np.arange(len(user_ids) + 1)

    def write(self, pipe: Any, version: str, user_ids: np.ndarray, blobs: list[bytes]) -> None:
        prefix = vector_prefix(version)
        values = {f"{prefix}{u}": blob for u, blob in zip(user_ids.tolist(), blobs, strict=True)}
        if isinstance(pipe, ClusterPipeline):  # a cluster pipeline has no MSET: SETs by node
            for key, blob in values.items():
                pipe.set(key, blob)
        else:
            pipe.mset(values)

    def read(self, client: RedisClient, version: str, user_ids: np.ndarray) -> list[Any]:
        keys = [f"{vector_prefix(version)}{u}" for u in user_ids.tolist()]
        if isinstance(client, RedisCluster):  # one MGET per slot, the answers in key order
            return list(client.mget_nonatomic(keys))
        return list(client.mget(keys))


class HashBuckets:
    """Users hashed into ``buckets`` Redis hashes: one HSET per bucket to write, HMGETs to read."""

    name = "hash"

    def __init__(self, buckets: int) -> None:
        if buckets < 1:
            raise ValueError("the hash layout needs at least one bucket")
        self.buckets = buckets

    @classmethod
    def for_users(cls, n_users: int, per_bucket: int = 128) -> HashBuckets:
        return cls(max(1, -(-n_users // per_bucket)))

    def bucket_of(self, user_ids: np.ndarray) -> np.ndarray:
        return ((user_ids.astype(np.uint64) * GOLDEN) >> np.uint64(32)) % np.uint64(self.buckets)

    def units(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bucket = self.bucket_of(user_ids)
        order = np.argsort(bucket, kind="stable")
        offsets = np.searchsorted(bucket[order], np.arange(self.buckets + 1, dtype=np.uint64))
        return order, offsets

    def _groups(self, user_ids: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
        """The non-empty units: ``(bucket, rows of user_ids in it)``."""
        order, offsets = self.units(user_ids)
        for b in np.flatnonzero(np.diff(offsets)).tolist():
            yield b, order[offsets[b] : offsets[b + 1]]

    def write(self, pipe: Any, version: str, user_ids: np.ndarray, blobs: list[bytes]) -> None:
        prefix = vector_prefix(version)
        for b, rows in self._groups(user_ids):
            pipe.hset(f"{prefix}b{b}", mapping={str(user_ids[r]): blobs[r] for r in rows.tolist()})

    def read(self, client: RedisClient, version: str, user_ids: np.ndarray) -> list[Any]:
        prefix = vector_prefix(version)
        groups = list(self._groups(user_ids))
        pipe = client.pipeline(transaction=False)
        for b, rows in groups:
            pipe.hmget(f"{prefix}b{b}", [str(u) for u in user_ids[rows].tolist()])
        out: list[Any] = [None] * len(user_ids)
        for (_, rows), values in zip(groups, pipe.execute(), strict=True):
            for r, value in zip(rows.tolist(), values, strict=True):
                out[r] = value
        return out


def make_layout(name: str, buckets: int) -> Layout:
    if name == "hash":
        return HashBuckets(buckets)
    if name == "plain":
        return PlainKeys()
    raise ValueError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}")


def secrets_dir() -> Path | None:
    """Where mounted secrets are read from (``ARGUS_SECRETS_DIR``, default ``/run/secrets``, the
    Docker/Compose mount point): a file named like the variable in lower case, e.g.
    ``/run/secrets/argus_redis_password``, sets it; ``None`` when there is no such directory."""
    path = Path(os.environ.get("ARGUS_SECRETS_DIR", "/run/secrets"))
    return path if path.is_dir() else None


class RedisAuth(BaseSettings):
    """The Redis password (``requirepass``): ``ARGUS_REDIS_PASSWORD``, or the mounted secret
    file ``argus_redis_password``. It is kept out of ``ARGUS_REDIS_URL``, which may be logged;
    a password inside the URL wins."""

    model_config = SettingsConfigDict(
        env_prefix="ARGUS_", extra="ignore", secrets_dir=secrets_dir()
    )

    redis_password: SecretStr | None = None


def redis_client(
    url: str,
    *,
    timeout_s: float = 5.0,
    retries: int = 3,
    max_connections: int | None = None,
    cluster: bool = False,
) -> RedisClient:
    """A client for ``url`` (``redis://host:port/db``; with ``cluster``, any node of a Redis
    Cluster) with the configured password. ``retries`` 0: a failed call raises at once (the
    service degrades instead of waiting)."""
    password = RedisAuth().redis_password
    retry = Retry(ExponentialWithJitterBackoff(), retries) if retries else Retry(NoBackoff(), 0)
    options: dict[str, Any] = {
        "password": None if password is None else password.get_secret_value(),
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": retry,
    }
    if max_connections is not None:
        options["max_connections"] = max_connections  # per node on a cluster
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def connect(url: str, *, timeout_s: float = 5.0, cluster: bool = False) -> RedisClient:
    """A client for ``url``; raises a clear error (the password redacted) when unreachable."""
    try:
        client = redis_client(url, timeout_s=timeout_s, cluster=cluster)
        client.ping()
    except redis.RedisError as error:
        raise ConnectionError(f"cannot reach Redis at {redacted(url)}: {error}") from None
    return client


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to show in an answer."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


class RedisStore:
    """User vectors of any fully published version, read in batches.

    A version's meta is cached once seen complete, and read again when a read misses users and
    the last check is older than ``recheck_s``: a version that vanished (a flush, a restart
    without persistence, an expiry) then raises :class:`VersionUnavailable` within seconds instead
    of looking like a store of unknown users."""

    def __init__(self, client: RedisClient, recheck_s: float = 1.0) -> None:
        self.client = client
        self.recheck_s = recheck_s
        # version -> (layout, dim, time.monotonic() of the check); threads share it: an entry is
        # replaced or dropped whole
        self._layouts: dict[str, tuple[Layout, int, float]] = {}

    def current_version(self) -> str | None:
        value = self.client.get(CURRENT)
        return None if value is None else bytes(value).decode()  # type: ignore[arg-type]

    def layout(self, version: str) -> tuple[Layout, int]:
        """``(layout, dim)`` of a complete version (cached once seen complete)."""
        layout, dim, _ = self._known(version)
        return layout, dim

    def _known(self, version: str, fresh: bool = False) -> tuple[Layout, int, float]:
        """The cached ``(layout, dim, checked_at)``, read from Redis when not cached or
        ``fresh``; a version no longer complete leaves the cache."""
        known = None if fresh else self._layouts.get(version)
        if known is not None:
            return known
        meta = decoded(self.client.hgetall(meta_key(version)))
        if meta.get("complete") != "1":
            self._layouts.pop(version, None)
            if not meta:
                raise VersionUnavailable(
                    f"version {version} is not in Redis (never published, flushed or expired)"
                )
            raise VersionUnavailable(f"version {version} is only partly published")
        try:
            layout, dim = make_layout(meta["layout"], int(meta["buckets"])), int(meta["dim"])
        except (KeyError, ValueError) as error:
            raise CorruptValue(f"meta of version {version} is unusable ({error!r})") from None
        self._layouts[version] = entry = (layout, dim, time.monotonic())
        return entry

    def holds(self, version: str) -> bool:
        """Whether ``version`` is (still) fully published; refreshes the cached meta."""
        try:
            self._known(version, fresh=True)
        except VersionUnavailable:
            return False
        return True

    def get(self, version: str, user_ids: Ids) -> tuple[np.ndarray, np.ndarray]:
        layout, dim, checked = self._known(version)
        ids = as_ids(user_ids)
        vectors = np.zeros((len(ids), dim), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        if len(ids) == 0:
            return vectors, found
        for row, blob in enumerate(layout.read(self.client, version, ids)):
            if blob is None:
                continue
            if len(blob) != 4 * dim:
                raise CorruptValue(
                    f"Redis vector of user {ids[row]} in {version} has {len(blob)} bytes, "
                    f"expected {4 * dim}"
                )
            vectors[row] = np.frombuffer(blob, dtype="<f4")
            found[row] = True
        stale = time.monotonic() - checked > self.recheck_s
        if not found.all() and stale and not self.holds(version):
            raise VersionUnavailable(f"version {version} vanished from Redis")  # not the users
        return vectors, found


def decoded(mapping: Any) -> dict[str, str]:
    return {bytes(k).decode(): bytes(v).decode() for k, v in mapping.items()}


@dataclass
class PublishSummary:
    version: str
    previous: str | None
    users: int
    dim: int
    layout: str
    written: int  # users written by this run (less than ``users`` when resumed)
    elapsed_s: float
    grace_s: int
    already: bool = False

    @property
    def vectors_per_s(self) -> float:
        return self.written / max(self.elapsed_s, 1e-9)

    def line(self) -> str:
        if self.already:
            return f"{self.version} is already the published version; nothing to do"
        resumed = "" if self.written == self.users else f" (resumed: {self.written:,} this run)"
        return (
            f"published {self.version}: {self.users:,} user vectors x {self.dim} "
            f"({self.layout} layout){resumed} in {self.elapsed_s:.1f} s "
            f"({self.vectors_per_s:,.0f} vectors/s); argus:current {self.previous} -> "
            f"{self.version}; older versions expire in {self.grace_s} s"
        )


def expire_version(client: RedisClient, version: str, grace_s: int) -> int:
    """Give every key of ``version`` a TTL of ``grace_s`` (0: delete now); returns the key count."""
    pipe = client.pipeline(transaction=False)
    keys = [meta_key(version)]
    pattern = f"{vector_prefix(version)}*"
    keys += [bytes(k).decode() for k in client.scan_iter(pattern, count=10_000)]
    for key in keys:
        if grace_s > 0:
            pipe.expire(key, grace_s)
        else:
            pipe.unlink(key)
    pipe.srem(VERSIONS, version)
    pipe.execute()
    return len(keys)


class PublishBusy(ValueError):
    """Another publish holds the lock."""


class PublishLock:
    """``argus:publish-lock``: taken with SET NX and an expiry, renewed while the holder works,
    released only by its holder (compare and delete), so a killed publish frees it by itself."""

    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"

    def __init__(self, client: RedisClient, ttl_s: int = 60) -> None:
        self.client, self.ttl_s = client, ttl_s
        self.token = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self, wait_s: float = 0.0) -> None:
        deadline = time.monotonic() + wait_s
        while not self.client.set(PUBLISH_LOCK, self.token, nx=True, ex=self.ttl_s):
            if time.monotonic() >= deadline:
                holder = self.client.get(PUBLISH_LOCK)
                name = "?" if holder is None else bytes(holder).decode()  # type: ignore[arg-type]
                raise PublishBusy(
                    f"another publish ({name}) holds {PUBLISH_LOCK} for "
                    f"{self.client.ttl(PUBLISH_LOCK)} more s (renewed while it runs); wait for "
                    "it, or pass --wait SECONDS to queue behind it"
                )
            time.sleep(0.2)

    def renew(self) -> None:
        if self.client.get(PUBLISH_LOCK) != self.token.encode():
            raise PublishBusy(f"lost {PUBLISH_LOCK} (expired while paused?); rerun to resume")
        self.client.expire(PUBLISH_LOCK, self.ttl_s)

    def release(self) -> None:
        self.client.eval(self._RELEASE, 1, PUBLISH_LOCK, self.token)


def publish(
    bundle: Bundle,
    client: RedisClient,
    *,
    layout: str = "plain",
    per_bucket: int = 128,
    chunk: int = PUBLISH_CHUNK,
    grace_s: int = parse_duration(PUBLISH_GRACE),
    progress: bool = True,
    wait_s: float = 0.0,
) -> PublishSummary:
    """Write ``bundle``'s user vectors under its version, then flip ``argus:current`` to it and
    give every other version a TTL of ``grace_s``. Safe to kill and rerun at any point. One
    publish at a time (:class:`PublishLock`): another one waits up to ``wait_s``, then refuses
    with :class:`PublishBusy`, so no run puts the grace TTL on a version still being written."""
    lock = PublishLock(client)
    lock.acquire(wait_s)
    try:
        return _publish(bundle, client, lock, layout, per_bucket, chunk, grace_s, progress)
    finally:
        lock.release()


def _publish(
    bundle: Bundle,
    client: RedisClient,
    lock: PublishLock,
    layout: str,
    per_bucket: int,
    chunk: int,
    grace_s: int,
    progress: bool,
) -> PublishSummary:
    began = time.perf_counter()
    version, user_ids, vectors = bundle.version, bundle.user_ids, bundle.user_vectors
    n_users, dim = len(user_ids), bundle.user_dim  # ranking | retrieval: one value per user
    lay = make_layout(layout, HashBuckets.for_users(n_users, per_bucket).buckets)
    current = client.get(CURRENT)
    previous = None if current is None else bytes(current).decode()  # type: ignore[arg-type]
    meta = decoded(client.hgetall(meta_key(version)))
    if meta.get("complete") == "1" and previous == version:
        layout = meta["layout"]
        return PublishSummary(version, previous, n_users, dim, layout, 0, 0.0, grace_s, True)
    wanted: dict[Any, Any] = {"layout": lay.name, "dim": str(dim), "n_users": str(n_users)}
    wanted["buckets"] = str(lay.buckets)
    order, offsets = lay.units(user_ids)
    n_units = len(offsets) - 1
    wanted["units"] = str(n_units)
    if meta and (meta.get("complete") == "1" or any(meta.get(k) != v for k, v in wanted.items())):
        # A rollback to an expiring version, or a partial write in another layout: start over.
        expire_version(client, version, 0)
        meta = {}
    if not meta:  # meta first: a version listed in VERSIONS always has its meta
        client.hset(meta_key(version), mapping={**wanted, "written": "0", "complete": "0"})
        client.sadd(VERSIONS, version)
    unit = int(meta.get("written", 0))
    done_before = int(offsets[unit])
    bar = tqdm(total=n_users, initial=done_before, desc="publish", unit="vec", disable=not progress)
    width = 4 * dim
    while unit < n_units:
        end = int(np.searchsorted(offsets, offsets[unit] + chunk, side="right")) - 1
        end = min(max(end, unit + 1), n_units)
        rows = order[offsets[unit] : offsets[end]]
        data = np.ascontiguousarray(vectors[rows], dtype="<f4").tobytes()
        blobs = [data[i : i + width] for i in range(0, len(data), width)]
        # The chunk, then the counter once every write is acknowledged: a kill in between
        # leaves the counter behind (a rerun rewrites the same values), never ahead. No
        # MULTI/EXEC, which a Redis Cluster refuses across slots.
        pipe = client.pipeline(transaction=False)
        lay.write(pipe, version, user_ids[rows], blobs)
        pipe.execute()
        client.hset(meta_key(version), "written", end)
        lock.renew()
        bar.update(len(rows))
        unit = end
    bar.close()
    published_at = datetime.now(UTC).isoformat(timespec="seconds")
    client.hset(meta_key(version), mapping={"complete": 1, "published_at": published_at})
    client.persist(meta_key(version))
    previous_value = client.set(CURRENT, version, get=True)  # the flip: only after "complete"
    previous = None if previous_value is None else bytes(previous_value).decode()  # type: ignore[arg-type]
    for other in client.smembers(VERSIONS):
        name = bytes(other).decode()  # type: ignore[arg-type]
        if name != version:
            expire_version(client, name, grace_s)
    return PublishSummary(
        version=version,
        previous=previous,
        users=n_users,
        dim=dim,
        layout=lay.name,
        written=n_users - done_before,
        elapsed_s=time.perf_counter() - began,
        grace_s=grace_s,
    )


class LiveHistory(Protocol):
    """Each user's most recent events (oldest first), capped at ``cap`` events per user."""

    cap: int

    def append(self, user_id: int, events: np.ndarray) -> None: ...

    def get(self, user_ids: Sequence[int]) -> list[np.ndarray]: ...


def as_events(events: np.ndarray) -> np.ndarray:
    if events.dtype != HISTORY_EVENT:
        raise TypeError(
            f"history events need dtype model.contract.HISTORY_EVENT, not {events.dtype}"
        )
    return events


def in_time_order(events: np.ndarray, cap: int) -> np.ndarray:
    if len(events) == 0:
        return events
    return events[np.argsort(events["timestamp"], kind="stable")][-cap:]


class RedisHistory:
    """``argus:hist:<user>``: one packed event per list element, trimmed to ``cap`` and expiring
    ``ttl_s`` after the user's last event."""

    def __init__(
        self, client: RedisClient, *, cap: int = HISTORY_CAP, ttl_s: int = HISTORY_TTL_S
    ) -> None:
        self.client, self.cap, self.ttl_s = client, cap, ttl_s

    def append(self, user_id: int, events: np.ndarray) -> None:
        events = as_events(events)
        if len(events) == 0:
            return
        key = history_key(user_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(key, *(events[i : i + 1].tobytes() for i in range(len(events))))
        pipe.ltrim(key, -self.cap, -1)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def get(self, user_ids: Sequence[int]) -> list[np.ndarray]:
        pipe = self.client.pipeline(transaction=False)
        for user in user_ids:
            pipe.lrange(history_key(int(user)), 0, -1)
        out = []
        for user, items in zip(user_ids, pipe.execute(), strict=True):
            if any(len(item) != HISTORY_EVENT.itemsize for item in items):
                raise CorruptValue(
                    f"live history of user {user} holds entries that are not "
                    f"{HISTORY_EVENT.itemsize}-byte events"
                )
            out.append(in_time_order(np.frombuffer(b"".join(items), HISTORY_EVENT), self.cap))
        return out


class LocalHistory:
    """The embedded equivalent of :class:`RedisHistory`, in this process's memory: at most
    ``cap`` events per user and ``max_users`` users (the least recently written is forgotten,
    as Redis's TTL forgets an idle user)."""

    def __init__(self, *, cap: int = HISTORY_CAP, max_users: int = HISTORY_MAX_USERS) -> None:
        self.cap, self.max_users = cap, max_users
        self._events: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def append(self, user_id: int, events: np.ndarray) -> None:
        events = as_events(events)
        with self._lock:
            old = self._events.pop(user_id, np.empty(0, dtype=HISTORY_EVENT))
            self._events[user_id] = np.concatenate([old, events])[-self.cap :]
            while len(self._events) > self.max_users:
                self._events.popitem(last=False)

    def __len__(self) -> int:
        return len(self._events)

    def get(self, user_ids: Sequence[int]) -> list[np.ndarray]:
        empty = np.empty(0, dtype=HISTORY_EVENT)
        with self._lock:
            stored = [self._events.get(int(user), empty) for user in user_ids]
        return [in_time_order(events, self.cap) for events in stored]
