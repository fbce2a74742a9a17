"""Placing the cold level on held-out days (``argus finetune --set cold_calibration=1d``).

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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from model.argus import Argus
from model.data.events import Events
from model.evaluate import impression_scores
from model.impressions import Impressions, group_pairs
from model.inference import ItemPopularity
from model.metrics import pair_accuracy

CALIBRATION_FILE = "cold_calibration.json"
ROUNDS = 5  # of coordinate descent over the two offsets


@dataclass(frozen=True)
class ColdCalibration:
    """What calibration found: the level before and after, on how many pairs, and the weighted
    PairAccuracy of the held-out pairs with each."""

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

    def write(self, out: str | Path) -> Path:
        path = Path(out) / CALIBRATION_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


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
    was_training = model.training
    model.eval()
    popularity = ItemPopularity.of(counts_until, device)
    scores = impression_scores(model, events, impressions, device=device, popularity=popularity)
    item = torch.from_numpy(events.item_id[impressions.row]).to(device)
    cold = popularity.cold(item, model).cpu().numpy()
    hi, lo, w = group_pairs(impressions.group, impressions.grade, weights)
    unseen = popularity.unseen(item).cpu().numpy()
    delta, extra = 0.0, 0.0
    for _ in range(ROUNDS):  # the loss is convex in both: one at a time, to its joint minimum
        delta += cold_offset(scores + delta * cold + extra * unseen, cold, hi, lo, w)
        extra += cold_offset(scores + delta * cold + extra * unseen, unseen, hi, lo, w)
    before = float(model.cold_item.detach().float()[0])
    model.cold_item.add_(delta)  # a cold item's score is the level plus its counts' part
    model.unseen_offset.add_(extra)
    model.train(was_training)
    mixed = int(((cold[hi] != cold[lo]) | (unseen[hi] != unseen[lo])).sum())
    moved = scores + delta * cold + extra * unseen
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


def pair_loss(scores: np.ndarray, hi: np.ndarray, lo: np.ndarray, weight: np.ndarray) -> float:
    """``sum w softplus(-(s_hi - s_lo)) / sum w`` in numpy (NaN with no pairs)."""
    if len(hi) == 0:
        return float("nan")
    return float((weight * np.logaddexp(0.0, scores[lo] - scores[hi])).sum() / weight.sum())
