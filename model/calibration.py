"""Calibrations on held-out days, after fine-tuning: the cold level (``argus finetune --set
cold_calibration=1d``), the feedback readout (``readout_calibration``, :mod:`model.readout`) and
the retrieval trend's weight (``trend_calibration``, :func:`calibrate_trend`); before it, the
retrieval trend's window (``retrieval_trend=auto``, :func:`choose_trend_window`); and during it,
the held-out ranking that stops the towers early (``early_stopping``, :class:`HeldOutRanking`).

A model with ``cold_items`` scores an item it knows too little of with one learned level (plus
the item's counts). Fine-tuning learns that level against the items the training days show, whose
embeddings have learned from every event of the window, the day being ranked included. The
service ranks against the newest items of its catalog, whose embeddings have learned from a few.
So the level that training finds sits too high or too low for the days the service serves.

Calibration holds the impressions of the last days of the training window out of fine-tuning's
pairs (the retrieval space still learns from those days) and scores them as the bundle would
(each item's counts as of the cut, states at the fine-tuning lag). Then it moves two offsets to
where fine-tuning's pairwise loss on them is least: ``δ`` on the level of every cold item, and
``δ_u`` on top of it for an item with no event at all (``Argus.unseen_offset``). The items
under ``item_min_events`` share the level with those never seen, but their counts say something
and the held-out days show how much. Only pairs with a cold item on one side depend on the
offsets, and the loss is convex in both.

The retrieval trend's weight meets the same skew in the retrieval space. Its item table learns
from every training day, so on those days it already knows which items their users went on to
like, and the trend column (what was liked in the hours before the day) adds nothing: fine-tuning
leaves its weight near zero. The days the service answers for are days the table has not seen;
where the catalog turns over fast (KuaiRand's videos) what is trending is then most of what there
is to know. So a second retrieval space is trained on the days before a held-out one, beside the
fine-tuned model and read the same way, and the offset on the trend weight that best recalls the
held-out day's positives with it is added to the model's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from model.argus import Argus
from model.contract import DAY
from model.data.events import Events, parse_duration
from model.evaluate import impression_scores
from model.future import WindowTargets, top_excluding
from model.impressions import Impressions, group_pairs
from model.inference import ItemPopularity, item_vectors, readout_inputs, user_vectors
from model.metrics import pair_accuracy, recall_shares
from model.readout import RIDGES, Readout

CALIBRATION_FILE = "cold_calibration.json"
STOPPING_FILE = "early_stopping.json"
READOUT_FILE = "readout.json"
TREND_FILE = "trend_window.json"
TREND_CALIBRATION_FILE = "trend_calibration.json"
# the trend weight's offsets tried, in units of the spread of the rest of the retrieval score
# over that of the trend column
TREND_OFFSETS = (-0.25, -0.125, -0.0625, 0.0, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
# the windows ``retrieval_trend=auto`` chooses from: what is popular now; all-time popularity has
# a column of its own (``retrieval_popularity``), so none is longer than the 7-day default
TREND_WINDOWS = ("3h", "6h", "12h", "1d", "3d", "7d")
TREND_DEFAULT = "7d"
ROUNDS = 5  # of coordinate descent over the two offsets


class Report:
    """A dataclass that fine-tuning writes beside the checkpoint, as indented JSON."""

    FILE: ClassVar[str]

    def write(self, out: str | Path) -> Path:
        path = Path(out) / self.FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")  # type: ignore[call-overload]
        return path


@dataclass(frozen=True)
class ColdCalibration(Report):
    """What calibration found: the level before and after, on how many pairs, and the weighted
    PairAccuracy of the held-out pairs with each."""

    FILE: ClassVar[str] = CALIBRATION_FILE

    level_before: float
    level_after: float
    unseen_offset: float  # added to the level for an item with no event at all
    impressions: int
    pairs: int
    mixed_pairs: int  # pairs the offsets decide: one cold (or never seen) item, one not
    pair_accuracy_before: float
    pair_accuracy_after: float
    loss_before: float  # the weighted pairwise loss of fine-tuning on them
    loss_after: float

    def line(self) -> str:
        return (
            f"cold level {self.level_before:+.3f} -> {self.level_after:+.3f} "
            f"({self.unseen_offset:+.3f} more for an item never seen) on "
            f"{self.mixed_pairs:,} of {self.pairs:,} held-out pairs (PairAccuracy "
            f"{self.pair_accuracy_before:.4f} -> {self.pair_accuracy_after:.4f})"
        )


class HeldOutRanking:
    """The weighted PairAccuracy of ``model``'s towers, as they are when called, on held-out
    ``impressions`` (rows of ``events``, which holds their histories), scored as a bundle cut
    before them would score them (each item's counts from ``counts_until``): what early stopping
    watches. With ``place_cold`` the cold level is first placed on them, as calibration will
    place it (:func:`calibrate_cold_level`): until then it is not the level the service serves,
    and on KuaiRand it swung the held-out PairAccuracy between 0.81 and 0.90 from one epoch to
    the next."""

    def __init__(
        self,
        model: Argus,
        events: Events,
        impressions: Impressions,
        counts_until: Events,
        weights: np.ndarray,
        device: str | torch.device = "cpu",
        *,
        place_cold: bool = False,
    ) -> None:
        self.model, self.events, self.impressions, self.device = model, events, impressions, device
        self.place_cold = place_cold
        self.popularity = ItemPopularity.of(counts_until, device)
        self.hi, self.lo, self.w = group_pairs(impressions.group, impressions.grade, weights)

    def scores(self) -> np.ndarray:
        """The model's scores of the impressions, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        scores = impression_scores(
            self.model,
            self.events,
            self.impressions,
            device=self.device,
            popularity=self.popularity,
        )
        self.model.train(was_training)
        return scores

    def cold(self) -> tuple[np.ndarray, np.ndarray]:
        """Which impressions' items the model scores as cold, and which have no event at all."""
        item = torch.from_numpy(self.events.item_id[self.impressions.row]).to(self.device)
        cold = self.popularity.cold(item, self.model).cpu().numpy()
        return cold, self.popularity.unseen(item).cpu().numpy()

    def __call__(self) -> dict[str, float]:
        """The weighted PairAccuracy and fine-tuning's pairwise loss of the pairs."""
        scores = self.scores()
        if self.place_cold:
            scores, _, _ = place_cold(scores, *self.cold(), self.hi, self.lo, self.w)
        return {
            "pair_accuracy": pair_accuracy(scores, self.hi, self.lo, self.w),
            "loss": pair_loss(scores, self.hi, self.lo, self.w),
        }


@dataclass(frozen=True)
class EarlyStopping(Report):
    """What early stopping saw: the held-out PairAccuracy at each evaluated step, the step whose
    weights the towers and the backbone kept, and the step they stopped training at."""

    FILE: ClassVar[str] = STOPPING_FILE

    scores: dict[str, float]  # step -> held-out PairAccuracy
    losses: dict[str, float]  # step -> fine-tuning's pairwise loss on the held-out pairs
    best_step: int
    stopped_step: int
    steps: int  # the run's, the retrieval space's included
    impressions: int
    pairs: int

    def line(self) -> str:
        best, last = self.scores[str(self.best_step)], list(self.scores.values())[-1]
        return (
            f"towers and backbone kept at step {self.best_step:,} and stopped at "
            f"{self.stopped_step:,} of {self.steps:,}: PairAccuracy of {self.pairs:,} "
            f"held-out pairs {best:.4f} (last evaluated {last:.4f})"
        )


@dataclass(frozen=True)
class TrendChoice(Report):
    """What :func:`choose_trend_window` found: each window's share of the next day's positives
    that its list held, over the last ``days`` days of the training events, and the choice."""

    FILE: ClassVar[str] = TREND_FILE

    window: str
    hit_rates: dict[str, float]
    days: int
    positives: int
    top: int

    def line(self) -> str:
        default = self.hit_rates.get(TREND_DEFAULT, float("nan"))
        return (
            f"retrieval trend window {self.window}: its top {self.top} held "
            f"{self.hit_rates.get(self.window, float('nan')):.3f} of the next day's "
            f"{self.positives:,} positives over {self.days} days ({TREND_DEFAULT}: {default:.3f})"
        )


def choose_trend_window(
    train: Events, *, days: int = 7, top: int = 100, margin: float = 0.05
) -> TrendChoice:
    """The retrieval trend's window for this log. At each of the last ``days`` UTC day starts
    of ``train``, each window of :data:`TREND_WINDOWS` lists the ``top`` items by positive
    events in the window before it (what the day's bundle would hold), and scores the share of
    that day's positives whose item the list holds. The best window wins if it beats the 7-day
    default by more than ``margin`` (relative); else the default stays. A log whose catalog
    turns over within a day (short videos) gets a short window; one whose popularity drifts
    slowly keeps 7 days. Too short a log (under two days) keeps the default."""
    positive = train.take(train.positive)
    if len(positive) == 0:
        return TrendChoice(TREND_DEFAULT, {}, 0, 0, top)
    first, last = int(positive.timestamp.min()), int(positive.timestamp.max())
    starts = [d for d in range(last // DAY * DAY, first, -DAY)][:days]
    starts = [d for d in starts if d - first >= DAY]
    ids = np.unique(positive.item_id)
    nexts = [(positive.timestamp >= d) & (positive.timestamp < d + DAY) for d in starts]
    total = int(sum(int(n.sum()) for n in nexts))
    if not total:
        return TrendChoice(TREND_DEFAULT, {}, len(starts), 0, top)
    rates = {}
    for window in TREND_WINDOWS:
        hits = 0
        for day, following in zip(starts, nexts, strict=True):
            counts = positive.positives_before(ids, np.full(len(ids), day), parse_duration(window))
            listed = ids[np.argsort(-counts, kind="stable")[:top]]
            hits += int(np.isin(positive.item_id[following], listed).sum())
        rates[window] = hits / total
    best = max(TREND_WINDOWS, key=lambda w: rates[w])
    chosen = best if rates[best] > (1.0 + margin) * rates[TREND_DEFAULT] else TREND_DEFAULT
    return TrendChoice(chosen, rates, len(starts), total, top)


@dataclass(frozen=True)
class TrendCalibration(Report):
    """What :func:`calibrate_trend` found: recall@``top`` of the held-out positives by the
    second retrieval space at each offset on the trend weight, and the offset added."""

    FILE: ClassVar[str] = TREND_CALIBRATION_FILE

    offset: float
    unit: float  # the offsets' unit: the spread of the rest of the score over the trend's
    recalls: dict[str, float]  # offset (in units) -> recall
    users: int
    positives: int
    top: int

    def line(self) -> str:
        before = self.recalls.get("0.0", float("nan"))
        after = max(self.recalls.values(), default=float("nan"))
        after = after if self.offset else before
        return (
            f"trend weight {self.offset:+.4f}: recall@{self.top} of the held-out days' "
            f"{self.positives:,} positives of {self.users:,} users {before:.3f} -> {after:.3f} "
            "(by a retrieval space trained without them)"
        )


@torch.no_grad()
def calibrate_trend(
    model: Argus,
    shadow: Argus,
    train: Events,
    cut: int,
    *,
    top: int = 100,
    users: int = 2_000,
    margin: float = 0.02,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> TrendCalibration:
    """Add to ``model``'s trend weight the offset under which ``shadow`` (``model`` with a
    retrieval space trained on ``train``'s events before ``cut``) best recalls the positives of
    ``train`` from ``cut`` on: at most ``users`` seeded users with a history, each asked at
    ``cut`` as a bundle cut there asks (states, trend counts and time away as of then). An offset
    is taken only if it beats none by more than ``margin`` (relative) and by more than three
    standard errors of the users' mean gain."""
    before = train.take(train.timestamp < cut)
    days = (int(train.timestamp.max()) + 1 - cut) / DAY
    window = WindowTargets.of(train, cut, days=days, users=users, seed=seed).with_history()
    ids, _, items = item_vectors(shadow, before, device=device)
    mine = before.take(np.flatnonzero(np.isin(before.user_id, window.users)))
    found, vectors = user_vectors(shadow, mine, as_of=cut, device=device)
    window = window.subset(np.flatnonzero(np.isin(window.users, found)))
    if not len(window):  # no one to recall for: the weight stays
        return TrendCalibration(0.0, 0.0, {}, 0, 0, top)
    queries = vectors[np.searchsorted(found, window.users), model.cfg.ranking_dim :]
    trend, items = items[:, -1].astype(np.float64), items.astype(np.float64)
    lists: dict[float, list[np.ndarray]] = {step: [] for step in TREND_OFFSETS}
    unit = 0.0
    for begin in range(0, len(queries), 256):
        query = queries[begin : begin + 256].astype(np.float64)
        weight = query[:, -1:]
        rest = query @ items.T - weight * trend  # the score but for its trend term
        if begin == 0:
            unit = float(rest.std() / max(trend.std(), 1e-12))
        for step in TREND_OFFSETS:
            lists[step] += list(
                top_excluding(rest + (weight + step * unit) * trend, ids, top, None)
            )
    shares = {step: recall_shares(lists[step], window.items, top) for step in TREND_OFFSETS}
    recalls = {str(step): float(np.mean(shares[step])) for step in TREND_OFFSETS}
    best = max(TREND_OFFSETS, key=lambda step: recalls[str(step)])
    gain = shares[best] - shares[0.0]
    error = float(gain.std() / np.sqrt(max(len(gain) - 1, 1)))
    clear = recalls[str(best)] > (1.0 + margin) * recalls["0.0"] and gain.mean() > 3 * error
    best = best if clear else 0.0  # (also where no one is held out: NaN compares false)
    model.trend_head.bias[-1] += best * unit
    positives = int(sum(len(t) for t in window.items))
    return TrendCalibration(best * unit, unit, recalls, len(window), positives, top)


def cold_offset(
    scores: np.ndarray,
    cold: np.ndarray,
    hi: np.ndarray,
    lo: np.ndarray,
    weight: np.ndarray,
    *,
    iterations: int = 100,
) -> float:
    """The ``δ`` added to the scores of the ``cold`` items that minimises the weighted pairwise
    logistic loss ``sum w softplus(-(s_hi - s_lo))`` of the pairs; 0 when no pair has exactly one
    cold item. With pairs on one side only the loss has no minimum: ``δ`` stops where every such
    pair is ordered by a margin of 4 (softplus(-4) ≈ 0.018)."""
    up = cold[hi] & ~cold[lo]  # a cold item is the better one: δ raises the margin
    down = cold[lo] & ~cold[hi]  # a cold item is the worse one: δ lowers it
    if not (up.any() or down.any()):
        return 0.0
    margin_up = (scores[hi] - scores[lo])[up]
    margin_down = (scores[hi] - scores[lo])[down]
    w_up, w_down = weight[up], weight[down]

    def slope(delta: float) -> float:  # d loss / d δ, increasing in δ
        raise_ = -(w_up / (1.0 + np.exp(np.clip(margin_up + delta, -50, 50)))).sum()
        lower = (w_down / (1.0 + np.exp(np.clip(margin_down - delta, -50, 50)))).sum()
        return float(raise_ + lower)

    margins = np.concatenate([margin_up, margin_down])
    reach = float(np.abs(margins).max()) + 4.0
    low, high = -reach, reach
    for _ in range(iterations):  # bisection on the slope
        middle = 0.5 * (low + high)
        if slope(middle) > 0:
            high = middle
        else:
            low = middle
    return 0.5 * (low + high)


@torch.no_grad()
def calibrate_cold_level(
    model: Argus,
    events: Events,
    impressions: Impressions,
    counts_until: Events,
    weights: np.ndarray,
    device: str | torch.device = "cpu",
) -> ColdCalibration:
    """Move ``model``'s cold level to the offset :func:`cold_offset` finds on ``impressions``
    (rows of ``events``, which holds their histories), scored with the item counts of
    ``counts_until`` (the events before the held-out days: what a bundle cut there holds) and
    compared with the grade-pair ``weights``."""
    if not hasattr(model, "cold_item"):
        raise ValueError("cold calibration needs a model with cold_items")
    ranking = HeldOutRanking(model, events, impressions, counts_until, weights, device)
    scores, (cold, unseen) = ranking.scores(), ranking.cold()
    hi, lo, w = ranking.hi, ranking.lo, ranking.w
    moved, delta, extra = place_cold(scores, cold, unseen, hi, lo, w)
    before = float(model.cold_item.detach().float()[0])
    model.cold_item.add_(delta)  # a cold item's score is the level plus its counts' part
    model.unseen_offset.add_(extra)
    mixed = int(((cold[hi] != cold[lo]) | (unseen[hi] != unseen[lo])).sum())
    return ColdCalibration(
        level_before=before,
        level_after=before + delta,
        unseen_offset=float(model.unseen_offset[0]),
        impressions=len(impressions),
        pairs=len(hi),
        mixed_pairs=mixed,
        pair_accuracy_before=pair_accuracy(scores, hi, lo, w),
        pair_accuracy_after=pair_accuracy(moved, hi, lo, w),
        loss_before=pair_loss(scores, hi, lo, w),
        loss_after=pair_loss(moved, hi, lo, w),
    )


def place_cold(
    scores: np.ndarray,
    cold: np.ndarray,
    unseen: np.ndarray,
    hi: np.ndarray,
    lo: np.ndarray,
    weight: np.ndarray,
) -> tuple[np.ndarray, float, float]:
    """``scores`` with the two offsets of :func:`calibrate_cold_level` placed, and the offsets:
    ``δ`` on the ``cold`` items, ``δ_u`` more on the ``unseen`` ones."""
    delta, extra = 0.0, 0.0
    for _ in range(ROUNDS):  # the loss is convex in both: one at a time, to its joint minimum
        delta += cold_offset(scores + delta * cold + extra * unseen, cold, hi, lo, weight)
        extra += cold_offset(scores + delta * cold + extra * unseen, unseen, hi, lo, weight)
    return scores + delta * cold + extra * unseen, delta, extra


def pair_loss(scores: np.ndarray, hi: np.ndarray, lo: np.ndarray, weight: np.ndarray) -> float:
    """``sum w softplus(-(s_hi - s_lo)) / sum w`` in numpy (NaN with no pairs)."""
    if len(hi) == 0:
        return float("nan")
    return float((weight * np.logaddexp(0.0, scores[lo] - scores[hi])).sum() / weight.sum())


@dataclass(frozen=True)
class ReadoutCalibration(Report):
    """What :func:`calibrate_readout` found: the slope, the ridge chosen (None: off), and the
    held-out PairAccuracy of the towers alone and with each ridge tried; or what
    :func:`fit_readout` set (no pairs)."""

    FILE: ClassVar[str] = READOUT_FILE

    slope: float
    ridge: float | None
    users: int
    impressions: int
    pairs: int
    pair_accuracy_towers: float | None  # None: set, nothing held out
    pair_accuracy: dict[str, float]

    def line(self) -> str:
        chosen = "off" if self.ridge is None else f"ridge {self.ridge:g}"
        if not self.pairs:  # set, not chosen: the slope of the training histories
            return (
                f"feedback readout: {chosen}, slope {self.slope:.3f} from {self.users:,} "
                "users' histories"
            )
        best = self.pair_accuracy.get(str(self.ridge), self.pair_accuracy_towers)
        return (
            f"feedback readout: {chosen}, slope {self.slope:.3f} on {self.pairs:,} held-out "
            f"pairs of {self.users:,} users (PairAccuracy {self.pair_accuracy_towers:.4f} -> "
            f"{best:.4f})"
        )


def sampled_users(user_id: np.ndarray, users: int, seed: int) -> np.ndarray:
    """Up to ``users`` of the distinct ids in ``user_id`` (all when fewer), seeded."""
    chosen = np.unique(user_id)
    if len(chosen) > users:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, users, replace=False))
    return chosen


@torch.no_grad()
def fit_readout(
    model: Argus, events: Events, ridge: float, *, users: int = 2_000, seed: int = 0
) -> ReadoutCalibration:
    """Set ``model``'s readout to ``ridge`` and the slope of its users' histories as the export
    reads them (each sampled user's last ``max_len`` events of ``events``, the fine-tuning
    events), off when the towers' score does not rise with the grades."""
    ids, offsets = events.user_offsets()
    chosen = np.searchsorted(ids, sampled_users(ids, users, seed))
    inputs = readout_inputs(model, events, None, events, states=offsets[chosen + 1] - 1)
    slope = inputs.slope()
    on = slope > 0 and ridge > 0
    model.readout.copy_(torch.tensor([slope, ridge if on else math.inf]))
    return ReadoutCalibration(slope, ridge if on else None, len(chosen), 0, 0, None, {})


@torch.no_grad()
def calibrate_readout(
    model: Argus,
    events: Events,
    impressions: Impressions,
    counts_until: Events,
    weights: np.ndarray,
    *,
    users: int = 2_000,
    seed: int = 0,
) -> ReadoutCalibration:
    """Fit ``model``'s readout on held-out ``impressions`` (rows of ``events``, which holds
    their histories; up to ``users`` users of them, seeded) scored as a bundle cut before them
    would (item counts of ``counts_until``) and set it on the model's ``readout`` buffer."""
    user = events.user_id[impressions.row]
    chosen = sampled_users(user, users, seed)
    mine = impressions.take(np.flatnonzero(np.isin(user, chosen)))
    inputs = readout_inputs(model, events, mine, counts_until)
    slope = inputs.slope()
    hi, lo, w = group_pairs(mine.group, mine.grade, weights)
    base = float(pair_accuracy(inputs.scores(Readout()), hi, lo, w))
    tried = {
        str(lam): float(pair_accuracy(inputs.scores(Readout(slope, lam)), hi, lo, w))
        for lam in (RIDGES if slope > 0 else ())
    }
    best = max(tried, key=lambda k: tried[k]) if tried else None
    ridge = float(best) if best is not None and tried[best] > base else None
    model.readout.copy_(torch.tensor([slope, math.inf if ridge is None else ridge]))
    return ReadoutCalibration(
        slope=slope,
        ridge=ridge,
        users=len(chosen),
        impressions=len(mine),
        pairs=len(hi),
        pair_accuracy_towers=base,
        pair_accuracy=tried,
    )
