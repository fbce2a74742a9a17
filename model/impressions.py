"""Impressions and their comparisons, in numpy: what fine-tuning trains on and what evaluation
and the replays score.

* **Impressions** are recommended events (``source > 0``) with feedback, graded
  like > full listen > partial > skip > dislike (:data:`GRADES`).
* **States: what the service would have served.** ``lag`` = 1 day (the daily bundle): every
  impression of UTC day d is scored with the state after the user's last event before 00:00 UTC
  of day d (minus ``snapshot_delay``), so all impressions of one user-day share one state (other
  lags: UTC-aligned buckets of that width). ``lag`` = 0 (the runtime encoder): impressions are
  grouped by session (``session_gap`` of silence starts one) and every impression of a group is
  scored with the state before the group's first impression, so no impression sees the feedback
  of another one it is paired with.
* **Groups and pairs.** Impressions are compared within a group that shares one state: by default
  one user and one lag bucket (``lag`` > 0) or one session (``lag`` = 0); a finer group (a session
  or a bucket width) is cut at lag-bucket boundaries. Every pair of a group with different grades
  counts with the weight of its grade pair (:func:`pair_weight_table`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from model.contract import DAY, DEFAULT_LAG, DEFAULT_SESSION_GAP
from model.data.batching import TemporalSplit
from model.data.events import SKIP_THRESHOLD, Catalog, Events, parse_duration

GRADES = ("dislike", "skip", "partial", "full", "like")  # impression grades, lowest first
FULL_LISTEN = 0.9  # played_ratio at or above which a listen is "full"
SESSION_GAP = parse_duration(DEFAULT_SESSION_GAP)  # seconds of silence that end a session
LAG = parse_duration(DEFAULT_LAG)


def feedback_grades(events: Events) -> np.ndarray:
    """(N,) int64 grade index into :data:`GRADES` of each event's feedback, whatever its source;
    -1 where it has none."""
    return grades_of(events.played_ratio, events.liked, events.disliked)


def grades_of(played_ratio: np.ndarray, liked: np.ndarray, disliked: np.ndarray) -> np.ndarray:
    """:func:`feedback_grades` of the feedback columns (of events, or of a live history)."""
    ratio = played_ratio
    with np.errstate(invalid="ignore"):
        grade = np.select(
            [ratio < SKIP_THRESHOLD, ratio < FULL_LISTEN, ratio >= FULL_LISTEN], [1, 2, 3], -1
        ).astype(np.int64)
    grade[liked] = 4
    grade[disliked] = 0
    return grade


def impression_grades(events: Events) -> np.ndarray:
    """(N,) :func:`feedback_grades`, -1 where the event is not an impression (organic, or a
    recommendation without feedback)."""
    grade = feedback_grades(events)
    grade[events.source <= 0] = -1
    return grade


def pair_weight_table(spec: str = "") -> np.ndarray:
    """(5, 5) weights ``w[hi, lo]`` of a pair whose better impression has grade ``hi``.

    The default is the grade distance (like-vs-skip 3, full-vs-skip 2, like-vs-dislike 4, ...).
    ``spec`` overrides entries: ``"like>skip=4,full>partial=0"`` (0 drops that kind of pair).
    """
    index = np.arange(len(GRADES))
    table = np.clip(index[:, None] - index[None, :], 0, None).astype(np.float64)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        match = re.fullmatch(r"(\w+)\s*>\s*(\w+)\s*=\s*([0-9.eE+-]+)", part)
        if not match:
            raise ValueError(f"pair weight {part!r}: expected hi>lo=weight, e.g. like>skip=4")
        hi, lo, weight = match.groups()
        for name in (hi, lo):
            if name not in GRADES:
                raise ValueError(f"pair weight {part!r}: unknown grade {name!r}; known: {GRADES}")
        h, lo_index = GRADES.index(hi), GRADES.index(lo)
        if h <= lo_index:
            raise ValueError(f"pair weight {part!r}: {hi} is not above {lo}")
        value = float(weight)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"pair weight {part!r}: the weight must be a finite number >= 0")
        table[h, lo_index] = value
    return table


def snapshot_rows(events: Events, lag: int, snapshot_delay: int = 0) -> np.ndarray:
    """(N,) the state the daily bundle serves at each row (``lag`` > 0): the user's last event
    before the start of the row's UTC-aligned ``lag`` bucket (00:00 UTC of its day for 1d) minus
    ``snapshot_delay``; -1 if none."""
    if lag <= 0:
        raise ValueError(f"a snapshot needs lag > 0, got {lag}")
    n = len(events)
    users, offsets = events.user_offsets()
    user_index = np.repeat(np.arange(len(users)), np.diff(offsets))
    user_start = offsets[:-1][user_index]
    cut = events.timestamp // lag * lag - snapshot_delay  # the snapshot is taken before this
    # One sorted key over (user, time): search each row's cut-off among its user's rows.
    t0 = int(cut.min()) if n else 0
    span = int(events.timestamp.max()) - t0 + 1 if n else 1
    key = user_index * span + (events.timestamp - t0)
    state = np.searchsorted(key, user_index * span + (cut - t0), side="left") - 1
    return np.where(state >= user_start, state, -1)


def session_ids(events: Events, gap: int) -> np.ndarray:
    """(N,) non-decreasing session id of each row: a new user or more than ``gap`` seconds of
    silence starts a session."""
    new = np.ones(len(events), dtype=bool)
    new[1:] = (events.user_id[1:] != events.user_id[:-1]) | (np.diff(events.timestamp) > gap)
    return np.cumsum(new)


def group_ids(
    events: Events, rows: np.ndarray, group: str, lag: int, session_gap: int = SESSION_GAP
) -> np.ndarray:
    """(len(rows),) consecutive group ids of impressions at ``rows`` (sorted). ``group``:
    ``"auto"`` (the lag bucket when ``lag`` > 0, sessions when 0), ``"lag"`` (one user and one
    ``lag`` bucket, one day when ``lag`` is 0), ``"session"`` or a bucket width such as ``"6h"``.
    With ``lag`` > 0 a group never spans two lag buckets, so it shares one daily state."""
    if group == "auto":
        group = "lag" if lag > 0 else "session"
    keys = [events.user_id[rows]]
    if group == "session":
        keys.append(session_ids(events, session_gap)[rows])
    else:
        width = (lag or DAY) if group == "lag" else parse_duration(group)
        if width <= 0:
            raise ValueError(f"group {group!r}: the bucket width must be > 0")
        keys.append(events.timestamp[rows] // width)
    if lag > 0:
        keys.append(events.timestamp[rows] // lag)
    # Every key is non-decreasing in time within a user, so a group is a run of rows.
    change = np.zeros(len(rows), dtype=bool)
    change[:1] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.cumsum(change) - 1


@dataclass(frozen=True)
class Impressions:
    """Impressions with a state, sorted by row. All arrays are (M,) int64."""

    row: np.ndarray  # the impression's row in the events table
    state: np.ndarray  # the row whose state scores it (one per group)
    grade: np.ndarray  # index into GRADES
    group: np.ndarray  # comparison group id
    head: np.ndarray  # 0: scored by the offline user head, 1: by the runtime (lag-0) head
    popularity: np.ndarray  # the item's positive events before the impression's UTC day
    seen: np.ndarray  # the item's events of any kind then (0: the day's bundle lacks it, cold)

    def __len__(self) -> int:
        return len(self.row)

    def take(self, index: np.ndarray) -> Impressions:
        return Impressions(**{k: v[index] for k, v in vars(self).items()})


def find_impressions(
    events: Events,
    lag: int,
    group: str = "auto",
    *,
    snapshot_delay: int = 0,
    session_gap: int = SESSION_GAP,
    head: int = 0,
    reveal: int = 0,
) -> Impressions:
    """Every impression of ``events`` that has a state, with the state the serving path would
    have used (see the module docstring): the daily snapshot when ``lag`` > 0, else the state
    before the first impression of its group. Groups without a state are dropped. ``head``:
    which user head scores them (:attr:`Impressions.head`). ``reveal`` > 0 (lag 0): the state
    after the first ``reveal`` events of the session instead, and only the impressions after
    them, as a client sends what the user did so far in the session."""
    grade = impression_grades(events)
    rows = np.flatnonzero(grade >= 0)
    group_of = group_ids(events, rows, group, lag, session_gap)
    if lag > 0:
        state = snapshot_rows(events, lag, snapshot_delay)[rows]
    else:
        _, first_index = np.unique(group_of, return_index=True)
        first = rows[first_index]  # each group's first impression
        before = first - 1
        same_user = (before >= 0) & (events.user_id[np.maximum(before, 0)] == events.user_id[first])
        state = np.where(same_user, before, -1)[group_of]
        if reveal > 0:
            session = session_ids(events, session_gap)
            starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
            known = starts[session[first] - 1] + reveal - 1  # each group's session, r events in
            known = np.minimum(known, len(events) - 1)
            inside = session[known] == session[first]
            state = np.where(inside, known, -1)[group_of]
            state = np.where(rows > state, state, -1)  # the revealed events are not scored
    keep = np.flatnonzero(state >= 0)
    _, renumbered = np.unique(group_of[keep], return_inverse=True)  # consecutive again
    rows = rows[keep]
    day = events.timestamp[rows] // DAY * DAY  # the daily bundle's item vectors count until then
    return Impressions(
        rows,
        state[keep],
        grade[rows],
        renumbered.astype(np.int64),
        np.full(len(keep), head, dtype=np.int64),
        events.positives_before(events.item_id[rows], day),
        events.events_before(events.item_id[rows], day),
    )


def both_heads(offline: Impressions, runtime: Impressions) -> Impressions:
    """The impressions of both user heads in one set: each impression once with the daily state
    (``offline``, head 0) and once with the runtime one (head 1), in separate groups (a pair never
    mixes heads), sorted by row."""
    shifted = dataclasses.replace(
        runtime, group=runtime.group + (int(offline.group.max()) + 1 if len(offline) else 0)
    )
    merged = Impressions(
        **{k: np.concatenate([getattr(offline, k), getattr(shifted, k)]) for k in vars(offline)}
    )
    return merged.take(np.argsort(merged.row, kind="stable"))


def group_pairs(
    group: np.ndarray, grade: np.ndarray, table: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hi, lo, w)``: every pair of one group with ``grade[hi] > grade[lo]`` and weight > 0."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(g)])
    size_of, start_of = np.repeat(sizes, sizes), np.repeat(starts, sizes)  # per impression
    i = np.repeat(np.arange(len(g)), size_of)  # each impression once per member of its group
    offset = np.arange(len(i)) - np.repeat(np.cumsum(size_of) - size_of, size_of)
    j = np.repeat(start_of, size_of) + offset
    hi, lo = order[i], order[j]
    keep = grade[hi] > grade[lo]
    hi, lo = hi[keep], lo[keep]
    weight = table[grade[hi], grade[lo]]
    keep = weight > 0
    return hi[keep], lo[keep], weight[keep]


def popularity_counts(events: Events, split: TemporalSplit | None, catalog: Catalog) -> np.ndarray:
    """(C,) float32 number of positive training events (all events without a ``split``) of each
    catalog item: MostPop's score."""
    before = events.timestamp < split.split_time if split else True
    train = events.take(before & events.positive)
    return np.bincount(catalog.column(train.item_id), minlength=len(catalog)).astype(np.float32)
