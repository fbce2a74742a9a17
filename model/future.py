"""The future window: the items a user goes on to enjoy, and the rankers scored against them.

A ranking for a user is judged by the items they go on to consume: the distinct items of their
positive events (:attr:`Events.positive`) in the ``days`` after ``start``. **New to the user**
counts only the items absent from their history before ``start``, and is measured on rankings that
leave those out (``exclude_seen``): the discovery setting. The users are those with at least one
target (a seeded sample when asked).

Rankers (every one returns ``(U, k)`` item ids, best first):

* :func:`popular_ranking` — MostPop: positive events before ``start`` (Trending: those of the
  last days before it first);
* :func:`oracle_ranking` — on simulated data, the true affinity of that day plus ``weight`` times
  the log of the true popularity, with ``weight`` fitted on other users (:func:`fit_oracle`).

Scores that need no training, for what a real log allows (``benchmarks.recall_ceiling``):
:func:`recency_scores`, what is popular now among what is new, and :func:`ease_scores`, a
closed-form item-to-item model.

The replay benchmark feeds the service's answers to :func:`recall` beside these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.contract import DAY
from model.data.events import Events
from model.data.simulate import Truth
from model.impressions import feedback_grades
from model.metrics import recall


@dataclass
class WindowTargets:
    start: int  # first second of the window
    users: np.ndarray  # (U,) user ids, ascending
    items: list[np.ndarray]  # distinct positive items of each user in the window
    seen: list[np.ndarray]  # distinct items of each user's history before ``start``

    @classmethod
    def of(
        cls, events: Events, start: int, *, days: float = 7.0, users: int = 0, seed: int = 0
    ) -> WindowTargets:
        """Targets of the users with a positive event in ``[start, start + days)``; ``users``
        > 0 draws a seeded sample of that many."""
        inside = (events.timestamp >= start) & (events.timestamp < start + int(days * DAY))
        wanted = np.unique(events.user_id[inside & events.positive])
        if 0 < users < len(wanted):
            wanted = np.sort(np.random.default_rng(seed).choice(wanted, users, replace=False))
        mine = np.isin(events.user_id, wanted)
        future = _grouped(events.user_id, events.item_id, mine & inside & events.positive, wanted)
        past = _grouped(events.user_id, events.item_id, mine & (events.timestamp < start), wanted)
        return cls(start=start, users=wanted, items=future, seen=past)

    def __len__(self) -> int:
        return len(self.users)

    def unfamiliar_artists(self, events: Events) -> WindowTargets:
        """The window in the setting ``unfamiliar="artists"`` answers: each user's targets by
        artists absent from their history before ``start`` (an unknown artist counts as none of
        them), and as ``seen`` every catalog item of the artists they have met (with the items
        themselves), so a ranking that leaves ``seen`` out is filtered the same way."""
        ids, first = np.unique(events.item_id, return_index=True)
        artist_of = events.artist_id[first]  # one artist per item
        items, seen = [], []
        for targets, past in zip(self.items, self.seen, strict=True):
            met = np.unique(artist_of[np.searchsorted(ids, past)]) if len(past) else ids[:0]
            met = met[met >= 0]
            artist = artist_of[np.searchsorted(ids, targets)]
            items.append(targets[(artist >= 0) & ~np.isin(artist, met)])
            theirs = ids[np.isin(artist_of, met)]  # every item of the artists met
            seen.append(np.union1d(past, theirs))
        return WindowTargets(start=self.start, users=self.users, items=items, seen=seen)

    def subset(self, rows: np.ndarray) -> WindowTargets:
        """The window of the users at positions ``rows`` (ascending)."""
        return WindowTargets(
            start=self.start,
            users=self.users[rows],
            items=[self.items[i] for i in rows],
            seen=[self.seen[i] for i in rows],
        )

    def with_history(self) -> WindowTargets:
        """The users with an event before ``start``: the only ones a model can tell apart."""
        return self.subset(np.flatnonzero([len(s) > 0 for s in self.seen]))

    def new_items(self) -> list[np.ndarray]:
        """Each user's targets that are new to them."""
        return [
            np.setdiff1d(t, s, assume_unique=True)
            for t, s in zip(self.items, self.seen, strict=True)
        ]


def _grouped(
    user_id: np.ndarray, item_id: np.ndarray, mask: np.ndarray, users: np.ndarray
) -> list[np.ndarray]:
    """Distinct ``item_id`` under ``mask`` for each of ``users`` (ascending), in that order."""
    u, i = user_id[mask], item_id[mask]
    pairs = np.unique(np.stack([u, i], 1), axis=0) if len(u) else np.zeros((0, 2), np.int64)
    bounds = np.asarray(np.searchsorted(pairs[:, 0], np.r_[users, np.iinfo(np.int64).max]))
    return np.split(pairs[:, 1], bounds[1:-1])


def top_excluding(
    scores: np.ndarray, ids: np.ndarray, k: int, seen: Sequence[np.ndarray] | None
) -> np.ndarray:
    """(U, k) ids of the best ``scores`` (U, M) per row (columns: the sorted ``ids``), the
    row's ``seen`` ids left out (with fewer than k left, they fill the end)."""
    k = min(k, scores.shape[1])
    if seen is not None:
        scores = scores.copy()
        for row, items in enumerate(seen):
            scores[row, np.searchsorted(ids, items[np.isin(items, ids)])] = -np.inf
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return ids[np.take_along_axis(part, order, 1)]


def popular_ranking(
    history: Events, window: WindowTargets, k: int, exclude_seen: bool, trend: int = 0
) -> list[np.ndarray]:
    """Each user's MostPop list of up to ``k`` ids: items by positive events before the window
    (ties: smaller id); with a ``trend`` (seconds), Trending lists: by those in the ``trend``
    seconds before the window first (ties: all of them, then the id). With ``exclude_seen`` a
    list never holds a seen item, so it is shorter when too few others are popular."""
    ids, counts = history.positive_counts(before=window.start)
    recent = np.zeros_like(counts)
    if trend:
        recent = history.positives_before(ids, np.full(len(ids), window.start), trend)
    order = np.lexsort((ids, -counts, -recent))
    popular = ids[order]
    depth = k + (max((len(s) for s in window.seen), default=0) if exclude_seen else 0)
    head = popular[:depth]
    rows = []
    for seen in window.seen:
        row = head[~np.isin(head, seen)] if exclude_seen else head
        rows.append(row[:k])
    return rows


def recency_scores(
    history: Events, ids: np.ndarray, start: int, scale_days: float, age_days: float = np.inf
) -> np.ndarray:
    """(M,) what is popular now among what is new: each of the sorted ``ids``' positive events
    before ``start`` weighs exp(-days before ``start`` / ``scale_days``), and the sum is divided
    by 1 + the item's age / ``age_days`` (age: days from its first event of any kind to
    ``start``; an item with none is of age 0)."""
    before = history.timestamp < start
    positive = before & history.positive
    known = np.isin(history.item_id, ids)
    rows = np.searchsorted(ids, history.item_id[positive & known])
    days = (start - history.timestamp[positive & known]) / DAY
    scores = np.bincount(rows, weights=np.exp(-days / scale_days), minlength=len(ids))
    first = np.full(len(ids), start, np.int64)
    np.minimum.at(
        first,
        np.searchsorted(ids, history.item_id[before & known]),
        history.timestamp[before & known],
    )
    return scores / (1.0 + (start - first) / DAY / age_days)


def ease_scores(
    history: Events, window: WindowTargets, ids: np.ndarray, ridge: float
) -> np.ndarray:
    """(U, M) EASE (Steck, 2019) on the positives before ``window.start``: each item's score is
    a ridge regression of it on the user's other positive items, ``B = I - P / diag(P)`` with
    ``P = (X'X + ridge I)^-1`` over the binary user x item matrix ``X`` of the sorted ``ids``.
    A strong item-to-item baseline of the field; dense in the items, so for catalogs of a few
    thousand."""
    if len(ids) > 20_000:
        raise ValueError(f"EASE is dense in the items: {len(ids):,} is too many (at most 20,000)")
    positive = (history.timestamp < window.start) & history.positive & np.isin(history.item_id, ids)
    users, user_rows = np.unique(history.user_id[positive], return_inverse=True)
    matrix = np.zeros((len(users), len(ids)))
    matrix[user_rows, np.searchsorted(ids, history.item_id[positive])] = 1.0
    inverse = np.linalg.inv(matrix.T @ matrix + ridge * np.eye(len(ids)))
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    rows = np.zeros((len(window), len(ids)))
    where = np.searchsorted(users, window.users).clip(max=max(len(users) - 1, 0))
    has = (where < len(users)) & (users[where] == window.users) if len(users) else where < 0
    rows[has] = matrix[where[has]]
    return rows @ weights


def oracle_scores(truth: Truth, users: np.ndarray, at: int, weight: float) -> np.ndarray:
    """(U, M) true affinity on the day of ``at`` + ``weight`` * log true popularity, columns in
    ``truth.sorted_item_ids`` order."""
    affinity = truth.affinity_matrix(users, at)
    return affinity + weight * np.log(truth.arrays["item_popularity"])[truth.sorted_rows]


def oracle_ranking(
    truth: Truth,
    window: WindowTargets,
    k: int,
    exclude_seen: bool,
    weight: float,
    chunk: int = 256,
) -> np.ndarray:
    """(U, k) lists by :func:`oracle_scores`."""
    parts = []
    for begin in range(0, len(window), chunk):
        users = window.users[begin : begin + chunk]
        seen = window.seen[begin : begin + chunk] if exclude_seen else None
        scores = oracle_scores(truth, users, window.start, weight)
        parts.append(top_excluding(scores, truth.sorted_item_ids, k, seen))
    return np.concatenate(parts) if parts else np.zeros((0, k), np.int64)


def fit_oracle(
    truth: Truth,
    window: WindowTargets,
    k: int,
    exclude_seen: bool,
    weights: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0),
) -> float:
    """The popularity weight of the oracle that maximises recall@k on ``window``'s users (pass
    users other than those it will be measured on)."""
    targets = window.new_items() if exclude_seen else window.items
    best = max(
        weights,
        key=lambda w: recall(oracle_ranking(truth, window, k, exclude_seen, w), targets, k),
    )
    return float(best)


def split_users(window: WindowTargets, seed: int = 0) -> tuple[WindowTargets, WindowTargets]:
    """Two disjoint halves of ``window``'s users (fit on one, measure on the other)."""
    order = np.random.default_rng(seed).permutation(len(window))
    halves = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    return window.subset(halves[0]), window.subset(halves[1])


def estimated_offsets(
    truth: Truth,
    history: Events,
    users: np.ndarray,
    before: int,
    *,
    ridge: float = 10.0,
    last: int = 0,
) -> np.ndarray:
    """(U, k) each user's personal latent offset as their own feedback before ``before`` shows
    it, given everything else the simulator knows (the genre mixture, every item's latent and
    bias): per user, a ridge regression of each event's feedback grade on
    ``[1, a_known, v_i]`` (``a_known``: the affinity without the offset); the offset is the
    ``v_i`` coefficients over ``a_known``'s. A ceiling check: what a model that learns from the
    logs could know of the one part of the affinity that is personal (users without feedback
    get 0). ``last`` > 0 reads only each user's last ``last`` events before ``before``, as a
    model whose ``max_len`` is ``last`` sees them."""
    graded = feedback_grades(history)  # organic events' feedback shows the offset too
    mine = (history.timestamp < before) & np.isin(history.user_id, users)
    if last > 0:
        mine &= recent_events(history, mine, last)
    rows = np.flatnonzero(mine & (graded >= 0))
    rows = rows[np.argsort(history.user_id[rows], kind="stable")]
    item = truth.item_rows(history.item_id[rows])
    latent = truth.item_latent(item)
    user_id, timestamp = history.user_id[rows], history.timestamp[rows]
    taste = truth.user_latent(user_id, timestamp, offset=False)
    known = np.einsum("nk,nk->n", taste, latent) + truth.arrays["item_bias"][item]
    grade = graded[rows].astype(np.float64)
    begin = np.searchsorted(user_id, users)
    end = np.searchsorted(user_id, users, side="right")
    k = latent.shape[1]
    penalty = np.diag(np.r_[0.0, 0.0, np.full(k, ridge)])
    out = np.zeros((len(users), k))
    for u, (b, e) in enumerate(zip(begin.tolist(), end.tolist(), strict=True)):
        if e - b <= k + 2:
            continue
        design = np.column_stack([np.ones(e - b), known[b:e], latent[b:e]])
        coef = np.linalg.solve(design.T @ design + penalty, design.T @ grade[b:e])
        out[u] = coef[2:] / max(coef[1], 1e-3)
    return out


def history_latents(
    truth: Truth, history: Events, users: np.ndarray, before: int, last: int
) -> np.ndarray:
    """(U, k) the mean true latent of the items of each user's ``last`` latest events before
    ``before`` (0 for a user without one): what a reader of the history's items could know of
    the user's taste if it knew every item exactly (the backbone diagnostics' reference for
    their taste probe)."""
    mine = (history.timestamp < before) & np.isin(history.user_id, users)
    rows = np.flatnonzero(recent_events(history, mine, last))
    latent = truth.item_latent(truth.item_rows(history.item_id[rows]))
    at = np.searchsorted(users, history.user_id[rows])
    sums = np.zeros((len(users), latent.shape[1]))
    np.add.at(sums, at, latent)
    counts = np.bincount(at, minlength=len(users))
    return sums / np.maximum(counts, 1)[:, None]


def recent_events(events: Events, mask: np.ndarray, last: int) -> np.ndarray:
    """(N,) bool: the rows among ``mask`` that are one of their user's ``last`` latest rows
    under ``mask`` (``events`` sorted by user, then time, as :func:`read_events` gives them)."""
    out = np.zeros(len(events), dtype=bool)
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        return out
    user = events.user_id[rows]
    ends = np.flatnonzero(np.r_[user[1:] != user[:-1], True])  # each user's last masked row
    from_end = np.repeat(ends, np.diff(np.r_[-1, ends])) - np.arange(len(rows))
    out[rows[from_end < last]] = True
    return out


def positive_factors(
    events: Events, before: int, rank: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(item ids, (I, rank) factors)``: a rank-``rank`` truncated SVD (``V·S``) of the binary
    user x item matrix of positive events before ``before``: item vectors a plain matrix
    factorisation learns from the logs."""
    import torch  # the train extra; only this analysis needs it here

    keep = events.positive & (events.timestamp < before)
    users, user = np.unique(events.user_id[keep], return_inverse=True)
    items, item = np.unique(events.item_id[keep], return_inverse=True)
    cell = np.unique(user.astype(np.int64) * len(items) + item)
    index = torch.from_numpy(np.stack([cell // len(items), cell % len(items)]))
    matrix = torch.sparse_coo_tensor(
        index,
        torch.ones(len(cell)),
        (len(users), len(items)),
        is_coalesced=True,
        check_invariants=False,
    )
    with torch.random.fork_rng():  # seeded, without touching the caller's random stream
        torch.manual_seed(seed)
        _, singular, right = torch.svd_lowrank(matrix, q=rank, niter=4)
    return items, (right * singular).numpy()


def mapped_to_truth(
    truth: Truth, item_ids: np.ndarray, vectors: np.ndarray, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(latent, bias)`` of the ``query`` item ids as the learned ``vectors`` of ``item_ids``
    show them: the least-squares linear map of ``[1, vector]`` onto the true ``[latent, bias]``,
    fitted over ``item_ids`` (an item without a vector gets the map's intercept)."""
    rows = truth.item_rows(item_ids)
    target = np.column_stack([truth.item_latent(rows), truth.arrays["item_bias"][rows]])
    design = np.column_stack([np.ones(len(vectors)), vectors]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    at = np.clip(np.searchsorted(item_ids, query), 0, len(item_ids) - 1)
    known = item_ids[at] == query
    mapped = np.where(known[:, None], design[at] @ coef, coef[0])
    return mapped[:, :-1], mapped[:, -1]
