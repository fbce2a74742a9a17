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
from tqdm import tqdm

from index.bundle import Bundle, rows_of
from model.contract import DAY
from model.data.events import Events
from model.finetune import group_pairs, impression_grades, pair_accuracy, pair_weight_table
from model.window import WindowTargets, popular_ranking, recall, top_excluding


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


@dataclass
class Pairs:
    """Impressions of a time window and their pairs (``hi``/``lo`` index the impressions)."""

    rows: np.ndarray  # (M,) the impressions' rows in the events table
    user: np.ndarray  # (M,)
    item: np.ndarray  # (M,)
    timestamp: np.ndarray  # (M,)
    grade: np.ndarray  # (M,) feedback grade (model.finetune.GRADES)
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
    item_rows, item_found = rows_of(bundle.item_ids, pairs.item)
    ranking = bundle.ranking_part(np.asarray(bundle.user_vectors[user_rows]))
    scores = np.einsum("md,md->m", ranking, bundle.item_vectors[item_rows]).astype(np.float64)
    scores[~(user_found & item_found)] = np.nan
    return out, scores


def popularity_scores(history: Events, pairs: Pairs, start: int) -> np.ndarray:
    """MostPop's score of each impression: the item's positive events before ``start``."""
    ids, counts = history.positive_counts(before=start)
    rows, found = rows_of(ids, pairs.item)
    return np.where(found, counts[rows], 0).astype(np.float64)


@dataclass(frozen=True)
class QuickRecall:
    users: int
    k: int
    service: float
    popular: float
    seconds: float

    def line(self) -> str:
        verdict = "better" if self.service > self.popular else "NOT better"
        return (
            f"/candidates recall@{self.k} {self.service:.3f} vs most popular {self.popular:.3f} "
            f"({self.service / max(self.popular, 1e-9):.2f}x, {verdict}) on the next 7 days' "
            f"positives of {self.users:,} users, replayed over HTTP in {self.seconds:.1f} s"
        )


def quick_recall(
    url: str, events: Events, bundle: Bundle, *, users: int = 400, k: int = 100, seed: int = 0
) -> QuickRecall:
    """A few seconds of replay: ``/candidates`` for ``users`` users with positives in the 7 days
    after the bundle's training cut-off, against the most-popular list of the same data."""
    import time

    began = time.perf_counter()
    window = WindowTargets.of(events, int(bundle.manifest["trained_until"]), users=users, seed=seed)
    served = candidates(Client(url), window, k, new=False)
    popular = popular_ranking(events, window, k, exclude_seen=False)
    return QuickRecall(
        users=len(window),
        k=k,
        service=recall(served.all, window.items, k),
        popular=recall(popular, window.items, k),
        seconds=time.perf_counter() - began,
    )
