"""``argus finetune``: two-tower pairwise ranking of impressions, in one transformer pass.

The user tower is ``u = P_u h`` (``h``: the transformer's state after an event), the
item tower ``v = MLP(e_item)``, the score ``s = <u, v>``; these are the vectors the service serves.

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
  counts with the weight of its grade pair (:func:`pair_weight_table`):
  ``L = sum w softplus(-(s_hi - s_lo)) / sum w``; the metric is the weighted PairAccuracy.
* **One pass.** A training sample is one history chunk of one user (the chunks of pretraining):
  the transformer runs over it once and every impression whose state lies in the chunk gathers that
  state by index. :func:`impression_level_backward` is the reference that re-runs the transformer
  on each group's prefix; it exists to prove the two equal and to measure the speed-up.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.argus import PARTS, Argus, ArgusConfig
from model.checkpoint import model_config, read_checkpoint
from model.config import apply_overrides
from model.contract import DAY
from model.data.batching import Batch, Spans, bucket_batches, chunk_spans, make_batch
from model.data.events import SKIP_THRESHOLD, Events, parse_duration, read_events
from model.losses import ItemFrequencies, ItemTrend, retrieval_loss
from model.runtime import Runtime
from model.train import Job, TrainConfig, Trainer, TrainSummary, epoch_batches, saved_state

GRADES = ("dislike", "skip", "partial", "full", "like")  # impression grades, lowest first
FULL_LISTEN = 0.9  # played_ratio at or above which a listen is "full"
SESSION_GAP = 1_800  # default seconds of silence that end a session


def feedback_grades(events: Events) -> np.ndarray:
    """(N,) int64 grade index into :data:`GRADES` of each event's feedback, whatever its source;
    -1 where it has none."""
    ratio = events.played_ratio
    with np.errstate(invalid="ignore"):
        grade = np.select(
            [ratio < SKIP_THRESHOLD, ratio < FULL_LISTEN, ratio >= FULL_LISTEN], [1, 2, 3], -1
        ).astype(np.int64)
    grade[events.liked] = 4
    grade[events.disliked] = 0
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
) -> Impressions:
    """Every impression of ``events`` that has a state, with the state the serving path would
    have used (see the module docstring): the daily snapshot when ``lag`` > 0, else the state
    before the first impression of its group. Groups without a state are dropped. ``head``:
    which user head scores them (:attr:`Impressions.head`)."""
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


def pairwise_loss(
    scores: torch.Tensor,
    hi: torch.Tensor,
    lo: torch.Tensor,
    weight: torch.Tensor,
    total_weight: float | None = None,
) -> torch.Tensor:
    """``sum w softplus(-(s_hi - s_lo)) / sum w`` (0 with no pairs, still attached to the graph).

    ``total_weight`` replaces the denominator when these pairs are one part of a larger set.
    """
    if len(hi) == 0:
        return scores.sum() * 0.0
    denominator = weight.sum() if total_weight is None else total_weight
    return (weight * F.softplus(scores[lo] - scores[hi])).sum() / denominator


def pair_accuracy(scores: np.ndarray, hi: np.ndarray, lo: np.ndarray, weight: np.ndarray) -> float:
    """Weighted share of pairs ordered correctly (ties count half); NaN with no pairs."""
    if len(hi) == 0:
        return float("nan")
    correct = (scores[hi] > scores[lo]) + 0.5 * (scores[hi] == scores[lo])
    return float((weight * correct).sum() / weight.sum())


# -- training samples ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    """History chunks with impressions: chunk k's impressions are ``offsets[k]:offsets[k + 1]``
    of ``impressions``, each scored by a state inside the chunk."""

    spans: Spans
    offsets: np.ndarray  # (S + 1,) int64
    impressions: Impressions


def make_samples(
    events: Events, impressions: Impressions, max_len: int, min_history: int
) -> Samples:
    """Cut every user's history into the non-overlapping chunks of pretraining and give each
    impression to the chunk holding its state; an impression whose state has fewer than
    ``min_history`` events of the chunk behind it is dropped, and so are chunks left without any."""
    spans = chunk_spans(events.user_offsets()[1], max_len)
    chunk = np.searchsorted(spans.start, impressions.state, side="right") - 1
    keep = impressions.state - spans.start[chunk] + 1 >= min_history
    impressions, chunk = impressions.take(np.flatnonzero(keep)), chunk[keep]
    order = np.argsort(chunk, kind="stable")
    impressions, chunk = impressions.take(order), chunk[order]
    used, counts = np.unique(chunk, return_counts=True)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Samples(spans.take(used), offsets, impressions)


def every_chunk(events: Events, max_len: int) -> Samples:
    """Every pretraining chunk, with no impressions (a data set without any: retrieval only)."""
    spans = chunk_spans(events.user_offsets()[1], max_len)
    empty = np.zeros(0, np.int64)
    return Samples(
        spans,
        np.zeros(len(spans) + 1, np.int64),
        Impressions(empty, empty, empty, empty, empty, empty),
    )


@dataclass(frozen=True)
class ImpressionBatch:
    """The impressions of a batch of chunks and their pairs. Arrays are numpy."""

    sample: np.ndarray  # (M,) batch row of the chunk holding the state
    position: np.ndarray  # (M,) the state's position in that row
    item_id: np.ndarray  # (M,)
    artist_id: np.ndarray  # (M,)
    grade: np.ndarray  # (M,)
    group: np.ndarray  # (M,) group id, unique within the batch (a group never spans two chunks)
    runtime: np.ndarray  # (M,) bool: scored by the runtime (lag-0) user head
    log_popularity: np.ndarray  # (M,) float32 log1p(Impressions.popularity)
    hi: np.ndarray  # (P,) index of the better impression of each pair
    lo: np.ndarray  # (P,)
    weight: np.ndarray  # (P,) float32

    def to_torch(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        return {
            name: torch.from_numpy(np.ascontiguousarray(value)).to(device)
            for name, value in vars(self).items()
        }


def sample_batch(
    events: Events,
    samples: Samples,
    index: np.ndarray,
    table: np.ndarray,
    max_impressions: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[Batch, ImpressionBatch]:
    """The padded chunks ``index`` of ``samples`` and their impressions; a chunk with more than
    ``max_impressions`` (> 0) keeps a random subset of that size (drawn from ``rng``)."""
    spans = samples.spans.take(index)
    parts: list[np.ndarray] = []
    for k in index.tolist():
        members = np.arange(samples.offsets[k], samples.offsets[k + 1])
        if 0 < max_impressions < len(members):
            rng = rng or np.random.default_rng(0)
            members = np.sort(rng.choice(members, max_impressions, replace=False))
        parts.append(members)
    members = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    imp = samples.impressions.take(members)
    sample = np.repeat(np.arange(len(index)), [len(p) for p in parts])
    # Groups are made unique per chunk: one split by a chunk boundary forms two groups.
    key = np.stack([sample, imp.group])
    _, group = np.unique(key, axis=1, return_inverse=True)
    group = group.reshape(-1).astype(np.int64)
    hi, lo, weight = group_pairs(group, imp.grade, table)
    return make_batch(events, spans), ImpressionBatch(
        sample=sample.astype(np.int64),
        position=imp.state - spans.start[sample],
        item_id=events.item_id[imp.row],
        artist_id=events.artist_id[imp.row],
        grade=imp.grade,
        group=group,
        runtime=imp.head == 1,
        log_popularity=np.log1p(imp.popularity).astype(np.float32),
        hi=hi,
        lo=lo,
        weight=weight.astype(np.float32),
    )


def tower_scores(
    model: Argus,
    h: torch.Tensor,
    item_id: torch.Tensor,
    artist_id: torch.Tensor,
    taste: torch.Tensor | None = None,
    log_popularity: torch.Tensor | None = None,
    runtime: torch.Tensor | bool = False,
) -> torch.Tensor:
    """(M, D) states (and (M, R) tastes) and (M,) impressed items -> (M,) scores ``<u, v>``;
    ``runtime``: the lag-0 user head's, for all or (an (M,) bool mask) some impressions."""
    v = model.item_vector(item_id, artist_id, log_popularity)
    if isinstance(runtime, torch.Tensor):
        u = torch.where(
            runtime[:, None],
            model.user_vector(h, taste, runtime=True),
            model.user_vector(h, taste),
        )
    else:
        u = model.user_vector(h, taste, runtime=runtime)
    return (u * v).sum(-1)


@dataclass(frozen=True)
class ItemPopularity:
    """log1p(positive events) of each item of a training set: the ranking towers' popularity
    input (0 for an item it never saw)."""

    ids: torch.Tensor  # (C,) sorted
    counts: torch.Tensor  # (C,) float32

    @classmethod
    def of(cls, events: Events, device: str | torch.device = "cpu") -> ItemPopularity:
        ids, counts = events.positive_counts()
        return cls(torch.from_numpy(ids).to(device), torch.from_numpy(counts).float().to(device))

    def log_counts(self, item_id: torch.Tensor) -> torch.Tensor:
        if len(self.ids) == 0:
            return torch.zeros(item_id.shape, device=item_id.device)
        where = torch.searchsorted(self.ids, item_id).clamp(max=len(self.ids) - 1)
        found = self.ids[where] == item_id
        return torch.log1p(torch.where(found, self.counts[where], 0.0))


@dataclass(frozen=True)
class RetrievalTraining:
    """What the retrieval loss needs besides the batch (see :func:`model.losses.retrieval_loss`)."""

    frequencies: ItemFrequencies  # of the training positives: log Q
    weight: float
    horizon: int  # seconds
    window: int
    temperature: float
    negatives: int
    generator: torch.Generator  # its own random stream: the rest of training draws the same
    trend: ItemTrend | None = None  # of the training positives, for a model with retrieval_trend


class PairwiseObjective(nn.Module):
    """One-pass fine-tuning loss: the transformer runs once over the batch of chunks. With
    ``retrieval``, the retrieval space's loss is added (on the same chunks)."""

    def __init__(self, model: Argus, retrieval: RetrievalTraining | None = None) -> None:
        super().__init__()
        self.model = model
        self.retrieval = retrieval

    def forward(
        self, batch: dict[str, torch.Tensor], imp: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        h = self.model(batch)  # (B, L, D)
        at = imp["sample"], imp["position"]
        tastes = self.model.taste(batch) if self.model.has_retrieval else None  # (B, L, R)
        taste = tastes[at] if tastes is not None else None
        scores = tower_scores(
            self.model,
            h[at],
            imp["item_id"],
            imp["artist_id"],
            taste,
            imp["log_popularity"],
            imp["runtime"],
        )
        pairwise = pairwise_loss(scores, imp["hi"], imp["lo"], imp["weight"])
        with torch.no_grad():
            s_hi, s_lo = scores[imp["hi"]], scores[imp["lo"]]
            correct = (s_hi > s_lo).float() + 0.5 * (s_hi == s_lo).float()
            accuracy = (imp["weight"] * correct).sum() / imp["weight"].sum().clamp(min=1e-12)
        out = {"loss": pairwise, "pair_accuracy": accuracy}
        r = self.retrieval
        if r is not None:
            uniform = r.frequencies.sample_uniform(r.negatives, r.generator)
            retrieval = retrieval_loss(
                self.model,
                batch,
                r.frequencies,
                uniform,
                horizon=r.horizon,
                window=r.window,
                temperature=r.temperature,
                generator=r.generator,
                taste=tastes,  # computed once for both losses
                trend=r.trend,
                h=h,
            )
            out = {
                "loss": pairwise + r.weight * retrieval,
                "pairwise": pairwise.detach(),
                "retrieval": retrieval.detach(),
                "pair_accuracy": accuracy,
            }
        return out


def impression_level_backward(
    model: Argus,
    events: Events,
    spans: Spans,
    imp: ImpressionBatch,
    *,
    prefix_batch: int = 32,
    device: str | torch.device = "cpu",
) -> float:
    """The reference trainer: the same loss as :class:`PairwiseObjective` on the same batch, but
    the transformer re-runs on each group's own prefix (the chunk up to the group's latest state).

    Prefixes go through ``prefix_batch`` at a time, length-bucketed, and each part's share of the
    loss is back-propagated at once (gradients accumulate), so memory stays bounded. Returns the
    loss; ``spans`` are the batch's chunks, in batch-row order.
    """
    n_groups = int(imp.group.max()) + 1 if len(imp.group) else 0
    total_weight = float(imp.weight.sum())
    if n_groups == 0 or total_weight == 0:
        return 0.0
    group_sample = np.zeros(n_groups, dtype=np.int64)
    group_sample[imp.group] = imp.sample
    group_end = np.zeros(n_groups, dtype=np.int64)
    np.maximum.at(group_end, imp.group, imp.position + 1)
    start = spans.start[group_sample]
    prefixes = Spans(start, start + group_end, start.copy())
    tensors = imp.to_torch(device)
    pair_group = imp.group[imp.hi]
    total = 0.0
    for part in bucket_batches(prefixes, batch_size=prefix_batch):
        batch = make_batch(events, prefixes.take(part)).to_torch(device)
        h = model(batch)  # (G', L', D)
        local = np.full(n_groups, -1, dtype=np.int64)
        local[part] = np.arange(len(part))
        mine = np.flatnonzero(local[imp.group] >= 0)  # impressions of these groups
        where = np.full(len(imp.group), -1, dtype=np.int64)
        where[mine] = np.arange(len(mine))
        rows = torch.from_numpy(local[imp.group[mine]]).to(device)
        positions = tensors["position"][mine]
        items = tensors["item_id"][mine]
        taste = model.taste(batch)[rows, positions] if model.has_retrieval else None
        scores = tower_scores(
            model,
            h[rows, positions],
            items,
            tensors["artist_id"][mine],
            taste,
            tensors["log_popularity"][mine],
            tensors["runtime"][mine],
        )
        pairs = np.flatnonzero(local[pair_group] >= 0)
        hi = torch.from_numpy(where[imp.hi[pairs]]).to(device)
        lo = torch.from_numpy(where[imp.lo[pairs]]).to(device)
        loss = pairwise_loss(scores, hi, lo, tensors["weight"][pairs], total_weight)
        loss.backward()
        total += float(loss.detach())
    return total


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    init: str = ""  # pretrained run directory or checkpoint; "" trains from scratch
    lag: str = "1d"  # "1d": the daily bundle's state; "0": the runtime encoder's (per session)
    runtime_lag: str = "0"  # a second user head for the service's runtime encoder; "": none
    group: str = "auto"  # "auto" (lag bucket; sessions at lag 0), "lag", "session" or e.g. "6h"
    snapshot_delay: str = "0"  # the daily snapshot is taken this long before the bucket starts
    session_gap: str = "30m"  # silence that starts a new session
    pair_weights: str = ""  # grade-pair weight overrides, e.g. "like>skip=4"; "" = the default
    max_impressions: int = 256  # per chunk, step and user head (a random subset beyond it); 0: all
    min_history: int = 1  # events of the chunk a state must have seen
    tower_dim: int = 0  # width of u and v; 0: the model's d_model
    tower_lr: float = 3e-3  # the towers' own learning rate (they start from scratch); 0: lr
    item_prior: bool = True  # u's last coordinate is 1: v's last one is a non-personal prior
    taste_shortcut: bool = True  # u, v also carry (a * taste, e_r): the taste's score, scaled
    # the towers read the pooled taste at all (off, the default: they read the state alone, and
    # the personal part of the score is the transformer's; with it they ignore the state)
    tower_taste: bool = False
    # the retrieval space (/candidates): a pooled-history tower trained on future positives
    retrieval_dim: int = 64  # 0: no retrieval space (the bundle then retrieves with the towers)
    retrieval_weight: float = 1.0  # its loss beside the pairwise one
    retrieval_lr: float = 1e-2  # its own learning rate (its table starts from scratch)
    retrieval_horizon: str = "7d"  # targets: positives this soon after the state ...
    retrieval_window: int = 128  # ... among its next this many events
    retrieval_temperature: float = 0.05
    retrieval_negatives: int = 1024  # uniform negatives beside the in-batch ones
    retrieval_trend: str = "7d"  # the score adds w(user) * log1p(item's positives then); "0": none
    lr: float = 1e-3
    table_lr: float = 0.0  # the table at the backbone's rate: it arrives trained
    warmup_steps: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lag", "snapshot_delay", "session_gap"):
            parse_duration(getattr(self, name))
        if self.runtime_lag:
            parse_duration(self.runtime_lag)
        if self.group not in ("auto", "lag", "session"):
            parse_duration(self.group)
        pair_weight_table(self.pair_weights)
        parse_duration(self.retrieval_horizon)
        parse_duration(self.retrieval_trend)
        for name in ("max_impressions", "tower_dim", "retrieval_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_history < 1:
            raise ValueError(f"min_history must be >= 1, got {self.min_history}")

    @property
    def lag_seconds(self) -> int:
        return parse_duration(self.lag)

    @property
    def runtime_head(self) -> bool:
        """A second user head, for ``runtime_lag``: set, and not the lag the first one has."""
        return bool(self.runtime_lag) and parse_duration(self.runtime_lag) != self.lag_seconds

    def impressions(self, events: Events) -> Impressions:
        """The impressions of ``events`` with the states and groups this config trains on: the
        first head's at ``lag``, and with a runtime head also each at ``runtime_lag`` (its
        groups: sessions at lag 0)."""

        def at(lag: int, group: str, head: int) -> Impressions:
            return find_impressions(
                events,
                lag,
                group,
                snapshot_delay=parse_duration(self.snapshot_delay),
                session_gap=parse_duration(self.session_gap),
                head=head,
            )

        offline = at(self.lag_seconds, self.group, 0)
        if not self.runtime_head:
            return offline
        return both_heads(offline, at(parse_duration(self.runtime_lag), "auto", 1))

    def retrieval_training(
        self, train: Events, device: str | torch.device
    ) -> RetrievalTraining | None:
        if not self.retrieval_dim:
            return None
        item, time = train.item_id[train.positive], train.timestamp[train.positive]
        window = parse_duration(self.retrieval_trend)
        trend = ItemTrend.of(item, time, window) if window else None
        return RetrievalTraining(
            frequencies=ItemFrequencies.from_item_ids(item).to(device),
            weight=self.retrieval_weight,
            horizon=parse_duration(self.retrieval_horizon),
            window=self.retrieval_window,
            temperature=self.retrieval_temperature,
            negatives=self.retrieval_negatives,
            generator=torch.Generator(device=device).manual_seed(self.seed),
            trend=trend.to(device) if trend is not None else None,
        )

    def init_state(self) -> dict[str, Any] | None:
        return read_checkpoint(self.init) if self.init else None

    def model_config(self, init: dict[str, Any] | None = None) -> ArgusConfig:
        """The pretrained model's config (or the preset's, from scratch) with the towers added;
        ``--max-len`` and ``--model`` overrides apply either way."""
        if init is None and self.init:
            init = self.init_state()
        if init is None:
            base = self.preset_config()
        else:
            base = model_config(init)
            if self.max_len:  # time features only, no positions: any length works
                base = dataclasses.replace(base, max_len=self.max_len)
            base = apply_overrides(base, list(self.model))
        if base.objective != "argus":
            raise ValueError(
                f"{self.init}: fine-tuning needs an ARGUS backbone, not objective "
                f"{base.objective!r} (a SASRec model never reads the impressions' context)"
            )
        return dataclasses.replace(
            base,
            tower_dim=self.tower_dim or base.d_model,
            retrieval_dim=self.retrieval_dim,
            runtime_head=self.runtime_head,
            item_prior=self.item_prior,
            taste_shortcut=self.taste_shortcut and self.tower_taste and self.retrieval_dim > 0,
            tower_taste=self.tower_taste,
            retrieval_trend=parse_duration(self.retrieval_trend) if self.retrieval_dim else 0,
        )


# -- the job -------------------------------------------------------------------------------------


def finetune(cfg: FinetuneConfig, *, progress: bool = True, resume: bool = False) -> TrainSummary:
    """Fine-tune the two towers (and the backbone) as ``cfg`` says; see the module docstring.

    The pretraining heads (NIP, FP, temperature) are frozen: the pairwise loss does not reach them.
    """
    runtime = Runtime.setup(cfg.device)
    with runtime.session():
        saved = saved_state(cfg, resume)
        init = cfg.init_state()
        model_cfg = cfg.model_config(init)
        events = read_events(cfg.data)
        split = cfg.split(events)
        train = split.train(events) if split else events
        train_until = split.split_time if split else int(events.timestamp.max()) + 1
        if init is not None and init["train_until"] > train_until:
            raise ValueError(
                f"{cfg.init}: pretrained on events up to t={init['train_until']}, after this "
                f"run's test window starts (t={train_until}); use the same or an earlier split"
            )
        impressions = cfg.impressions(train)
        samples = make_samples(train, impressions, model_cfg.max_len, cfg.min_history)
        if len(samples.spans) == 0 and not cfg.retrieval_dim:
            raise ValueError(
                f"{cfg.data}: no impressions (recommended events with feedback) with a state "
                f"before their time - lag ({cfg.lag}) in the training events"
            )
        if len(samples.spans) == 0:  # e.g. MovieLens: nothing to rank, the retrieval space learns
            if progress:
                print(f"{cfg.data}: no impressions; training the retrieval space only")
            samples = every_chunk(train, model_cfg.max_len)
        torch.manual_seed(cfg.seed)
        model = Argus(model_cfg)
        if init is not None and saved is None:  # a resumed run loads its own weights
            _load_backbone(model, init["model"], cfg.init)
        for frozen in model.pretraining_heads():
            frozen.requires_grad_(False)
        model.log_temperature.requires_grad_(False)
        table = pair_weight_table(cfg.pair_weights)
        # with a runtime head every impression is there twice: the cap counts both heads' share
        per_chunk = cfg.max_impressions * (2 if cfg.runtime_head else 1)

        def step(objective: nn.Module, index: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
            rng = np.random.default_rng(int(torch.randint(2**62, ())))  # seeded per step
            batch, imp = sample_batch(train, samples, index, table, per_chunk, rng)
            with runtime.autocast():
                losses = objective(batch.to_torch(runtime.device), imp.to_torch(runtime.device))
            return losses, int(batch.lengths.sum())

        preset = init["train_config"].get("preset", cfg.preset) if init else cfg.preset
        job = Job(
            cfg=cfg,
            stage="finetune",
            preset=preset,
            objective_name="pairwise",
            model=model,
            objective=PairwiseObjective(model, cfg.retrieval_training(train, runtime.device)),
            epoch_batches=functools.partial(
                epoch_batches, samples.spans, cfg, model_cfg.max_len, runtime
            ),
            step=step,
            train_until=train_until,
        )
        return Trainer(job, runtime, saved, progress=progress).run()


def _load_backbone(model: Argus, weights: dict[str, torch.Tensor], source: str) -> None:
    """Pretrained weights into ``model``; only the new towers may be missing from them."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    new = {name for names in PARTS.values() for name in names}
    missing = [n for n in missing if n.split(".")[0] not in new]
    if unexpected or missing:
        raise ValueError(
            f"{source}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
