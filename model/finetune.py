"""``argus finetune``: two-tower pairwise ranking of impressions, in one transformer pass.

The user tower is ``u = P_u h`` (``h``: the transformer's state after an event), the
item tower ``v = MLP(e_item)``, the score ``s = <u, v>``; these are the vectors the service serves.

* **What is ranked**: the impressions of :mod:`model.impressions`, each scored with the state the
  service would have served, compared within groups that share one state; every pair counts with
  the weight of its grade pair: ``L = sum w softplus(-(s_hi - s_lo)) / sum w``, and the metric is
  the weighted PairAccuracy (:func:`model.metrics.pair_accuracy`).
* **One pass.** A training sample is one history chunk of one user (the chunks of pretraining):
  the transformer runs over it once and every impression whose state lies in the chunk gathers that
  state by index. :func:`impression_level_backward` is the reference that re-runs the transformer
  on each group's prefix; it exists to prove the two equal and to measure the speed-up.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.argus import PARTS, Argus, ArgusConfig
from model.checkpoint import model_config, read_checkpoint
from model.config import FINETUNE_LR, apply_overrides
from model.contract import DEFAULT_LAG, DEFAULT_SESSION_GAP
from model.data.batching import Batch, Spans, bucket_batches, chunk_spans, make_batch
from model.data.events import Events, parse_duration, read_events
from model.impressions import (
    Impressions,
    both_heads,
    find_impressions,
    group_pairs,
    pair_weight_table,
)
from model.inference import tower_scores
from model.losses import ItemFrequencies, ItemTrend, retrieval_loss
from model.metrics import pair_accuracy
from model.runtime import Runtime
from model.trainer import Job, TrainConfig, Trainer, TrainSummary, epoch_batches, saved_state


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
            pairs = imp["hi"], imp["lo"], imp["weight"]
            has_pairs = len(imp["hi"]) and bool(imp["weight"].sum() > 0)
            accuracy = pair_accuracy(scores, *pairs) if has_pairs else scores.new_zeros(())
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
class Durations:
    """A fine-tuning config's durations in seconds (``FinetuneConfig.seconds``)."""

    lag: int
    runtime_lag: int | None  # None: no runtime head
    snapshot_delay: int
    session_gap: int
    retrieval_horizon: int
    retrieval_trend: int


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    init: str = ""  # pretrained run directory or checkpoint; "" trains from scratch
    lag: str = (
        DEFAULT_LAG  # "1d": the daily bundle's state; "0": the runtime encoder's (per session)
    )
    runtime_lag: str = "0"  # a second user head for the service's runtime encoder; "": none
    group: str = "auto"  # "auto" (lag bucket; sessions at lag 0), "lag", "session" or e.g. "6h"
    snapshot_delay: str = "0"  # the daily snapshot is taken this long before the bucket starts
    session_gap: str = DEFAULT_SESSION_GAP  # silence that starts a new session
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
    # the runtime head's states: after the first this many events of the session (what a client
    # sends of the session so far), scoring the rest; 0: the state before the session
    runtime_reveal: int = 0
    # the retrieval space (/candidates): a pooled-history tower trained on future positives
    retrieval_dim: int = 64  # 0: no retrieval space (the bundle then retrieves with the towers)
    retrieval_weight: float = 1.0  # its loss beside the pairwise one
    retrieval_lr: float = 1e-2  # its own learning rate (its table starts from scratch)
    retrieval_horizon: str = "7d"  # targets: positives this soon after the state ...
    retrieval_window: int = 128  # ... among its next this many events
    retrieval_temperature: float = 0.05
    retrieval_negatives: int = 1024  # uniform negatives beside the in-batch ones
    retrieval_trend: str = "7d"  # the score adds w(user) * log1p(item's positives then); "0": none
    lr: float = FINETUNE_LR
    table_lr: float = 0.0  # the table at the backbone's rate: it arrives trained
    warmup_steps: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        # The durations, parsed once here (a wrong one fails at construction, naming itself);
        # the fields keep the text a person wrote, which is what checkpoints record.
        seconds = Durations(
            lag=parse_duration(self.lag),
            runtime_lag=parse_duration(self.runtime_lag) if self.runtime_lag else None,
            snapshot_delay=parse_duration(self.snapshot_delay),
            session_gap=parse_duration(self.session_gap),
            retrieval_horizon=parse_duration(self.retrieval_horizon),
            retrieval_trend=parse_duration(self.retrieval_trend),
        )
        object.__setattr__(self, "_seconds", seconds)
        if self.group not in ("auto", "lag", "session"):
            parse_duration(self.group)
        pair_weight_table(self.pair_weights)
        for name in ("max_impressions", "tower_dim", "retrieval_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_history < 1:
            raise ValueError(f"min_history must be >= 1, got {self.min_history}")

    @property
    def seconds(self) -> Durations:
        """Every duration of this config, in seconds."""
        return self._seconds  # type: ignore[attr-defined]

    @property
    def lag_seconds(self) -> int:
        return self.seconds.lag

    @property
    def runtime_head(self) -> bool:
        """A second user head, for ``runtime_lag``: set, and not the lag the first one has."""
        runtime = self.seconds.runtime_lag
        return runtime is not None and runtime != self.lag_seconds

    def impressions(self, events: Events) -> Impressions:
        """The impressions of ``events`` with the states and groups this config trains on: the
        first head's at ``lag``, and with a runtime head also each at ``runtime_lag`` (its
        groups: sessions at lag 0)."""

        def at(lag: int, group: str, head: int, reveal: int = 0) -> Impressions:
            return find_impressions(
                events,
                lag,
                group,
                snapshot_delay=self.seconds.snapshot_delay,
                session_gap=self.seconds.session_gap,
                head=head,
                reveal=reveal,
            )

        offline = at(self.lag_seconds, self.group, 0)
        if not self.runtime_head:
            return offline
        runtime = at(self.seconds.runtime_lag or 0, "auto", 1, self.runtime_reveal)
        return both_heads(offline, runtime)

    def retrieval_training(
        self, train: Events, device: str | torch.device
    ) -> RetrievalTraining | None:
        if not self.retrieval_dim:
            return None
        item, time = train.item_id[train.positive], train.timestamp[train.positive]
        window = self.seconds.retrieval_trend
        trend = ItemTrend.of(item, time, window) if window else None
        return RetrievalTraining(
            frequencies=ItemFrequencies.from_item_ids(item).to(device),
            weight=self.retrieval_weight,
            horizon=self.seconds.retrieval_horizon,
            window=self.retrieval_window,
            temperature=self.retrieval_temperature,
            negatives=self.retrieval_negatives,
            generator=torch.Generator(device=device).manual_seed(self.seed),
            trend=trend.to(device) if trend is not None else None,
        )

    def model_config(self, init: dict[str, Any] | None = None) -> ArgusConfig:
        """The pretrained model's config (``init``: its checkpoint, as read from ``self.init``
        by the caller), or the preset's from scratch, with the towers added; ``--max-len`` and
        ``--model`` overrides apply either way."""
        if init is None and self.init:
            raise ValueError(f"{self.init}: pass its checkpoint (read_checkpoint) to model_config")
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
            retrieval_trend=self.seconds.retrieval_trend if self.retrieval_dim else 0,
        )


# -- the job -------------------------------------------------------------------------------------


def finetune(cfg: FinetuneConfig, *, progress: bool = True, resume: bool = False) -> TrainSummary:
    """Fine-tune the two towers (and the backbone) as ``cfg`` says; see the module docstring.

    The pretraining heads (NIP, FP, temperature) are frozen: the pairwise loss does not reach them.
    """
    runtime = Runtime.setup(cfg.device)
    with runtime.session():
        saved = saved_state(cfg, resume)
        init = read_checkpoint(cfg.init) if cfg.init else None
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
