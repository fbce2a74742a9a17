"""A synthetic music-streaming service whose logs make ARGUS's ideas matter.

The generative story, in the order the code follows it:

* **Catalog** (:class:`SimCatalog`). ``n_genres`` genre centres in a ``latent_dim`` space;
  artists scattered around their genre's centre; items (tracks) scattered around their artist's.
  Item popularity is Zipf-like (``rank ** -zipf_exponent`` over a random ranking) and a quality
  bias correlated with popularity.
* **Users.** A taste mixture over genres (sparse Dirichlet) that drifts linearly from
  ``taste_start`` to ``taste_end`` over the simulated period, a personal offset in latent space, a
  heavy-tailed activity rate and a preferred hour of day. Sessions follow a weekly cycle (weekends
  busier) and a daily one around the user's preferred hour; a session has one source.
* **Personal pool** ("radio"): every ``pool_refresh_days`` each user's pool is refilled with the
  ``pool_size`` items of highest true affinity among ``pool_draws`` items drawn uniformly from
  genres of their current taste. It is what makes personal taste, not popularity, decide most of
  what a user plays (the oracle's recall of new-to-the-user items is over 2x MostPop's; a test
  pins it).
* **Organic sessions** (``source = 0``): each event replays an item from the user's library of liked
  items, picks an item of a liked artist, or discovers: mostly from the pool
  (``discovery_pool_prob``), else the best of a few taste candidates (drawn within a genre
  ~ ``popularity ** taste_popularity_power``).
* **Recommendation surfaces** (``source = 1..n_surfaces``: feed, radio, playlists): the logging
  policy draws ``n_candidates`` candidates, some by popularity, some from the user's pool and the
  rest from the user's taste, and shows the best by a noisy blend of true affinity and popularity;
  each surface mixes differently. Next-item prediction can therefore learn to imitate the policy.
* **Feedback** comes from the true affinity ``a(u, i, t) = <u(t), v_i> / scale + b_i`` plus noise:
  full listens are more likely at high affinity, likes are rare (a few percent of events), dislikes
  rarer and mostly on recommended skips. Liked items join the user's library at the end of the day.

* **Moods** (off unless ``mood_strength`` > 0): every session draws a genre, and for that session
  the user's latent moves ``mood_strength`` of the way to the genre's centre; as large a share of
  the taste candidates (organic discovery, the policy's) comes from that genre, and the feedback
  follows the moved latent. A session's first events therefore show its mood, and what a user
  wants now differs from what they wanted yesterday. The truth records every session's mood.

Documented ranges (checked by the tests at default settings, and with ``mood_strength`` 0.3):
likes 1-8% of events, dislikes 0.1-2%, recommended share 40-75%.

Deviations from a real service, for speed: the library is updated once a day, not after each like;
a user never likes an item twice (replays of library items carry no like).

Everything is vectorised over the events of a chunk of users and a day, and each chunk of users
(sized for about 2M events) is written as its own Parquet row group, so memory is bounded whatever
the number of events. The ground truth (catalog and user parameters) is written to ``truth.npz``
beside ``events.parquet``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import zipfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from model.contract import DAY
from model.data.events import EVENT_SCHEMA, EVENTS_FILE, SKIP_THRESHOLD, Events
from model.progress import bar as tqdm

TRUTH_FILE = "truth.npz"
SUMMARY_FILE = "simulation.json"
WEEKDAY_ACTIVITY = np.array([0.9, 0.9, 0.92, 0.95, 1.1, 1.3, 1.2])  # Monday .. Sunday


@dataclass(frozen=True)
class SimConfig:
    n_users: int = 1_000
    n_items: int = 5_000
    n_days: int = 30
    seed: int = 0
    start_time: int = 1_767_571_200  # 2026-01-05 00:00 UTC; each day starts at midnight UTC
    # catalog
    n_genres: int = 24
    items_per_artist: float = 12.0  # mean number of tracks per artist
    latent_dim: int = 16
    zipf_exponent: float = (
        0.6  # item popularity ~ rank ** -zipf_exponent (top 1% of items: ~half the plays)
    )
    # users and sessions
    sessions_per_day: float = 0.7  # mean over users; per-user rates are log-normal around it
    activity_sigma: float = 1.0  # spread of log activity across users
    taste_concentration: float = (
        0.3  # Dirichlet concentration of the genre mixture (small = focused)
    )
    taste_drift: float = 0.4  # share of the taste mixture replaced by a new one over the period
    session_length: float = 8.0  # mean events per session (geometric)
    max_session_length: int = 60
    # sources
    organic_share: float = 0.4  # share of sessions the user starts (source 0)
    surface_share: tuple[float, ...] = (0.5, 0.3, 0.2)  # feed, radio, playlists among the rest
    surface_popularity: tuple[float, ...] = (0.2, 0.05, 0.3)  # share of popularity candidates
    policy_noise: float = 0.8  # noise of the policy's affinity estimate
    policy_popularity_weight: float = 0.1  # weight of standardised log-popularity in its score
    n_candidates: int = 8  # candidates the policy chooses among
    replay_prob: float = 0.35  # organic event: replay a liked item
    liked_artist_prob: float = 0.3  # organic event: pick another item of a liked artist
    n_discovery_candidates: int = 3  # organic discovery: best of this many by affinity
    taste_popularity_power: float = 0.3  # taste candidates are drawn ~ popularity ** this
    # personal pool ("radio"): the best pool_size of pool_draws taste candidates by true affinity,
    # redrawn every pool_refresh_days; discovery and the surfaces draw from it
    pool_size: int = 100  # 0: no pool
    pool_draws: int = 2_000
    pool_refresh_days: int = 10
    discovery_pool_prob: float = 0.9  # organic discovery: share taken from the pool
    surface_pool: tuple[float, ...] = (0.7, 0.9, 0.6)  # share of pool candidates per surface
    library_size: int = 256  # liked items remembered per user (most recent)
    # moods (off at 0): each session draws a genre, and for that session the user's latent moves
    # this share of the way to the genre's centre; the same share of the taste candidates (organic
    # discovery and the policy's) comes from that genre, and the feedback follows the mood
    mood_strength: float = 0.0
    # feedback: thresholds are quantiles of the (noisy) affinity of the items the policy shows,
    # measured on a reference sample of users, so the rates hold at any catalog size
    feedback_noise: float = 0.8  # per-event noise added to the true affinity
    full_listen_quantile: float = 0.3  # a full listen is a coin flip at this quantile
    like_quantile: float = 0.93  # a full listen is liked half the time at this quantile
    dislike_quantile: float = 0.003  # a skip is disliked half the time at this quantile
    # execution
    users_per_chunk: int = 0  # users simulated together, one row group; 0: about 2M events each
    workers: int = 0  # processes simulating chunks at once (same bytes); 0: one per CPU core

    def __post_init__(self) -> None:
        for name in (
            "n_users",
            "n_items",
            "n_days",
            "n_genres",
            "latent_dim",
            "n_candidates",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not len(self.surface_share) == len(self.surface_popularity) == len(self.surface_pool):
            raise ValueError(
                "surface_share, surface_popularity and surface_pool need one entry per surface"
            )
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: one per CPU core), got {self.workers}")
        if not 0.0 <= self.organic_share <= 1.0:
            raise ValueError(f"organic_share must be in [0, 1], got {self.organic_share}")
        if not 0.0 <= self.mood_strength <= 1.0:
            raise ValueError(f"mood_strength must be in [0, 1], got {self.mood_strength}")

    @property
    def n_surfaces(self) -> int:
        return len(self.surface_share)

    @property
    def chunk_users(self) -> int:
        """Users per chunk: as set, or enough for about 2M events (memory ~ events per chunk)."""
        if self.users_per_chunk > 0:
            return self.users_per_chunk
        events_per_user = self.n_days * self.sessions_per_day * self.session_length
        return int(np.clip(2_000_000 / max(events_per_user, 1e-9), 64, 65_536))


class CumulativeWeights:
    """A cumulative sum of item weights and ``searchsorted(cum, x, side="right")`` for many
    ``x`` at once through a guide table (Chen and Asau's indexed search): the table holds the
    answer at ``per_item`` evenly spaced points per item, so each search starts at most a
    step or two from its answer instead of bisecting the whole array. It returns exactly what
    ``np.searchsorted`` does, about 5x faster for the simulator's millions of draws."""

    def __init__(self, weights: np.ndarray, per_item: int = 8) -> None:
        self.cum = np.cumsum(weights)
        self._padded = np.append(self.cum, np.inf)  # a search past the end stops at len(cum)
        self._points = max(len(self.cum), 1) * per_item
        self._scale = self._points / self.cum[-1] if len(self.cum) else 0.0
        edges = np.arange(self._points + 1) / self._scale if len(self.cum) else np.zeros(1)
        self._guide = np.searchsorted(self.cum, edges, side="right")

    def search(self, x: np.ndarray) -> np.ndarray:
        """int64 ``np.searchsorted(self.cum, x, side="right")``, in ``x``'s shape."""
        shape, x = np.shape(x), np.ravel(x)
        at = np.clip(x * self._scale, 0, self._points).astype(np.int64)
        index = self._guide[at]
        cum = self._padded
        # The guide point at or below x counts the sums <= it; step up over those in between.
        # Rounding can put the point just above x: then step down instead (rare).
        up = np.flatnonzero(cum[index] <= x)
        while len(up):
            index[up] += 1
            up = up[cum[index[up]] <= x[up]]
        down = np.flatnonzero((index > 0) & (cum[index - 1] > x))
        while len(down):
            index[down] -= 1
            down = down[(index[down] > 0) & (cum[index[down] - 1] > x[down])]
        return index.reshape(shape)


@dataclass
class SimCatalog:
    """Items sorted by (genre, artist), so each genre and each artist is a contiguous row range."""

    item_ids: np.ndarray  # (M,) int64 external ids
    artist_ids: np.ndarray  # (M,) int64 external artist id of each item
    genre: np.ndarray  # (M,) int64
    artist: np.ndarray  # (M,) int64 artist index
    latent: np.ndarray  # (M, k) float32
    bias: np.ndarray  # (M,) float32
    popularity: np.ndarray  # (M,) float64, sums to 1
    track_length: np.ndarray  # (M,) int64 seconds
    genre_centers: np.ndarray  # (G, k) float32
    genre_range: np.ndarray = field(init=False)  # (G, 2) [start, end) rows
    artist_range: np.ndarray = field(init=False)  # (A, 2) [start, end) rows
    genre_start: np.ndarray = field(init=False)  # (G,) first row of each genre
    genre_size: np.ndarray = field(init=False)  # (G,) rows of each genre
    taste_power: float = 1.0  # taste candidates are drawn ~ popularity ** taste_power
    cum_popularity: CumulativeWeights = field(init=False)  # of popularity
    cum_taste: CumulativeWeights = field(init=False)  # of popularity ** taste_power
    log_popularity_z: np.ndarray = field(init=False)  # (M,) float32, standardised log popularity
    minus_latent_t: np.ndarray = field(init=False)  # (k, M) float32, -latent.T (pool scoring)
    minus_bias: np.ndarray = field(init=False)  # (M,) float32

    def __post_init__(self) -> None:
        n_genres, n_artists = len(self.genre_centers), int(self.artist.max()) + 1
        self.genre_range = _ranges(self.genre, n_genres)
        self.artist_range = _ranges(self.artist, n_artists)
        empty = self.genre_range[:, 0] == self.genre_range[:, 1]  # such a genre: any item
        self.genre_start = np.where(empty, 0, self.genre_range[:, 0])
        self.genre_size = np.where(
            empty, len(self.item_ids), np.diff(self.genre_range, axis=1)[:, 0]
        )
        self.cum_popularity = CumulativeWeights(self.popularity)
        self.cum_taste = CumulativeWeights(self.popularity**self.taste_power)
        self.log_popularity_z = _zscore(np.log(self.popularity)).astype(np.float32)
        self.minus_latent_t = np.ascontiguousarray(-self.latent.T)
        self.minus_bias = -self.bias

    def sample_in_range(
        self,
        rng: np.random.Generator,
        start: np.ndarray,
        end: np.ndarray,
        cum: CumulativeWeights,
        where: np.ndarray | None = None,
    ) -> np.ndarray:
        """One item per (start, end) row range, drawn proportionally to the weights ``cum``
        sums (:attr:`cum_popularity` or :attr:`cum_taste`). With a mask
        ``where``, only those entries are drawn (the rest are -1), from the same random numbers
        a full draw takes: the stream, and so the data, do not depend on the mask."""
        u = rng.random(start.shape)
        if where is not None:
            out = np.full(start.shape, -1, dtype=np.int64)
            out[where] = self.sample_in_range_of(u[where], start[where], end[where], cum)
            return out
        return self.sample_in_range_of(u, start, end, cum)

    @staticmethod
    def sample_in_range_of(
        u: np.ndarray, start: np.ndarray, end: np.ndarray, weights: CumulativeWeights
    ) -> np.ndarray:
        """:meth:`sample_in_range` given its uniform numbers ``u``."""
        cum = weights.cum
        low = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
        draw = low + u * (cum[end - 1] - low)
        return np.clip(weights.search(draw), start, end - 1)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def _ranges(sorted_keys: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) [start, end) of each key value in a sorted key array (empty ranges allowed)."""
    keys = np.arange(n)
    return np.stack(
        [np.searchsorted(sorted_keys, keys, "left"), np.searchsorted(sorted_keys, keys, "right")], 1
    )


def make_catalog(cfg: SimConfig, rng: np.random.Generator) -> SimCatalog:
    g, k, m = cfg.n_genres, cfg.latent_dim, cfg.n_items
    n_artists = max(g, round(m / cfg.items_per_artist))
    genre_centers = rng.standard_normal((g, k)).astype(np.float32)
    artist_genre = np.concatenate([np.arange(g), rng.integers(g, size=n_artists - g)])
    artist_center = genre_centers[artist_genre] + 0.7 * rng.standard_normal((n_artists, k))
    artist_weight = rng.lognormal(0.0, 1.0, n_artists)
    item_artist = rng.choice(n_artists, size=m, p=artist_weight / artist_weight.sum())
    # Renumber artists by (genre, artist) so that sorting items by artist also groups genres.
    artist_order = np.lexsort((np.arange(n_artists), artist_genre))
    artist_rank = np.empty(n_artists, dtype=np.int64)
    artist_rank[artist_order] = np.arange(n_artists)
    item_artist = np.sort(artist_rank[item_artist])
    artist_genre, artist_center = artist_genre[artist_order], artist_center[artist_order]
    latent = artist_center[item_artist] + 0.5 * rng.standard_normal((m, k))
    popularity = (rng.permutation(m) + 1.0) ** -cfg.zipf_exponent
    popularity /= popularity.sum()
    bias = 0.3 * _zscore(np.log(popularity)) + 0.3 * rng.standard_normal(m)
    track_length = np.clip(rng.lognormal(np.log(210.0), 0.3, m), 60, 900).astype(np.int64)
    return SimCatalog(
        taste_power=cfg.taste_popularity_power,
        item_ids=(rng.permutation(m) + 1).astype(np.int64),
        artist_ids=(rng.permutation(n_artists) + 1).astype(np.int64)[item_artist],
        genre=artist_genre[item_artist].astype(np.int64),
        artist=item_artist,
        latent=latent.astype(np.float32),
        bias=bias.astype(np.float32),
        popularity=popularity,
        track_length=track_length,
        genre_centers=genre_centers,
    )


@dataclass
class Users:
    taste_start: np.ndarray  # (U, G) float32 genre mixture at the start of the period
    taste_end: np.ndarray  # (U, G) float32 genre mixture at its end
    offset: np.ndarray  # (U, k) float32 personal offset in latent space
    activity: np.ndarray  # (U,) float32 mean sessions per day
    peak_hour: np.ndarray  # (U,) float32 preferred hour of day

    def taste(self, fraction: float | np.ndarray) -> np.ndarray:
        """(U, G) genre mixture at ``fraction`` (0..1, scalar or (U, 1)) of the period."""
        return (1.0 - fraction) * self.taste_start + fraction * self.taste_end

    def latent(self, genre_centers: np.ndarray, fraction: float | np.ndarray) -> np.ndarray:
        """(U, k) latent vector at ``fraction`` of the simulated period."""
        return self.taste(fraction) @ genre_centers + self.offset


def period_fraction(day: int | np.ndarray, n_days: int) -> float | np.ndarray:
    """Where the middle of ``day`` (0-based) lies in the period: tastes move once a day."""
    return (day + 0.5) / n_days


def make_users(cfg: SimConfig, rng: np.random.Generator, n: int) -> Users:
    alpha = np.full(cfg.n_genres, cfg.taste_concentration)
    start = rng.dirichlet(alpha, size=n)
    end = (1.0 - cfg.taste_drift) * start + cfg.taste_drift * rng.dirichlet(alpha, size=n)
    sigma = cfg.activity_sigma
    return Users(
        taste_start=start.astype(np.float32),
        taste_end=end.astype(np.float32),
        offset=(0.5 * rng.standard_normal((n, cfg.latent_dim))).astype(np.float32),
        activity=(cfg.sessions_per_day * rng.lognormal(-0.5 * sigma**2, sigma, n)).astype(
            np.float32
        ),
        peak_hour=((20.0 + 3.0 * rng.standard_normal(n)) % 24.0).astype(np.float32),
    )


def affinity_scale(cfg: SimConfig, catalog: SimCatalog, rng: np.random.Generator) -> float:
    """Standard deviation of ``<u, v>`` over random (user, item) pairs: the affinity's unit."""
    users = make_users(cfg, rng, 2_000)
    u = users.latent(catalog.genre_centers, 0.5)
    items = rng.integers(len(catalog.item_ids), size=(2_000, 16))
    return float(np.einsum("uk,uck->uc", u, catalog.latent[items]).std())


@dataclass
class _Chunk:
    """The state of one chunk of users across the simulated days."""

    users: Users
    latent_scaled: np.ndarray  # (U, k) today's latent / affinity scale
    taste_cum: np.ndarray  # (U, G) today's cumulative genre mixture
    taste_search: np.ndarray  # (U * G,) float64 taste_cum + 2 * user row, one ascending array
    library: np.ndarray  # (U, library_size) int64 liked item rows, ring buffer
    library_count: np.ndarray  # (U,) int64 likes so far
    pool: np.ndarray  # (U, pool_size) int64 item rows of each user's personal pool


# One chunk of users: its events, the users, and with moods every session's mood.
ChunkResult = tuple[Events, Users, dict[str, np.ndarray] | None]


class Simulator:
    """``Simulator(cfg).run(out_dir)`` writes ``events.parquet``, ``truth.npz`` and a summary."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        root = np.random.SeedSequence(cfg.seed)
        catalog_seed, calibration_seed = root.spawn(2)
        self.catalog = make_catalog(cfg, np.random.default_rng(catalog_seed))
        rng = np.random.default_rng(calibration_seed)
        self.scale = affinity_scale(cfg, self.catalog, rng)
        self.mood_centers = (self.catalog.genre_centers / self.scale).astype(np.float32)
        self.thresholds = self._calibrate(rng)

    def _calibrate(
        self, rng: np.random.Generator, n_users: int = 2_000, per_user: int = 8
    ) -> dict[str, float]:
        """Feedback thresholds: quantiles of the noisy affinity of items the policy shows to a
        reference sample of users halfway through the period."""
        cfg = self.cfg
        state = self._new_chunk(make_users(cfg, rng, n_users))
        self._set_day(state, cfg.n_days // 2, rng)
        user = np.repeat(np.arange(n_users), per_user)
        source = 1 + rng.choice(cfg.n_surfaces, len(user), p=self._surface_p)
        mood = rng.integers(cfg.n_genres, size=len(user)) if cfg.mood_strength else None
        item = self._policy_items(rng, state, user, source, mood)
        noise = cfg.feedback_noise * rng.standard_normal(len(item))
        z = self._affinity(state, user, item, mood) + noise
        full, like, dislike = np.quantile(
            z, [cfg.full_listen_quantile, cfg.like_quantile, cfg.dislike_quantile]
        )
        return {"full_listen": float(full), "like": float(like), "dislike": float(dislike)}

    @property
    def _surface_p(self) -> np.ndarray:
        share = np.asarray(self.cfg.surface_share, dtype=np.float64)
        return share / share.sum()

    def _new_chunk(self, users: Users) -> _Chunk:
        cfg, n = self.cfg, len(users.activity)
        return _Chunk(
            users=users,
            latent_scaled=np.empty((n, cfg.latent_dim), np.float32),
            taste_cum=np.empty((n, cfg.n_genres), np.float32),
            taste_search=np.empty(n * cfg.n_genres, np.float64),
            library=np.full((n, cfg.library_size), -1, dtype=np.int64),
            library_count=np.zeros(n, dtype=np.int64),
            pool=np.zeros((n, cfg.pool_size), dtype=np.int64),
        )

    def _set_day(self, state: _Chunk, day: int, rng: np.random.Generator) -> None:
        """Move the chunk's users' taste to the middle of ``day``; redraw their pools when due."""
        cfg = self.cfg
        fraction = period_fraction(day, cfg.n_days)
        state.latent_scaled[:] = (
            state.users.latent(self.catalog.genre_centers, fraction) / self.scale
        )
        state.taste_cum[:] = np.cumsum(state.users.taste(fraction), axis=1)
        rows = 2.0 * np.arange(len(state.taste_cum))[:, None]  # each row's sums lie in [0, 2)
        state.taste_search[:] = (state.taste_cum + rows).ravel()  # exact in float64
        if cfg.pool_size and (day % cfg.pool_refresh_days == 0 or not state.pool.any()):
            self._draw_pools(rng, state)

    def _draw_pools(
        self, rng: np.random.Generator, state: _Chunk, batch: int = 1_024, block: int = 32
    ) -> None:
        """Each user's pool: the ``pool_size`` best of ``pool_draws`` taste candidates by true
        affinity today. Drawn ``batch`` users at a time (the random stream), scored ``block``
        at a time: a (block, M) affinity matrix stays in the CPU's cache for the gather, about
        4x faster than one (batch, M) matrix at M = 20,000, and the same pools."""
        cfg, catalog = self.cfg, self.catalog
        if not cfg.pool_size:
            return
        for begin in range(0, len(state.pool), batch):
            user = np.arange(begin, min(begin + batch, len(state.pool)))
            draws = self._genre_uniform(rng, state, user, cfg.pool_draws)
            for first in range(0, len(user), block):
                rows, drawn = user[first : first + block], draws[first : first + block]
                # minus the affinity (negating the items is exact), gathered by flat index
                minus = state.latent_scaled[rows] @ catalog.minus_latent_t  # (block, M): BLAS
                flat = drawn + (len(catalog.bias) * np.arange(len(rows)))[:, None]
                minus = np.take(minus, flat) + np.take(catalog.minus_bias, drawn)
                best = np.argpartition(minus, cfg.pool_size - 1, axis=1)[:, : cfg.pool_size]
                best += (drawn.shape[1] * np.arange(len(rows)))[:, None]
                state.pool[rows] = np.take(drawn, best)

    def _genre_uniform(
        self, rng: np.random.Generator, state: _Chunk, user: np.ndarray, n: int
    ) -> np.ndarray:
        """(U, n) item rows: genres drawn from each user's taste, items uniform within them."""
        taste = np.diff(state.taste_cum[user], axis=1, prepend=0.0).clip(min=0)
        taste /= taste.sum(1, keepdims=True)
        counts = rng.multinomial(n, taste.astype(np.float64)).ravel()  # draws per user x genre
        catalog = self.catalog  # each draw's genre start and size, repeated (not gathered)
        start = np.repeat(np.tile(catalog.genre_start, len(user)), counts).reshape(-1, n)
        size = np.repeat(np.tile(catalog.genre_size, len(user)), counts).reshape(-1, n)
        offset = rng.random(size.shape, dtype=np.float32) * size
        return start + offset.astype(np.int64)

    def _from_pool(
        self, rng: np.random.Generator, state: _Chunk, user: np.ndarray, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Items drawn uniformly from each user's pool: ``shape`` = (len(user), ...)."""
        column = rng.integers(self.cfg.pool_size, size=shape)
        return state.pool[user.reshape((-1,) + (1,) * (len(shape) - 1)), column]

    def _latent(self, state: _Chunk, user: np.ndarray, mood: np.ndarray | None) -> np.ndarray:
        """(E, k) the users' scaled latents today, moved ``mood_strength`` of the way to their
        session's mood genre when there is one."""
        latent = state.latent_scaled[user]
        if mood is None:
            return latent
        s = self.cfg.mood_strength
        return ((1.0 - s) * latent + s * self.mood_centers[mood]).astype(np.float32)

    def _affinity(
        self, state: _Chunk, user: np.ndarray, item: np.ndarray, mood: np.ndarray | None = None
    ) -> np.ndarray:
        """(E,) true affinity of each (chunk user, item row) pair today (in the session's mood)."""
        latent = self.catalog.latent[item]
        user_latent = self._latent(state, user, mood)
        return np.einsum("ek,ek->e", user_latent, latent) + self.catalog.bias[item]

    def run(self, out: str | Path, *, progress: bool = True) -> SimulationSummary:
        cfg = self.cfg
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        n_chunks = -(-cfg.n_users // cfg.chunk_users)
        chunk_seeds = np.random.SeedSequence([cfg.seed, 1]).spawn(n_chunks)
        user_parts: list[Users] = []
        mood_parts: list[dict[str, np.ndarray]] = []
        totals = np.zeros(4, dtype=np.int64)  # events, liked, disliked, recommended
        tmp = out / (EVENTS_FILE + ".partial")
        with (
            pq.ParquetWriter(tmp, EVENT_SCHEMA, compression="zstd") as writer,
            tqdm(total=cfg.n_users, unit="user", desc="simulate", disable=not progress) as bar,
        ):
            for events, users, moods in self._chunks(chunk_seeds):
                n = len(users.activity)
                if moods is not None:
                    mood_parts.append(moods)
                writer.write_table(events.to_table(), row_group_size=max(len(events), 1))
                user_parts.append(users)
                totals += [
                    len(events),
                    events.liked.sum(),
                    events.disliked.sum(),
                    (events.source > 0).sum(),
                ]
                bar.update(n)
                bar.set_postfix(events=f"{totals[0]:,}")
        tmp.replace(out / EVENTS_FILE)
        elapsed = time.perf_counter() - began
        self._write_truth(out / TRUTH_FILE, user_parts, mood_parts)
        n_events = int(totals[0])
        summary = SimulationSummary(
            events=n_events,
            users=cfg.n_users,
            items=cfg.n_items,
            like_rate=float(totals[1] / max(n_events, 1)),
            dislike_rate=float(totals[2] / max(n_events, 1)),
            recommended_share=float(totals[3] / max(n_events, 1)),
            seconds=elapsed,
        )
        (out / SUMMARY_FILE).write_text(
            json.dumps({"config": asdict(cfg), "summary": asdict(summary)}, indent=2) + "\n"
        )
        return summary

    def _chunks(self, seeds: list[np.random.SeedSequence]) -> Iterator[ChunkResult]:
        """Each chunk's events and users, in order. Chunks are independent (each has its own
        seed), so with several chunks and cores they are simulated in worker processes, at most
        two per worker ahead of the writer (memory stays bounded); the bytes are the same."""
        workers = min(self.cfg.workers or os.cpu_count() or 1, len(seeds))
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            yield from (self._chunk(index, seed) for index, seed in enumerate(seeds))
            return
        # fork: works from any caller (a notebook, stdin), where spawn needs an importable main;
        # the workers only run numpy, whose BLAS sets up its threads again after a fork
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_adopt, initargs=(self,)
        ) as pool:
            ahead: deque[Future[ChunkResult]] = deque()
            for index, seed in enumerate(seeds):
                ahead.append(pool.submit(_chunk_of_adopted, index, seed))
                if len(ahead) >= 2 * workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

    def _chunk(self, index: int, seed: np.random.SeedSequence) -> ChunkResult:
        cfg = self.cfg
        first = index * cfg.chunk_users
        rng = np.random.default_rng(seed)
        users = make_users(cfg, rng, min(cfg.chunk_users, cfg.n_users - first))
        events, moods = self._simulate_chunk(rng, users, first_user_id=first + 1)
        return events, users, moods

    # -- one chunk of users over all days ---------------------------------------------------------

    def _simulate_chunk(
        self, rng: np.random.Generator, users: Users, first_user_id: int
    ) -> tuple[Events, dict[str, np.ndarray] | None]:
        """The chunk's events, and with moods each session's user, start, end and mood genre."""
        cfg = self.cfg
        state = self._new_chunk(users)
        days = [self._simulate_day(rng, state, day) for day in range(cfg.n_days)]
        sess_user = np.concatenate([d["sess_user"] for d in days])
        sess_start = np.concatenate([d["sess_start"] for d in days])
        sess_duration = np.concatenate([d["sess_duration"] for d in days])
        ev = {
            key: np.concatenate([d[key] for d in days]) for key in days[0] if key.startswith("ev_")
        }
        sess_offset = np.cumsum([0] + [len(d["sess_user"]) for d in days[:-1]])
        ev_sess = ev.pop("ev_sess") + np.repeat(sess_offset, [len(d["ev_sess"]) for d in days])

        # Sessions of one user must not overlap: with c_j the running sum of (duration + gap) over
        # the user's earlier sessions, start'_j = c_j + max_{i<=j} (start_i - c_i), an exact
        # segmented running maximum (an offset per user keeps users apart).
        order = np.lexsort((sess_start, sess_user))
        user, start, duration = sess_user[order], sess_start[order], sess_duration[order] + 30
        c = np.cumsum(duration) - duration
        x = start - c
        lift = (x.max() - x.min() + 1) * user if len(x) else x
        fixed = np.maximum.accumulate(x + lift) - lift + c
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        session_start = np.empty_like(sess_start)
        session_start[order] = fixed

        event_order = np.argsort(rank[ev_sess], kind="stable")  # events keep their in-session order
        timestamp = (session_start[ev_sess] + ev["ev_within"])[event_order]
        item = ev["ev_item"][event_order]
        moods = None
        if cfg.mood_strength:
            moods = {
                "session_user": sess_user + first_user_id,
                "session_start": session_start,
                "session_end": session_start + sess_duration,
                "session_mood": np.concatenate([d["sess_mood"] for d in days]),
            }
        return Events.from_arrays(
            user_id=sess_user[ev_sess][event_order] + first_user_id,
            item_id=self.catalog.item_ids[item],
            timestamp=timestamp,
            source=ev["ev_source"][event_order],
            artist_id=self.catalog.artist_ids[item],
            played_ratio=ev["ev_ratio"][event_order],
            liked=ev["ev_liked"][event_order],
            disliked=ev["ev_disliked"][event_order],
        ), moods

    def _simulate_day(
        self, rng: np.random.Generator, state: _Chunk, day: int
    ) -> dict[str, np.ndarray]:
        cfg, catalog, users = self.cfg, self.catalog, state.users
        self._set_day(state, day, rng)

        # Sessions: count, start hour, length, source.
        weekday = (cfg.start_time // DAY + day + 3) % 7  # 1970-01-01 was a Thursday
        n_sessions = rng.poisson(users.activity * WEEKDAY_ACTIVITY[weekday])
        sess_user = np.repeat(np.arange(len(n_sessions)), n_sessions)  # (S,)
        hour = (users.peak_hour[sess_user] + 3.5 * rng.standard_normal(len(sess_user))) % 24.0
        sess_start = cfg.start_time + day * DAY + (hour * 3600.0).astype(np.int64)
        sess_len = np.minimum(
            rng.geometric(1.0 / cfg.session_length, len(sess_user)), cfg.max_session_length
        )
        surface = 1 + rng.choice(cfg.n_surfaces, len(sess_user), p=self._surface_p)
        sess_source = np.where(rng.random(len(sess_user)) < cfg.organic_share, 0, surface)
        # drawn only with moods on, so a world without them keeps its random stream
        sess_mood = rng.integers(cfg.n_genres, size=len(sess_user)) if cfg.mood_strength else None

        # Events: one row per position of each session.
        ev_sess = np.repeat(np.arange(len(sess_user)), sess_len)  # (E,)
        ev_user = sess_user[ev_sess]
        ev_source = sess_source[ev_sess]
        ev_mood = None if sess_mood is None else sess_mood[ev_sess]

        def of(rows: np.ndarray) -> np.ndarray | None:
            return None if ev_mood is None else ev_mood[rows]

        item = np.empty(len(ev_sess), dtype=np.int64)
        replay = np.zeros(len(ev_sess), dtype=bool)
        organic = np.flatnonzero(ev_source == 0)
        item[organic], replay[organic] = self._organic_items(
            rng, state, ev_user[organic], of(organic)
        )
        shown = np.flatnonzero(ev_source > 0)
        item[shown] = self._policy_items(rng, state, ev_user[shown], ev_source[shown], of(shown))

        # Feedback from the true affinity.
        th = self.thresholds
        z = self._affinity(
            state, ev_user, item, ev_mood
        ) + cfg.feedback_noise * rng.standard_normal(len(item))
        full = rng.random(len(item)) < _sigmoid(2.0 * (z - th["full_listen"]))
        replayed_parts = full & (rng.random(len(item)) < 0.03)
        ratio = np.where(
            full, 1.0 + replayed_parts * rng.random(len(item)), 0.95 * rng.beta(0.6, 1.5, len(item))
        )
        liked = full & ~replay & (rng.random(len(item)) < _sigmoid(3.0 * (z - th["like"])))
        skipped = ratio < SKIP_THRESHOLD
        disliked = skipped & (rng.random(len(item)) < _sigmoid(3.0 * (th["dislike"] - z)))
        liked &= ~self._in_library(state, ev_user, item, liked)
        self._add_to_library(state, ev_user[liked], item[liked])

        # Time: each event lasts what was played of the track, plus a short gap.
        duration = np.maximum(
            1, (catalog.track_length[item] * np.minimum(ratio, 1.0)).astype(np.int64)
        )
        duration += rng.integers(1, 6, len(item))
        ends = np.cumsum(duration)
        first_of_session = np.cumsum(sess_len) - sess_len
        within = ends - duration - (ends - duration)[first_of_session][ev_sess]
        sess_duration = (
            np.add.reduceat(duration, first_of_session) if len(item) else np.zeros(0, np.int64)
        )
        out = {
            "sess_user": sess_user,
            "sess_start": sess_start,
            "sess_duration": sess_duration,
            "ev_sess": ev_sess,
            "ev_within": within,
            "ev_item": item,
            "ev_source": ev_source.astype(np.int16),
            "ev_ratio": ratio.astype(np.float32),
            "ev_liked": liked,
            "ev_disliked": disliked,
        }
        if sess_mood is not None:
            out["sess_mood"] = sess_mood
        return out

    def _organic_items(
        self,
        rng: np.random.Generator,
        state: _Chunk,
        user: np.ndarray,
        mood: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Items the users pick themselves, and which of them are replays of liked items."""
        cfg, catalog = self.cfg, self.catalog
        count = np.minimum(state.library_count[user], cfg.library_size)
        has_library = count > 0
        mode = rng.random(len(user))
        replay = has_library & (mode < cfg.replay_prob)
        by_artist = has_library & ~replay & (mode < cfg.replay_prob + cfg.liked_artist_prob)
        from_library = state.library[
            user, (rng.random(len(user)) * np.maximum(count, 1)).astype(np.int64)
        ]
        item = self._taste_candidates(
            rng, state, user, cfg.n_discovery_candidates, popular=None, mood=mood
        )
        item = self._best_by_affinity(
            rng, state, user, item, noise=0.5, popularity_weight=0.0, mood=mood
        )
        if cfg.pool_size:
            pooled = rng.random(len(user)) < cfg.discovery_pool_prob
            item[pooled] = self._from_pool(rng, state, user[pooled], (int(pooled.sum()),))
        item[replay] = from_library[replay]
        artist = catalog.artist[from_library[by_artist]]
        start, end = catalog.artist_range[artist].T
        item[by_artist] = catalog.sample_in_range(rng, start, end, catalog.cum_taste)
        return item, replay

    def _policy_items(
        self,
        rng: np.random.Generator,
        state: _Chunk,
        user: np.ndarray,
        source: np.ndarray,
        mood: np.ndarray | None = None,
    ) -> np.ndarray:
        """Items the recommendation surfaces show: the logging policy."""
        cfg = self.cfg
        popular = (
            rng.random((len(user), cfg.n_candidates))
            < np.asarray(cfg.surface_popularity)[source - 1, None]
        )
        candidates = self._taste_candidates(
            rng, state, user, cfg.n_candidates, popular=popular, mood=mood
        )
        if cfg.pool_size:
            pooled = ~popular & (
                rng.random(popular.shape) < np.asarray(cfg.surface_pool)[source - 1, None]
            )
            candidates = np.where(
                pooled, self._from_pool(rng, state, user, candidates.shape), candidates
            )
        return self._best_by_affinity(
            rng,
            state,
            user,
            candidates,
            noise=cfg.policy_noise,
            popularity_weight=cfg.policy_popularity_weight,
            mood=mood,
        )

    def _taste_candidates(
        self,
        rng: np.random.Generator,
        state: _Chunk,
        user: np.ndarray,
        n: int,
        popular: np.ndarray | None,
        mood: np.ndarray | None = None,
    ) -> np.ndarray:
        """(E, n) candidate rows: by popularity where ``popular``, else from a genre of the
        user's taste (~ popularity ** taste power); with a ``mood``, that share of them from the
        mood's genre."""
        catalog = self.catalog
        draw = rng.random((len(user), n), dtype=np.float32)
        # The genre: how many of the user's cumulative shares lie below the draw, counted by one
        # binary search over every user's shares at once (exactly the float32 comparisons).
        lift = 2.0 * user[:, None]
        genre = np.searchsorted(state.taste_search, draw + lift, side="left")  # (E, n)
        genre -= self.cfg.n_genres * user[:, None]
        genre = np.minimum(genre, self.cfg.n_genres - 1)
        if mood is not None:
            moody = rng.random(genre.shape, dtype=np.float32) < self.cfg.mood_strength
            genre = np.where(moody, mood[:, None], genre)
        start, end = catalog.genre_range[genre, 0], catalog.genre_range[genre, 1]
        if popular is not None:
            start = np.where(popular, 0, start)
            end = np.where(popular, len(catalog.item_ids), end)
        empty = start == end  # a genre with no items: fall back to the whole catalog
        start, end = np.where(empty, 0, start), np.where(empty, len(catalog.item_ids), end)
        if popular is None:
            return catalog.sample_in_range(rng, start, end, catalog.cum_taste)
        by_taste = catalog.sample_in_range(rng, start, end, catalog.cum_taste, ~popular)
        by_popularity = catalog.sample_in_range(rng, start, end, catalog.cum_popularity, popular)
        return np.where(popular, by_popularity, by_taste)

    def _best_by_affinity(
        self,
        rng: np.random.Generator,
        state: _Chunk,
        user: np.ndarray,
        candidates: np.ndarray,
        *,
        noise: float,
        popularity_weight: float,
        mood: np.ndarray | None = None,
    ) -> np.ndarray:
        """(E,) the candidate with the highest noisy affinity (+ popularity) score per row."""
        catalog = self.catalog
        latent = self._latent(state, user, mood)
        score = np.einsum("ek,eck->ec", latent, catalog.latent[candidates])
        score += catalog.bias[candidates] + popularity_weight * catalog.log_popularity_z[candidates]
        score += noise * rng.standard_normal(score.shape, dtype=np.float32)
        return candidates[np.arange(len(user)), score.argmax(1)]

    @staticmethod
    def _in_library(
        state: _Chunk, user: np.ndarray, item: np.ndarray, where: np.ndarray
    ) -> np.ndarray:
        """(E,) bool: the item is already in the user's library (checked only where ``where``)."""
        out = np.zeros(len(item), dtype=bool)
        index = np.flatnonzero(where)
        out[index] = (state.library[user[index]] == item[index, None]).any(1)
        return out

    def _add_to_library(self, state: _Chunk, user: np.ndarray, item: np.ndarray) -> None:
        """Append liked items to the users' ring buffers (``user`` is sorted)."""
        if not len(user):
            return
        first = np.searchsorted(user, user, side="left")
        position = state.library_count[user] + np.arange(len(user)) - first
        state.library[user, position % self.cfg.library_size] = item
        state.library_count += np.bincount(user, minlength=len(state.library_count))

    def _write_truth(
        self, path: Path, parts: list[Users], moods: list[dict[str, np.ndarray]]
    ) -> None:
        catalog = self.catalog
        arrays: dict[str, np.ndarray | np.generic] = {
            "item_ids": catalog.item_ids,
            "item_artist_ids": catalog.artist_ids,
            "item_genre": catalog.genre,
            "item_latent": catalog.latent,
            "item_bias": catalog.bias,
            "item_popularity": catalog.popularity,
            "item_track_length": catalog.track_length,
            "genre_centers": catalog.genre_centers,
            "user_ids": np.arange(1, self.cfg.n_users + 1, dtype=np.int64),
            "user_taste_start": np.concatenate([u.taste_start for u in parts]),
            "user_taste_end": np.concatenate([u.taste_end for u in parts]),
            "user_offset": np.concatenate([u.offset for u in parts]),
            "user_activity": np.concatenate([u.activity for u in parts]),
            "affinity_scale": np.float64(self.scale),
            "feedback_thresholds": np.array(
                [self.thresholds[k] for k in ("full_listen", "like", "dislike")]
            ),
            "start_time": np.int64(self.cfg.start_time),
            "n_days": np.int64(self.cfg.n_days),
        }
        if moods:  # every session's mood, sorted by user and start
            merged = {k: np.concatenate([m[k] for m in moods]) for k in moods[0]}
            order = np.lexsort((merged["session_start"], merged["session_user"]))
            arrays |= {k: v[order] for k, v in merged.items()}
            arrays["mood_strength"] = np.float64(self.cfg.mood_strength)
        save_npz(path, arrays)


@dataclass(frozen=True)
class SimulationSummary:
    events: int
    users: int
    items: int
    like_rate: float  # likes per event (every simulated event is a listen)
    dislike_rate: float
    recommended_share: float  # share of events with source > 0
    seconds: float

    def line(self) -> str:
        return (
            f"simulated {self.events:,} events · {self.users:,} users · {self.items:,} items · "
            f"like rate {self.like_rate:.1%} · dislike rate {self.dislike_rate:.2%} · "
            f"recommended {self.recommended_share:.1%} · "
            f"{self.events / max(self.seconds, 1e-9):,.0f} events/s · {self.seconds:.1f} s"
        )


_adopted: list[Simulator] = []  # a worker process's simulator (set once by its initializer)


def _adopt(simulator: Simulator) -> None:
    # One BLAS thread per worker: the workers already fill the cores, and BLAS threads on top
    # of them made two workers slower than one (1.7x faster than one with this, on 2 cores).
    threadpool_limits(1)
    _adopted[:] = [simulator]


def _chunk_of_adopted(index: int, seed: np.random.SeedSequence) -> ChunkResult:
    return _adopted[0]._chunk(index, seed)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def save_npz(path: Path, arrays: dict[str, np.ndarray | np.generic]) -> None:
    """Like ``np.savez_compressed`` but byte-for-byte reproducible (fixed zip timestamps) and
    refusing object arrays (``allow_pickle=False``)."""
    tmp = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
    tmp.replace(path)


class Truth:
    """The simulator's ground truth, loaded from ``truth.npz`` (never unpickles)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / TRUTH_FILE
        with np.load(path, allow_pickle=False) as data:
            self.arrays = {name: data[name] for name in data.files}
        a = self.arrays
        self._item_row_lookup = np.full(int(a["item_ids"].max()) + 1, -1, dtype=np.int64)
        self._item_row_lookup[a["item_ids"]] = np.arange(len(a["item_ids"]))
        self.sorted_rows = np.argsort(a["item_ids"])  # truth rows in ascending item id order
        self.sorted_item_ids = a["item_ids"][self.sorted_rows]
        self.has_moods = "session_mood" in a

    def moods(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """(N,) the mood genre of the session each (user, time) falls in; -1 outside every
        session, or in a world without moods."""
        user_ids, timestamps = np.asarray(user_ids), np.asarray(timestamps)
        if not self.has_moods:
            return np.full(len(user_ids), -1, dtype=np.int64)
        a = self.arrays
        users, starts, ends = a["session_user"], a["session_start"], a["session_end"]
        # sessions are sorted by (user, start): the last one of the user starting at or before t
        span = int(max(ends.max(), timestamps.max(initial=0))) + 1
        keys = users * span + starts
        at = np.searchsorted(keys, user_ids * span + timestamps, side="right") - 1
        at = np.clip(at, 0, len(keys) - 1)
        inside = (users[at] == user_ids) & (starts[at] <= timestamps) & (timestamps <= ends[at])
        return np.where(inside, a["session_mood"][at], -1)

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """(N,) rows of the truth arrays for external item ids; raises KeyError for unknown ids."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        inside = (item_ids >= 0) & (item_ids < len(self._item_row_lookup))
        rows = np.where(inside, self._item_row_lookup[np.where(inside, item_ids, 0)], -1)
        if (rows < 0).any():
            raise KeyError(f"unknown item id {int(item_ids[np.flatnonzero(rows < 0)[0]])}")
        return rows

    def _users(self, user_ids: np.ndarray) -> Users:
        a = self.arrays
        user = np.asarray(user_ids, dtype=np.int64) - 1
        return Users(
            taste_start=a["user_taste_start"][user],
            taste_end=a["user_taste_end"][user],
            offset=a["user_offset"][user],
            activity=a["user_activity"][user],
            peak_hour=np.full(len(user), np.nan, dtype=np.float32),  # not part of the affinity
        )

    def _fraction(self, timestamps: np.ndarray) -> np.ndarray:
        a = self.arrays
        day = np.clip(
            (np.asarray(timestamps) - int(a["start_time"])) // DAY, 0, int(a["n_days"]) - 1
        )
        return np.asarray(period_fraction(day, int(a["n_days"])))

    def affinity_matrix(self, user_ids: np.ndarray, at: int) -> np.ndarray:
        """(U, M) true affinity of each user on the day of ``at`` to every item, columns in
        ascending item id order (:attr:`sorted_item_ids`)."""
        a = self.arrays
        latent = self._users(user_ids).latent(a["genre_centers"], self._fraction(np.asarray(at)))
        rows = self.sorted_rows
        scale = float(a["affinity_scale"])
        return (latent @ a["item_latent"][rows].T) / scale + a["item_bias"][rows]

    def affinity(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        timestamps: np.ndarray,
        *,
        mood: bool = True,
    ) -> np.ndarray:
        """(N,) true affinity ``<u(t), v_i> / scale + b_i`` of each (user, item, time) triple,
        with the user's taste of that day and (``mood``, in a world with moods) the mood of the
        session it falls in, exactly as the simulator drew feedback. ``mood=False``: the day's
        taste alone, what an oracle that knows everything but the session would use."""
        item = self.item_rows(item_ids)
        latent = self.user_latent(user_ids, timestamps)
        if mood and self.has_moods:
            genre = self.moods(user_ids, timestamps)
            moody = genre >= 0
            s = float(self.arrays["mood_strength"])
            centers = self.arrays["genre_centers"][genre[moody]]
            latent[moody] = (1.0 - s) * latent[moody] + s * centers
        dot = np.einsum("nk,nk->n", latent, self.item_latent(item))
        return dot + self.arrays["item_bias"][item]

    def user_latent(
        self, user_ids: np.ndarray, timestamps: np.ndarray, *, offset: bool = True
    ) -> np.ndarray:
        """(N, k) each user's latent vector on the day of each timestamp: the genre mixture's
        point plus (``offset``) the personal offset, which only the user's own feedback shows."""
        a = self.arrays
        users = self._users(user_ids)
        if not offset:
            users = replace(users, offset=np.zeros_like(users.offset))
        return users.latent(a["genre_centers"], self._fraction(timestamps)[:, None])

    def item_latent(self, rows: np.ndarray) -> np.ndarray:
        """(N, k) latent vectors of truth rows (:meth:`item_rows`) divided by the affinity's
        scale, so that ``<user_latent, item_latent> + item_bias`` is the affinity."""
        a = self.arrays
        return a["item_latent"][rows] / float(a["affinity_scale"])
