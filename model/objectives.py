"""The training objectives as modules (one forward, so DistributedDataParallel sees a single
call): pretraining's next-item and feedback losses, and fine-tuning's pairwise ranking of
impressions, with the samples and batches that feed it.

Fine-tuning runs **one pass** per sample: a training sample is one history chunk of one user (the
chunks of pretraining); the transformer runs over it once and every impression whose state lies
in the chunk gathers that state by index. :func:`impression_level_backward` is the reference that
re-runs the transformer on each group's prefix; it exists to prove the two equal and to measure
the speed-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.argus import Argus
from model.data.batching import Batch, Spans, bucket_batches, chunk_spans, make_batch
from model.data.events import Events
from model.impressions import Impressions, group_pairs
from model.inference import tower_scores
from model.losses import ItemFrequencies, ItemTrend, pretraining_loss, retrieval_loss
from model.metrics import pair_accuracy


class PretrainingObjective(nn.Module):
    """The loss as one module, so that DistributedDataParallel sees a single forward."""

    def __init__(self, model: Argus, frequencies: ItemFrequencies) -> None:
        super().__init__()
        self.model = model
        self.frequencies = frequencies

    def forward(
        self, batch: dict[str, torch.Tensor], uniform_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return pretraining_loss(self.model, batch, self.frequencies, uniform_ids)


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
        Impressions(empty, empty, empty, empty, empty, empty, empty),
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
    seen: np.ndarray  # (M,) the item's events before the impression's day (0: cold)
    log_negatives: np.ndarray  # (M,) float32 log1p of its events then that were not positive
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
        seen=imp.seen,
        log_negatives=np.log1p(imp.seen - imp.popularity).astype(np.float32),
        hi=hi,
        lo=lo,
        weight=weight.astype(np.float32),
    )


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
    state_dropout: float = 0.0  # on the state the query reads

    def loss(
        self,
        model: Argus,
        batch: dict[str, torch.Tensor],
        h: torch.Tensor | None,
        taste: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:func:`model.losses.retrieval_loss` of ``batch`` (its states ``h``, its tastes when
        the caller has them), with a fresh draw of uniform negatives."""
        return retrieval_loss(
            model,
            batch,
            self.frequencies,
            self.frequencies.sample_uniform(self.negatives, self.generator),
            horizon=self.horizon,
            window=self.window,
            temperature=self.temperature,
            generator=self.generator,
            taste=taste,
            trend=self.trend,
            h=h,
            state_dropout=self.state_dropout,
        )


class PairwiseObjective(nn.Module):
    """One-pass fine-tuning loss: the transformer runs once over the batch of chunks. With
    ``retrieval``, the retrieval space's loss is added (on the same chunks)."""

    def __init__(self, model: Argus, retrieval: RetrievalTraining | None = None) -> None:
        super().__init__()
        self.model = model
        self.retrieval = retrieval
        self.retrieval_alone = False  # the retrieval loss only, the rest of the model read

    def only_retrieval(self, alone: bool) -> None:
        """From now on, train the retrieval space alone (``alone``) or everything."""
        self.retrieval_alone = alone

    def retrieval_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The retrieval space's loss of ``batch``, the state (when the query reads it) computed
        without gradients: nothing but the retrieval space learns from it."""
        assert self.retrieval is not None, "the retrieval loss needs its RetrievalTraining"
        h = None
        if self.model.reads_state:
            with torch.no_grad():
                h = self.model(batch)
        return self.retrieval.loss(self.model, batch, h)

    def forward(
        self, batch: dict[str, torch.Tensor], imp: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        if self.retrieval_alone and self.retrieval is not None:
            retrieval = self.retrieval_step(batch)
            return {"loss": self.retrieval.weight * retrieval, "retrieval": retrieval.detach()}
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
            self.model.is_cold(imp["seen"]),
            imp["log_negatives"],
        )
        pairwise = pairwise_loss(scores, imp["hi"], imp["lo"], imp["weight"])
        with torch.no_grad():
            pairs = imp["hi"], imp["lo"], imp["weight"]
            has_pairs = len(imp["hi"]) and bool(imp["weight"].sum() > 0)
            accuracy = pair_accuracy(scores, *pairs) if has_pairs else scores.new_zeros(())
        out = {"loss": pairwise, "pair_accuracy": accuracy}
        r = self.retrieval
        if r is not None:
            retrieval = r.loss(self.model, batch, h, tastes)  # the taste computed once for both
            out = {
                "loss": pairwise + r.weight * retrieval,
                "pairwise": pairwise.detach(),
                "retrieval": retrieval.detach(),
                "pair_accuracy": accuracy,
            }
        return out


class RetrievalObjective(PairwiseObjective):
    """The retrieval space's loss alone, the rest of the model read as it is: a second retrieval
    space trained beside a fine-tuned model (:mod:`model.calibration`'s trend weight)."""

    def forward(
        self, batch: dict[str, torch.Tensor], imp: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {"loss": self.retrieval_step(batch)}


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
            model.is_cold(tensors["seen"][mine]),
            tensors["log_negatives"][mine],
        )
        pairs = np.flatnonzero(local[pair_group] >= 0)
        hi = torch.from_numpy(where[imp.hi[pairs]]).to(device)
        lo = torch.from_numpy(where[imp.lo[pairs]]).to(device)
        loss = pairwise_loss(scores, hi, lo, tensors["weight"][pairs], total_weight)
        loss.backward()
        total += float(loss.detach())
    return total
