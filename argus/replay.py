"""Quality where the user meets it: replay a held-out window against the running service over
HTTP, beside MostPop, the simulator's oracle and the same vectors evaluated offline.

* :func:`candidates` — ``POST /candidates`` for every user of a :class:`WindowTargets`: once as
  is (scored on all their positives of the window) and once leaving out what they met before the
  window (``exclude_item_ids``; scored on the items new to them).
* :func:`score_pairs` — ``POST /score`` on each user's window impressions; weighted PairAccuracy
  over pairs of one user and UTC day (the groups the daily bundle is fine-tuned on).
* :func:`offline` — the same rankings and scores from a bundle's arrays by exact search: what the
  service must match.

``benchmarks/replay.py`` runs the whole pipeline around these; ``argus demo`` ends with a few
seconds of :func:`candidates`.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from index.bundle import Bundle, rows_of
from model.contract import DAY
from model.data.events import Events, counts_before
from model.future import WindowTargets, popular_ranking, top_excluding
from model.impressions import SESSION_GAP, group_pairs, impression_grades, pair_weight_table
from model.metrics import pair_accuracy, recall
from model.progress import bar as tqdm


class Client:
    """A minimal JSON client of one service (urllib: no dependency, one connection per call)."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}{path}", orjson.dumps(body), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return dict(orjson.loads(response.read()))


@dataclass
class Rankings:
    """Per user of a window: the ranked ids as is (``all``) and without seen items (``new``)."""

    all: list[np.ndarray]
    new: list[np.ndarray]
    sources: dict[str, int]  # vector sources the service reported


def candidates(
    client: Client, window: WindowTargets, k: int, *, new: bool = True, progress: bool = False
) -> Rankings:
    """The service's ``/candidates`` (``k`` items) for every user of ``window`` (``new``: also
    without their seen items)."""
    out = Rankings([], [], {})
    users = tqdm(range(len(window)), desc="/candidates", unit="user", disable=not progress)
    for i in users:
        user = int(window.users[i])
        asks = [([], out.all), (window.seen[i].tolist(), out.new)]
        for excluded, lists in asks if new else asks[:1]:
            body = {"user_id": user, "k": k, "exclude_seen": False, "exclude_item_ids": excluded}
            reply = client.post("/candidates", body)
            lists.append(np.array([c["item_id"] for c in reply["items"]], dtype=np.int64))
            out.sources[reply["source"]] = out.sources.get(reply["source"], 0) + 1
    return out


def unfamiliar_candidates(
    client: Client,
    window: WindowTargets,
    events: Events,
    k: int,
    *,
    max_history: int = 2_048,
    progress: bool = False,
) -> list[np.ndarray]:
    """The service's ``/candidates`` with ``unfamiliar="artists"`` for every user of ``window``:
    the stored vector (``mode="offline"``) and the user's newest ``max_history`` events before
    the window sent as ``history``, whose artists the service leaves out."""
    users, offsets = events.user_offsets()
    out = []
    for user in tqdm(window.users.tolist(), desc="/candidates artists", disable=not progress):
        at = int(np.searchsorted(users, user))
        rows = np.arange(offsets[at], offsets[at + 1])
        rows = rows[events.timestamp[rows] < window.start][-max_history:]
        history = [
            {"item_id": i, "artist_id": a, "timestamp": t}
            for i, a, t in zip(
                events.item_id[rows].tolist(),
                events.artist_id[rows].tolist(),
                events.timestamp[rows].tolist(),
                strict=True,
            )
        ]
        body = {"user_id": user, "k": k, "mode": "offline", "unfamiliar": "artists"}
        reply = client.post("/candidates", {**body, "history": history})
        out.append(np.array([c["item_id"] for c in reply["items"]], dtype=np.int64))
    return out


@dataclass
class Pairs:
    """Impressions of a time window and their pairs (``hi``/``lo`` index the impressions)."""

    rows: np.ndarray  # (M,) the impressions' rows in the events table
    user: np.ndarray  # (M,)
    item: np.ndarray  # (M,)
    timestamp: np.ndarray  # (M,)
    grade: np.ndarray  # (M,) feedback grade (model.impressions.GRADES)
    group: np.ndarray  # (M,) one per user and UTC day
    hi: np.ndarray  # (P,)
    lo: np.ndarray  # (P,)
    weight: np.ndarray  # (P,)

    @classmethod
    def of(
        cls,
        events: Events,
        users: np.ndarray | None,
        start: int,
        days: float,
        pair_weights: str = "",
    ) -> Pairs:
        """Impressions (recommended events with feedback) of ``users`` (None: everyone) in
        ``[start, start + days)``; pairs within one user and UTC day."""
        grade = impression_grades(events)
        inside = (grade >= 0) & (events.timestamp >= start)
        inside &= events.timestamp < start + int(days * DAY)
        if users is not None:
            inside &= np.isin(events.user_id, users)
        rows = np.flatnonzero(inside)
        day = events.timestamp[rows] // DAY
        _, group = np.unique(np.stack([events.user_id[rows], day]), axis=1, return_inverse=True)
        group = group.reshape(-1)
        hi, lo, weight = group_pairs(group, grade[rows], pair_weight_table(pair_weights))
        return cls(
            rows,
            events.user_id[rows],
            events.item_id[rows],
            events.timestamp[rows],
            grade[rows],
            group,
            hi,
            lo,
            weight,
        )

    def accuracy(self, scores: np.ndarray, among: np.ndarray | None = None) -> float:
        """Weighted PairAccuracy of (M,) ``scores``, over the pairs both of whose impressions
        are ``among`` (an (M,) mask; default: all); an impression without a score loses to any
        scored one."""
        keep = slice(None) if among is None else among[self.hi] & among[self.lo]
        scores = np.nan_to_num(scores, nan=-np.inf)
        return pair_accuracy(scores, self.hi[keep], self.lo[keep], self.weight[keep])

    def difference(
        self, a: np.ndarray, b: np.ndarray, *, resamples: int = 2_000, seed: int = 0
    ) -> dict[str, float]:
        """PairAccuracy of (M,) scores ``a`` minus that of ``b`` on these pairs, with a 95%
        interval from a paired bootstrap over users (each user's pairs resampled together: a
        user's pairs share a state and are not independent). All three are NaN without pairs
        (a log with no impressions)."""
        if not len(self.hi):
            return {"difference": float("nan"), "low": float("nan"), "high": float("nan")}
        a, b = np.nan_to_num(a, nan=-np.inf), np.nan_to_num(b, nan=-np.inf)

        def correct(s: np.ndarray) -> np.ndarray:
            return (s[self.hi] > s[self.lo]) + 0.5 * (s[self.hi] == s[self.lo])

        users, of_pair = np.unique(self.user[self.hi], return_inverse=True)
        gain = np.bincount(of_pair, self.weight * (correct(a) - correct(b)), len(users))
        weight = np.bincount(of_pair, self.weight, len(users))
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(len(users), np.full(len(users), 1.0 / len(users)), resamples)
        spread = (draws @ gain) / np.maximum(draws @ weight, 1e-12)
        low, high = np.quantile(spread, [0.025, 0.975])
        return {"difference": float(gain.sum() / weight.sum()), "low": low, "high": high}

    def by_catalog(
        self, known: np.ndarray, scores: dict[str, np.ndarray]
    ) -> dict[str, dict[str, float]]:
        """PairAccuracy of each of ``scores`` apart for the pairs whose better, worse, both or
        neither impression is of an item the catalog knows (``known``, (M,) bool), with each
        group's share of the pairs' weight: where a score wins and loses."""
        hi, lo = known[self.hi], known[self.lo]
        groups = {
            "both known": hi & lo,
            "only the better known": hi & ~lo,
            "only the worse known": ~hi & lo,
            "neither known": ~hi & ~lo,
        }
        total = float(self.weight.sum())
        out: dict[str, dict[str, float]] = {}
        for name, keep in groups.items():
            if not keep.any():
                continue
            row = {"share": float(self.weight[keep].sum()) / total}
            for method, values in scores.items():
                values = np.nan_to_num(values, nan=-np.inf)
                row[method] = pair_accuracy(values, self.hi[keep], self.lo[keep], self.weight[keep])
            out[name] = row
        return out


def score_pairs(client: Client, pairs: Pairs, *, progress: bool = False) -> np.ndarray:
    """(M,) the service's ``/score`` of every impression (NaN where it has none)."""
    scores = np.full(len(pairs.user), np.nan, dtype=np.float64)
    users = np.unique(pairs.user)
    for user in tqdm(users.tolist(), desc="/score", unit="user", disable=not progress):
        mine = np.flatnonzero(pairs.user == user)
        items = np.unique(pairs.item[mine])
        for begin in range(0, len(items), 1_000):  # the service's default max_score_items
            part = items[begin : begin + 1_000]
            reply = client.post("/score", {"user_id": user, "item_ids": part.tolist()})
            values = np.array([np.nan if s is None else s for s in reply["scores"]])
            inside = np.isin(pairs.item[mine], part)
            scores[mine[inside]] = values[np.searchsorted(part, pairs.item[mine[inside]])]
    return scores


def offline(
    bundle: Bundle, window: WindowTargets, pairs: Pairs, k: int, chunk: int = 256
) -> tuple[Rankings, np.ndarray]:
    """The service's answers recomputed from ``bundle``'s arrays by exact search (users without a
    vector get the popular list and no scores, as the service gives them)."""
    rows, found = rows_of(bundle.user_ids, window.users)
    out = Rankings([], [], {})
    popular = bundle.popular
    for begin in range(0, len(window), chunk):
        part = slice(begin, begin + chunk)
        queries = bundle.retrieval_part(np.asarray(bundle.user_vectors[rows[part]]))
        scores = queries @ bundle.retrieval_item_vectors.T  # (U, M)
        every = top_excluding(scores, bundle.item_ids, k, None)
        new = top_excluding(scores, bundle.item_ids, k, window.seen[part])
        for j, known in enumerate(found[part].tolist()):
            seen = window.seen[begin + j]
            out.all.append(every[j] if known else popular[:k])
            out.new.append(new[j] if known else popular[~np.isin(popular, seen)][:k])
    user_rows, user_found = rows_of(bundle.user_ids, pairs.user)
    vectors, item_found = bundle.ranking_items(pairs.item)
    ranking = bundle.ranking_part(np.asarray(bundle.user_vectors[user_rows]))
    prior = bundle.prior_query  # a user without a vector: the item prior alone
    if prior is not None:
        ranking = np.where(user_found[:, None], ranking, prior)
    scores = np.einsum("md,md->m", ranking, vectors).astype(np.float64)
    cold = bundle.cold_item_vector is not None  # items the catalog lacks are scored too
    scores[~((user_found | (prior is not None)) & (item_found | cold))] = np.nan
    return out, scores


def popularity_scores(history: Events, pairs: Pairs, start: int) -> np.ndarray:
    """MostPop's score of each impression: the item's positive events before ``start``."""
    ids, counts = history.positive_counts(before=start)
    rows, found = rows_of(ids, pairs.item)
    return np.where(found, counts[rows], 0).astype(np.float64)


def artist_rates(history: Events, pairs: Pairs, before: int) -> np.ndarray:
    """(M,) each impression's user's positive share on the item's artist before ``before``,
    smoothed to 1/2 with one positive and one negative pseudo-event."""
    span = int(history.artist_id.max()) + 2
    key = history.user_id * span + history.artist_id + 1
    query = pairs.user * span + history.artist_id[pairs.rows] + 1
    start, end = np.full(len(query), np.iinfo(np.int64).min // 4), np.full(len(query), before)
    total = counts_before(key, history.timestamp, query, start, end)
    positive = history.positive
    liked = counts_before(key[positive], history.timestamp[positive], query, start, end)
    return (liked + 1) / (total + 2)


def counter_scores(history: Events, pairs: Pairs, start: int) -> np.ndarray:
    """Simple per-user counters, the baseline a personal score must beat: MostPop's log count
    plus the logit of the user's positive share on the item's artist before ``start``."""
    rate = artist_rates(history, pairs, start)
    return np.log1p(popularity_scores(history, pairs, start)) + np.log(rate / (1 - rate))


def like_rate_scores(history: Events, pairs: Pairs, start: int, prior: float = 1.0) -> np.ndarray:
    """Each impression's item's past like rate: likes over impressions before ``start``, shrunk
    towards the overall rate by ``prior`` impressions (an item never shown gets the overall
    rate)."""
    before = history.timestamp < start
    shown = before & (history.source > 0)
    ids, seen = np.unique(history.item_id[shown], return_counts=True)
    liked = np.bincount(
        np.searchsorted(ids, history.item_id[shown & history.liked]), minlength=len(ids)
    )
    overall = liked.sum() / max(seen.sum(), 1)
    rows, found = rows_of(ids, pairs.item)
    rate = (liked[rows] + prior * overall) / (seen[rows] + prior)
    return np.where(found, rate, overall).astype(np.float64)


@dataclass(frozen=True)
class QuickReplay:
    users: int
    k: int
    service: float  # /candidates recall@k
    popular: float  # MostPop's
    pairs: int  # impression pairs of those users in the window
    pair_accuracy: float  # /score's
    popular_pair_accuracy: float  # MostPop's
    seconds: float

    def line(self) -> str:
        def verdict(ours: float, theirs: float) -> str:
            return "better" if ours > theirs else "NOT better"

        return (
            f"/candidates recall@{self.k} {self.service:.3f} vs most popular {self.popular:.3f} "
            f"({self.service / max(self.popular, 1e-9):.2f}x, "
            f"{verdict(self.service, self.popular)}); /score PairAccuracy "
            f"{self.pair_accuracy:.4f} vs most popular {self.popular_pair_accuracy:.4f} "
            f"({verdict(self.pair_accuracy, self.popular_pair_accuracy)}, {self.pairs:,} pairs) "
            f"on the next 7 days of {self.users:,} users, replayed over HTTP in "
            f"{self.seconds:.1f} s"
        )


def quick_replay(
    url: str, events: Events, bundle: Bundle, *, users: int = 400, k: int = 100, seed: int = 0
) -> QuickReplay:
    """A few seconds of replay, for ``users`` users with positives in the 7 days after the
    bundle's training cut-off: ``/candidates`` recall of those positives and ``/score``
    PairAccuracy of their impressions (pairs within a user-day), each against MostPop."""
    import time

    began = time.perf_counter()
    start = int(bundle.manifest["trained_until"])
    window = WindowTargets.of(events, start, users=users, seed=seed)
    client = Client(url)
    served = candidates(client, window, k, new=False)
    popular = popular_ranking(events, window, k, exclude_seen=False)
    pairs = Pairs.of(events, window.users, start, days=7.0)
    return QuickReplay(
        users=len(window),
        k=k,
        service=recall(served.all, window.items, k),
        popular=recall(popular, window.items, k),
        pairs=len(pairs.hi),
        pair_accuracy=pairs.accuracy(score_pairs(client, pairs)),
        popular_pair_accuracy=pairs.accuracy(popularity_scores(events, pairs, start)),
        seconds=time.perf_counter() - began,
    )


# -- near-real-time: the runtime encoder vs the stored vector, session by session ----------------


def as_request_events(events: Events, rows: np.ndarray) -> list[dict[str, Any]]:
    """The events at ``rows`` as a request's ``history``."""
    ratio = events.played_ratio[rows]
    return [
        {
            "item_id": int(events.item_id[r]),
            "artist_id": int(events.artist_id[r]),
            "timestamp": int(events.timestamp[r]),
            "source": int(events.source[r]),
            "played_ratio": None if np.isnan(p) else float(p),
            "liked": bool(events.liked[r]),
            "disliked": bool(events.disliked[r]),
        }
        for r, p in zip(rows.tolist(), ratio.tolist(), strict=True)
    ]


@dataclass
class SessionReplay:
    """Realtime (the request carries the user's history up to the session) vs stored (the
    bundle's vector, as of the window start) on the same sessions of the window."""

    sessions: int
    pairs: int
    pair_accuracy: dict[str, float]  # realtime, stored, MostPop
    recall: dict[str, float]  # /candidates recall@k of the session's positives
    k: int
    sources: dict[str, int]
    seconds: float


def session_replay(
    client: Client,
    events: Events,
    users: np.ndarray,
    start: int,
    *,
    days: float = 7.0,
    k: int = 100,
    max_len: int = 512,
    session_gap: int = SESSION_GAP,
    reveal: int = 0,
    progress: bool = False,
) -> SessionReplay:
    """For every session (``session_gap`` of silence starts one) of ``users`` in the window
    ``[start, start + days)``: ``/score`` its impressions (pairs within the session) and
    ``/candidates`` (``k``, seen items kept) scored on its positive items, once with
    ``mode=realtime`` and the user's last ``max_len`` events before the session in the request,
    once from the stored vector. MostPop scores the same pairs by positives before ``start``.
    ``reveal`` > 0: the session's first ``reveal`` events join the request's history (what the
    user did so far) and only the rest of the session is scored; shorter sessions are skipped."""
    import time

    from model.impressions import session_ids

    began = time.perf_counter()
    mine = events.take(np.isin(events.user_id, users))
    session = session_ids(mine, session_gap)
    grade = impression_grades(mine)
    in_window = (mine.timestamp >= start) & (mine.timestamp < start + int(days * DAY))
    tally = _SessionTally(client, k, *mine.positive_counts(before=start))
    starts = np.flatnonzero(in_window & np.r_[True, session[1:] != session[:-1]])
    for first in tqdm(starts.tolist(), desc="sessions", unit="session", disable=not progress):
        rows = np.flatnonzero((session == session[first]) & in_window)
        if len(rows) <= reveal:
            continue
        rows, known_now = rows[reveal:], first + reveal  # the rest, after what was revealed
        user = int(mine.user_id[first])
        user_start = int(np.searchsorted(mine.user_id, user, side="left"))
        before = np.arange(max(user_start, known_now - max_len), known_now)
        if len(before) == 0:
            continue
        history = as_request_events(mine, before)
        impressions = rows[grade[rows] >= 0]
        tally.score(user, history, mine.item_id[impressions], grade[impressions])
        targets = np.unique(mine.item_id[rows[mine.positive[rows]]])
        if len(targets):
            tally.candidates(user, history, targets)
    return tally.result(len(starts), time.perf_counter() - began)


class _SessionTally:
    """What :func:`session_replay` gathers, session by session: each leg's scores of the
    impressions, the pairs among them, and the share of each session's positives retrieved."""

    LEGS = ("realtime", "stored", "MostPop")

    def __init__(self, client: Client, k: int, ids: np.ndarray, counts: np.ndarray) -> None:
        self.client, self.k = client, k
        self.ids, self.counts = ids, counts  # positives before the window, for MostPop
        self.scores: dict[str, list[np.ndarray]] = {leg: [] for leg in self.LEGS}
        self.pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.hits: dict[str, list[float]] = {leg: [] for leg in self.LEGS}
        self.sources: dict[str, int] = {}
        self.offset = 0
        self.table = pair_weight_table("")
        self.popular: np.ndarray | None = None
        self.stored: dict[int, np.ndarray] = {}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.client.post(path, body)
        self.sources[reply["source"]] = self.sources.get(reply["source"], 0) + 1
        return reply

    def score(
        self, user: int, history: list[dict[str, Any]], item_ids: np.ndarray, grades: np.ndarray
    ) -> None:
        """``/score`` the session's impressions realtime and stored; MostPop beside them."""
        hi, lo, w = group_pairs(np.zeros(len(item_ids), np.int64), grades, self.table)
        if not len(hi):
            return
        items = np.unique(item_ids)
        at = np.searchsorted(items, item_ids)
        for leg, extra in (("realtime", {"mode": "realtime", "history": history}), ("stored", {})):
            reply = self.post("/score", {"user_id": user, "item_ids": items.tolist(), **extra})
            values = np.array([np.nan if s is None else s for s in reply["scores"]])
            self.scores[leg].append(values[at])
        ids = self.ids
        found = np.searchsorted(ids, item_ids).clip(max=len(ids) - 1)
        known = ids[found] == item_ids if len(ids) else np.zeros(0, bool)
        self.scores["MostPop"].append(np.where(known, self.counts[found], 0).astype(np.float64))
        self.pairs.append((hi + self.offset, lo + self.offset, w))
        self.offset += len(item_ids)

    def candidates(self, user: int, history: list[dict[str, Any]], targets: np.ndarray) -> None:
        """``/candidates`` realtime and stored (once per user), and MostPop's list (once)."""
        body: dict[str, Any] = {"user_id": user, "k": self.k, "exclude_seen": False}

        def ids(reply: dict[str, Any]) -> np.ndarray:
            return np.array([c["item_id"] for c in reply["items"]], dtype=np.int64)

        realtime = ids(self.post("/candidates", {**body, "mode": "realtime", "history": history}))
        if user not in self.stored:
            self.stored[user] = ids(self.post("/candidates", body))
        if self.popular is None:
            offline = {"user_id": -1, "k": self.k, "mode": "offline"}
            self.popular = ids(self.post("/candidates", offline))
        for leg, ranked in zip(self.LEGS, (realtime, self.stored[user], self.popular), strict=True):
            self.hits[leg].append(float(np.isin(targets, ranked[: self.k]).mean()))

    def result(self, sessions: int, seconds: float) -> SessionReplay:
        def joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        hi = joined([p[0] for p in self.pairs], np.int64)
        lo = joined([p[1] for p in self.pairs], np.int64)
        w = joined([p[2] for p in self.pairs], np.float64)
        accuracy = {
            leg: pair_accuracy(np.nan_to_num(joined(parts, np.float64), nan=-np.inf), hi, lo, w)
            for leg, parts in self.scores.items()
        }
        return SessionReplay(
            sessions=sessions,
            pairs=len(hi),
            pair_accuracy=accuracy,
            recall={leg: float(np.mean(v)) if v else float("nan") for leg, v in self.hits.items()},
            k=self.k,
            sources=self.sources,
            seconds=seconds,
        )
