"""``argus finetune``: two-tower pairwise ranking of impressions, in one transformer pass.

The user tower is ``u = P_u h`` (``h``: the transformer's state after an event), the
item tower ``v = MLP(e_item)``, the score ``s = <u, v>``; these are the vectors the service serves.

* **What is ranked**: the impressions of :mod:`model.impressions`, each scored with the state the
  service would have served, compared within groups that share one state; every pair counts with
  the weight of its grade pair: ``L = sum w softplus(-(s_hi - s_lo)) / sum w``, and the metric is
  the weighted PairAccuracy (:func:`model.metrics.pair_accuracy`).
* **One pass.** A training sample is one history chunk of one user (the chunks of pretraining):
  the transformer runs over it once and every impression whose state lies in the chunk gathers that
  state by index. The objective and its batches are in :mod:`model.objectives`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.argus import PARTS, Argus, ArgusConfig
from model.calibration import (
    TREND_DEFAULT,
    ColdCalibration,
    EarlyStopping,
    HeldOutRanking,
    ReadoutCalibration,
    TrendCalibration,
    calibrate_cold_level,
    calibrate_readout,
    calibrate_trend,
    choose_trend_window,
    fit_readout,
)
from model.checkpoint import model_config, read_checkpoint
from model.config import FINETUNE_LR, apply_overrides
from model.contract import DAY, DEFAULT_LAG, DEFAULT_SESSION_GAP
from model.data.events import Events, parse_duration, read_events
from model.impressions import (
    Impressions,
    both_heads,
    find_impressions,
    pair_weight_table,
)
from model.losses import ItemFrequencies, ItemTrend
from model.objectives import (
    PairwiseObjective,
    RetrievalObjective,
    RetrievalTraining,
    Samples,
    every_chunk,
    make_samples,
    sample_batch,
)
from model.runtime import Runtime
from model.train import warm_start
from model.trainer import Job, TrainConfig, Trainer, TrainSummary, epoch_batches, saved_state

# what fine-tuning reports beside the checkpoint, each with a line for the console
Calibration = ColdCalibration | ReadoutCalibration | TrendCalibration | EarlyStopping

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
    cold_calibration: int
    readout_calibration: int
    trend_calibration: int
    early_stopping: int


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    init: str = ""  # pretrained run directory or checkpoint; "" trains from scratch
    lag: str = (
        DEFAULT_LAG  # "1d": the daily bundle's state; "0": the runtime encoder's (per session)
    )
    runtime_lag: str = "0"  # a second user head for the service's runtime encoder; "": none
    # that head is the daily one plus a correction learned from zero (the daily head's weights
    # read, not trained, by the runtime loss): realtime led stored by +0.0143 on the mood world
    runtime_residual: bool = True
    group: str = "auto"  # "auto" (lag bucket; sessions at lag 0), "lag", "session" or e.g. "6h"
    snapshot_delay: str = "0"  # the daily snapshot is taken this long before the bucket starts
    session_gap: str = DEFAULT_SESSION_GAP  # silence that starts a new session
    pair_weights: str = ""  # grade-pair weight overrides, e.g. "like>skip=4"; "" = the default
    max_impressions: int = 256  # per chunk, step and user head (a random subset beyond it); 0: all
    min_history: int = 1  # events of the chunk a state must have seen
    tower_dim: int = 0  # width of u and v; 0: the model's d_model
    tower_lr: float = 3e-3  # the towers' own learning rate (they start from scratch); 0: lr
    # AdamW's decay on the towers' weight matrices (their embeddings and biases get none); 0:
    # none, the default
    tower_weight_decay: float = 0.0
    item_prior: bool = True  # u's last coordinate is 1: v's last one is a non-personal prior
    # a learned prior for items with no event before the day, which the service then scores
    # items its catalog lacks with (off: they get no score)
    cold_items: bool = False
    # the item tower also reads log1p of the item's events that were not positive
    item_negatives: bool = False
    # with cold_items: items with fewer events before the day are scored from the cold
    # embedding and their counts, not their own embedding
    item_min_events: int = 1
    # with cold_items: hold the impressions of the last this long of the training window out of
    # the pairs and move the cold level to where it ranks them best (model.calibration); "0":
    # the level fine-tuning learns
    cold_calibration: str = "0"
    # the feedback readout (model.readout): each user's own feedback on the items of their
    # history, read into their vector by a ridge regression with this penalty; 0: none (the
    # default). On simulated logs of stable taste /score gained 0.009-0.013 with 30 (level at
    # full size); where a session's mood sets the grades it lost 0.013-0.031, on KuaiRand 0.008
    readout_ridge: float = 0.0
    # instead, hold the impressions of the last this long of the training window out of the
    # pairs and choose the ridge where it ranks the last day best, the days before it read as
    # history (or none, when none beats the towers alone); "0": the ridge above, unless days
    # are held out anyway (cold_calibration): then it is chosen on those
    readout_calibration: str = "0"
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
    # its own learning rate; from the warm table 3e-3 beat 1e-2 on logs of 250k and 7M events
    # (recall@100 of new items +4% and +7%), while logs of 40-100k events wanted 1e-2
    retrieval_lr: float = 3e-3
    retrieval_horizon: str = "7d"  # targets: positives this soon after the state ...
    retrieval_window: int = 128  # ... among its next this many events
    retrieval_temperature: float = 0.05
    retrieval_negatives: int = 1024  # uniform negatives beside the in-batch ones
    # the score adds w(user) * log1p(item's positives in this window before the day); "0": none;
    # "auto": the window of the last week's days that best lists the next day's positives
    # (model.calibration.choose_trend_window), 7 days unless a shorter one is clearly better: on
    # KuaiRand it chose 12 hours, and recall@100 of the users with a history went 0.079 -> 0.15
    retrieval_trend: str = "auto"
    # with a trend: train a second retrieval space on all but the last this long of the
    # training window and add to the trend weight what best recalls that span's positives by it
    # (model.calibration.calibrate_trend; one process only, skipped under torchrun): on KuaiRand
    # recall@100 went 0.142 -> 0.20 (three seeds), elsewhere no offset was clear; "0": the weight
    # fine-tuning learns
    trend_calibration: str = "1d"
    # the list length whose recall that placed weight maximises: the candidates a ranker reads
    # (on KuaiRand over four models, 500 placed two to four times the weight: recall@500
    # 0.429 -> 0.449 through the service, recall@100 0.199 -> 0.190)
    trend_calibration_k: int = 100
    # the query also reads how long the user has been away (a NIP query reads it anyway): on
    # MovieLens-100K the returning users' recall@100 went from 0.18 to 0.33 (three seeds)
    retrieval_gap: bool = True
    retrieval_trains_state: bool = False  # its loss reaches the backbone through the state
    # dropout on the state the query reads, in training, so that a stored query leans on what
    # lasts: recall@100 +0.006 on a small simulated world at 0.5, but -0.034 on KuaiRand and
    # -0.005 on MovieLens-100K, and the live session's lead over the pooled query narrows
    retrieval_state_dropout: float = 0.0
    # with a trend: the score also adds w'(user) * log1p(item's positives of all time then)
    retrieval_popularity: bool = False
    # the retrieval table starts from a truncated SVD of the training positives (as pretraining's
    # warm_items), not at random: with retrieval_lr 3e-3, recall@100 of new items +9% at full
    # size, where artists new to the user went from 1.93x to 2.08x MostPop
    warm_retrieval: bool = True
    lr: float = FINETUNE_LR
    # two passes: at full size /score closed 17% of the MostPop -> oracle gap after 0.28 of an
    # epoch, 25% after 1.1 and 28% after 2; at demo size 2 were best too
    epochs: int = 2
    # ... and at least 600 steps: on a small log two epochs are a few hundred steps, and a small
    # world (an epoch of 111 steps) lost a tenth of its recall at 222 against 600
    min_steps: int = 600
    # with max_steps 0, the retrieval space trains at least this many steps: beyond the rest's,
    # alone (the towers and the backbone learn as they would without it, to the bit); 0: none,
    # the default. 2,400 took recall@100 at demo size from 0.364 to 0.386 (new to the user
    # 0.287 -> 0.298), but on a world of 244k events cost recall@500 of new items 0.674 -> 0.638
    retrieval_min_steps: int = 0
    # hold the impressions of the last this long of the training window out of the pairs and
    # rank them with the towers at the end of every epoch: the towers and the backbone keep their
    # best weights and train no more after early_stopping_patience epochs without a gain, while
    # the retrieval space trains on alone to the run's length (one process only); "0": none, the
    # default. /score gained 0.004 on a small world (600 steps of 5.4 epochs, the towers kept at
    # 4-5) and lost 0.004 on KuaiRand, whose held-out day of 1,198 pairs stops them too soon
    early_stopping: str = "0"
    early_stopping_patience: int = 2
    # the towers and the backbone end at an exponential moving average of their weights, with a
    # horizon of this fraction of their steps (the retrieval space keeps its last weights); 0:
    # their last weights. /score over three seeds: small world 0.5653 -> 0.5688 and demo size
    # 0.5831 -> 0.5884, their spread five to six times smaller; KuaiRand level
    weight_average: float = 0.25
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
            retrieval_trend=parse_duration(
                TREND_DEFAULT if self.retrieval_trend == "auto" else self.retrieval_trend
            ),
            cold_calibration=parse_duration(self.cold_calibration),
            readout_calibration=parse_duration(self.readout_calibration),
            trend_calibration=parse_duration(self.trend_calibration),
            early_stopping=parse_duration(self.early_stopping),
        )
        object.__setattr__(self, "_seconds", seconds)
        if self.group not in ("auto", "lag", "session"):
            parse_duration(self.group)
        pair_weight_table(self.pair_weights)
        for name in ("max_impressions", "tower_dim", "retrieval_dim", "retrieval_min_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.retrieval_state_dropout < 1.0:
            raise ValueError(
                f"retrieval_state_dropout must be in [0, 1), got {self.retrieval_state_dropout}"
            )
        if self.min_history < 1:
            raise ValueError(f"min_history must be >= 1, got {self.min_history}")
        if self.early_stopping_patience < 1:
            raise ValueError(
                f"early_stopping_patience must be >= 1, got {self.early_stopping_patience}"
            )
        if not 0 <= self.weight_average <= 1:
            raise ValueError(f"weight_average must be in [0, 1], got {self.weight_average}")
        if self.trend_calibration_k < 1:
            raise ValueError(f"trend_calibration_k must be >= 1, got {self.trend_calibration_k}")
        if self.tower_weight_decay < 0:
            raise ValueError(f"tower_weight_decay must be >= 0, got {self.tower_weight_decay}")
        if self.readout_ridge < 0:
            raise ValueError(f"readout_ridge must be >= 0, got {self.readout_ridge}")
        if seconds.readout_calibration and not self.readout_ridge:
            raise ValueError(
                f"readout_calibration={self.readout_calibration!r} chooses the readout's ridge: "
                "it needs readout_ridge > 0 (the readout on)"
            )
        if seconds.cold_calibration and not self.cold_items:
            raise ValueError(
                f"cold_calibration={self.cold_calibration!r} places the cold level: it needs "
                "cold_items=true"
            )

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
            state_dropout=self.retrieval_state_dropout,
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
            runtime_residual=self.runtime_residual and self.runtime_head,
            item_prior=self.item_prior,
            cold_items=self.cold_items,
            item_negatives=self.item_negatives,
            item_min_events=self.item_min_events,
            taste_shortcut=self.taste_shortcut and self.tower_taste and self.retrieval_dim > 0,
            tower_taste=self.tower_taste,
            retrieval_trend=self.seconds.retrieval_trend if self.retrieval_dim else 0,
            retrieval_trains_state=self.retrieval_trains_state,
            retrieval_popularity=(
                self.retrieval_popularity
                and self.retrieval_dim > 0
                and self.seconds.retrieval_trend > 0
            ),
            retrieval_gap=(
                self.retrieval_gap and self.retrieval_dim > 0 and base.retrieval_query != "nip"
            ),
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
        events = read_events(cfg.data)
        split = cfg.split(events)
        train = split.train(events) if split else events
        tuned = _trend_chosen(cfg, train, runtime, progress)  # the job keeps cfg, for --resume
        model_cfg = tuned.model_config(init)
        train_until = split.split_time if split else int(events.timestamp.max()) + 1
        if init is not None and init["train_until"] > train_until:
            raise ValueError(
                f"{cfg.init}: pretrained on events up to t={init['train_until']}, after this "
                f"run's test window starts (t={train_until}); use the same or an earlier split"
            )
        held_out = _held_out(cfg, runtime)
        cut = train_until - held_out
        impressions = cfg.impressions(train)
        if held_out:  # the pairs rank the days before; the last ones calibrate
            impressions = impressions.take(np.flatnonzero(train.timestamp[impressions.row] < cut))
        samples = make_samples(train, impressions, model_cfg.max_len, cfg.min_history)
        ranks = len(samples.spans) > 0  # impressions to rank: the towers (and readout) learn
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
        if cfg.warm_retrieval and model.has_retrieval and saved is None:
            warm_start(model, train, progress, retrieval=True)
        for frozen in model.pretraining_heads():
            frozen.requires_grad_(False)
        model.log_temperature.requires_grad_(False)
        preset = init["train_config"].get("preset", cfg.preset) if init else cfg.preset
        objective = PairwiseObjective(model, tuned.retrieval_training(train, runtime.device))
        floor = cfg.retrieval_min_steps > 0 and ranks and model.has_retrieval
        job = _job(cfg, objective, train, samples, (cut, train_until), runtime, preset, floor)
        trainer = Trainer(job, runtime, saved, progress=progress)
        summary = trainer.run()
        window = (cut, train_until)
        done: list[Calibration] = _stopped(trainer, job)
        if not summary.interrupted:
            done += _after(model, cfg, train, window, runtime, ranks)
        trend = cfg.seconds.trend_calibration and model.cfg.retrieval_trend
        if trend and runtime.world_size == 1 and not summary.interrupted:
            steps = trainer.total
            done.append(
                _calibrate_trend(model, tuned, train, train_until, runtime, steps, progress)
            )
        if done:
            trainer.checkpoint()
        for calibration in done if progress else []:
            print(calibration.line())
        return summary


def _job(
    cfg: FinetuneConfig,
    objective: PairwiseObjective,
    train: Events,
    samples: Samples,
    window: tuple[int, int],
    runtime: Runtime,
    preset: str,
    floor: bool,
) -> Job:
    """Fine-tuning ``objective``'s model on ``samples`` of ``train`` (up to the end of the held-out
    ``window``); with ``floor`` the retrieval space trains alone from the end of the run to
    ``retrieval_min_steps``; with ``early_stopping``, from where the rest stopped."""
    table = pair_weight_table(cfg.pair_weights)
    # with a runtime head every impression is there twice: the cap counts both heads' share
    per_chunk = cfg.max_impressions * (2 if cfg.runtime_head else 1)
    model, (cut, train_until) = objective.model, window
    evaluate: HeldOutRanking | None = None
    if cfg.seconds.early_stopping:
        held = _held(cfg, train, cut)
        if not len(held):
            raise ValueError(
                f"{cfg.data}: no impressions in the last {cfg.early_stopping} of the training "
                "window to stop early on; hold out more, or drop early_stopping"
            )
        before = train.take(train.timestamp < cut)
        place_cold = bool(cfg.seconds.cold_calibration)
        evaluate = HeldOutRanking(
            model, train, held, before, table, runtime.device, place_cold=place_cold
        )
    own = (floor or evaluate is not None) and model.has_retrieval
    return Job(
        cfg=cfg,
        stage="finetune",
        preset=preset,
        objective_name="pairwise",
        model=objective.model,
        objective=objective,
        epoch_batches=functools.partial(
            epoch_batches, samples.spans, cfg, objective.model.cfg.max_len, runtime
        ),
        step=functools.partial(_step, train, samples, table, per_chunk, runtime),
        train_until=train_until,
        floor_parts=("retrieval",) if own else (),
        floor_steps=cfg.retrieval_min_steps if floor else 0,
        floor_only=objective.only_retrieval if own else None,
        evaluate=evaluate,
        watch="pair_accuracy",
        patience=cfg.early_stopping_patience,
        average=cfg.weight_average,
        rng=objective.retrieval.generator if objective.retrieval is not None else None,
    )


def _stopped(trainer: Trainer, job: Job) -> list[Calibration]:
    """Early stopping's report, written beside the checkpoint (none without it)."""
    stopping = trainer.stopping
    if stopping is None or not stopping.evaluations:
        return []
    ranking = job.evaluate
    assert isinstance(ranking, HeldOutRanking)
    report = EarlyStopping(
        scores={str(step): got["pair_accuracy"] for step, got in stopping.evaluations},
        losses={str(step): got["loss"] for step, got in stopping.evaluations},
        best_step=stopping.best_step,
        stopped_step=stopping.stopped_step,
        steps=trainer.position.step,
        impressions=len(ranking.impressions),
        pairs=len(ranking.hi),
    )
    report.write(job.cfg.out)
    return [report]


def _trend_chosen(
    cfg: FinetuneConfig, train: Events, runtime: Runtime, progress: bool
) -> FinetuneConfig:
    """``cfg`` with ``retrieval_trend=auto`` resolved to the window chosen from ``train``
    (its report written beside the checkpoint); any other ``cfg`` as it is."""
    if cfg.retrieval_trend != "auto" or not cfg.retrieval_dim:
        return cfg
    choice = choose_trend_window(train)
    if runtime.is_main:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        choice.write(cfg.out)
    if progress:
        print(choice.line())
    return dataclasses.replace(cfg, retrieval_trend=choice.window)


def _step(
    events: Events,
    samples: Samples,
    table: np.ndarray,
    per_chunk: int,
    runtime: Runtime,
    objective: nn.Module,
    index: np.ndarray,
) -> tuple[dict[str, torch.Tensor], int]:
    """The chunks ``index`` of ``samples`` (with their impressions) through ``objective``: its
    losses and the events it read."""
    rng = np.random.default_rng(int(torch.randint(2**62, ())))  # seeded per step
    batch, imp = sample_batch(events, samples, index, table, per_chunk, rng)
    with runtime.autocast():
        losses = objective(batch.to_torch(runtime.device), imp.to_torch(runtime.device))
    return losses, int(batch.lengths.sum())


def _calibrate_trend(
    model: Argus,
    cfg: FinetuneConfig,
    train: Events,
    train_until: int,
    runtime: Runtime,
    steps: int,
    progress: bool,
) -> TrendCalibration:
    """``trend_calibration``: a second retrieval space trained as the model's was (``steps``
    steps from its warm start, the rest of the model read as it is) on the training events
    before the held-out span, then :func:`calibrate_trend` on that span; the report is written
    beside the checkpoint. ``cfg``: the job's, its trend window resolved."""
    cut = train_until - cfg.seconds.trend_calibration
    before = train.take(np.flatnonzero(train.timestamp < cut))
    if not before.positive.any():  # nothing to train the second space on: the weight stays
        report = TrendCalibration(0.0, 0.0, {}, 0, 0, cfg.trend_calibration_k)
        report.write(cfg.out)
        return report
    torch.manual_seed(cfg.seed)
    shadow = copy.deepcopy(model).cpu()
    fresh = Argus(model.cfg)
    for name in PARTS["retrieval"]:
        if hasattr(fresh, name):
            setattr(shadow, name, getattr(fresh, name))
    if cfg.warm_retrieval:
        warm_start(shadow, before, False, retrieval=True)
    for name, parameter in shadow.named_parameters():
        parameter.requires_grad_(name.split(".")[0] in PARTS["retrieval"])
    training = cfg.retrieval_training(before, runtime.device)
    assert training is not None  # a model with a trend has a retrieval space
    samples = every_chunk(before, model.cfg.max_len)
    with tempfile.TemporaryDirectory() as out:
        job_cfg = dataclasses.replace(cfg, out=out, max_steps=steps)
        job = Job(
            cfg=job_cfg,
            stage="finetune",
            preset="second retrieval space",
            objective_name="trend calibration",
            model=shadow,
            objective=RetrievalObjective(shadow, training),
            epoch_batches=functools.partial(
                epoch_batches, samples.spans, job_cfg, model.cfg.max_len, runtime
            ),
            step=functools.partial(
                _step, before, samples, pair_weight_table(cfg.pair_weights), 0, runtime
            ),
            train_until=cut,
        )
        Trainer(job, runtime, None, progress=progress).run()
    report = calibrate_trend(
        model, shadow.eval(), train, cut, top=cfg.trend_calibration_k, device=runtime.device
    )
    if runtime.is_main:
        report.write(cfg.out)
    return report


def _held_out(cfg: FinetuneConfig, runtime: Runtime) -> int:
    """Seconds at the end of the training window held out of the pairs for calibrations and
    early stopping."""
    for name in ("cold_calibration", "early_stopping"):
        if getattr(cfg.seconds, name) and runtime.world_size > 1:
            raise ValueError(f"{name} runs on one process: fine-tune without torchrun")
    readout = cfg.seconds.readout_calibration if runtime.world_size == 1 else 0
    return max(cfg.seconds.cold_calibration, readout, cfg.seconds.early_stopping)


def _held(cfg: FinetuneConfig, train: Events, cut: int) -> Impressions:
    """The impressions of ``train`` from ``cut`` on, the offline head's: the daily bundle is what
    ranks them."""
    found = cfg.impressions(train)
    return found.take(np.flatnonzero((train.timestamp[found.row] >= cut) & (found.head == 0)))


def _after(
    model: Argus,
    cfg: FinetuneConfig,
    train: Events,
    window: tuple[int, int],
    runtime: Runtime,
    ranks: bool,
) -> list[ColdCalibration | ReadoutCalibration]:
    """What fine-tuning sets once trained, each report written beside the checkpoint: the
    calibrations on the held-out ``window``, or the feedback readout with its set ridge (on one
    process, for a log with impressions to rank)."""
    # the readout is set on one process: under torchrun the vectors go without it. Days held
    # out anyway (for the cold level) choose its ridge too: on KuaiRand the set one cost 0.008
    readout = cfg.seconds.readout_calibration or (window[1] - window[0])
    readout = readout if runtime.world_size == 1 and cfg.readout_ridge else 0
    table = pair_weight_table(cfg.pair_weights)
    done = _calibrate(model, cfg, train, window, table, runtime.device, readout)
    if cfg.readout_ridge and not readout and ranks and runtime.world_size == 1:
        done.append(fit_readout(model, train, cfg.readout_ridge, seed=cfg.seed))
    for calibration in done:
        calibration.write(cfg.out)
    return done


def _calibrate(
    model: Argus,
    cfg: FinetuneConfig,
    train: Events,
    window: tuple[int, int],
    table: np.ndarray,
    device: torch.device,
    readout: int,
) -> list[ColdCalibration | ReadoutCalibration]:
    """On the impressions of ``train`` in the held-out ``window`` (the offline head's: the
    daily bundle is what ranks against new items), with the item counts before them: place the
    cold level (with ``cold_calibration``), then fit the feedback readout (``readout`` > 0) on
    the towers as placed, on the window's last day: the days before it are history the towers
    did not train on, as the days after a bundle's cut are. A log without impressions there has
    no readout (it scores nothing to fit it on)."""
    cut, end = window
    if cut == end:  # nothing held out
        return []
    held = _held(cfg, train, cut)
    done: list[ColdCalibration | ReadoutCalibration] = []
    before = train.take(train.timestamp < cut)
    if cfg.seconds.cold_calibration:
        if not len(held):
            raise ValueError(
                f"{cfg.data}: no impressions in the last {cfg.cold_calibration} of the training "
                "window to place the cold level on; hold out more, or drop cold_calibration"
            )
        done.append(calibrate_cold_level(model, train, held, before, table, device))
    last = max(cut, end - DAY)
    fit = held.take(np.flatnonzero(train.timestamp[held.row] >= last))
    if readout and len(fit):
        until = train.take(train.timestamp < last)
        done.append(calibrate_readout(model, train, fit, until, table, seed=cfg.seed))
    return done


def _load_backbone(model: Argus, weights: dict[str, torch.Tensor], source: str) -> None:
    """Pretrained weights into ``model``; only the new towers may be missing from them."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    new = {name for names in PARTS.values() for name in names}
    missing = [n for n in missing if n.split(".")[0] not in new]
    if unexpected or missing:
        raise ValueError(
            f"{source}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
