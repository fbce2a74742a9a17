"""The training loop every objective shares: configs, the optimizers and schedule, checkpoints and
resume, logging, data parallelism. A stage (``pretrain``, ``finetune``) hands it a :class:`Job`;
it knows nothing model-specific beyond the objective module the job carries."""

from __future__ import annotations

import json
import math
import resource
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from model.argus import PARTS, Argus, ArgusConfig, count_parameters, preset
from model.checkpoint import CHECKPOINT_FILE, read_checkpoint, save_checkpoint
from model.config import PRETRAIN_LR, apply_overrides
from model.data.batching import Spans, TemporalSplit, bucket_batches
from model.data.events import Events
from model.progress import bar as tqdm
from model.runtime import Runtime

# Fields that may differ when resuming: they change how long or where the run goes, not what it
# computes.
FSDP_ABOVE = 500_000_000  # parameters; "auto" shards larger models (argus-1b) over the ranks


# Settings a resumed run may change: the schedule's length, logging, the device, and how the
# weights were first set (a resumed run loads its own).
RESUMABLE = frozenset(
    {
        "max_steps",
        "epochs",
        "min_steps",
        "log_every",
        "checkpoint_every",
        "device",
        "compile",
        "warm_items",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """What every training stage shares: data, run directory, model size, schedule, logging."""

    data: str  # events directory or Parquet file
    out: str  # run directory
    preset: str = "argus-3m"
    model: tuple[str, ...] = ()  # ArgusConfig overrides, "key=value"
    max_len: int = 0  # events per history chunk; 0 keeps the preset's
    batch_size: int = 32  # chunks per step
    max_tokens: int = 0  # padded positions per step; 0 means batch_size * max_len
    max_steps: int = 0  # 0: train for `epochs` epochs
    epochs: int = 1
    # with max_steps 0, at least this many steps: a small log's few epochs are too few steps
    # (further epochs are drawn as the schedule needs them)
    min_steps: int = 0
    lr: float = PRETRAIN_LR
    # the hashed item table's own learning rate: a row moves only when a batch holds its item,
    # so at the backbone's rate the rows of rarely seen items hardly leave their random init
    table_lr: float = 1e-2  # 0: lr
    weight_decay: float = 0.01  # on weight matrices only (no embeddings, norms or biases)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0
    test_days: float = 7.0  # hold out the last N days for `argus evaluate`; 0 trains on everything
    test_fraction: float = 0.0  # or hold out this fraction of the time range (wins when > 0)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    device: str = "auto"
    compile: str = "auto"  # "auto" (on CUDA), "on" or "off"
    # Sparse gradients + SparseAdam for the hashed table: "auto" (on, except multi-GPU, where
    # NCCL has no sparse all-reduce, and FSDP, which shards dense gradients), "on" or "off".
    sparse_embeddings: str = "auto"
    # Several ranks: "ddp" (each holds the whole model), "fsdp" (parameters, gradients and
    # optimizer state sharded over the ranks) or "auto" (FSDP above FSDP_ABOVE parameters).
    parallel: str = "auto"
    # Batches per optimiser step, their gradients averaged: one process with accumulate=N takes
    # the steps N ranks take together (each micro-batch seeded as that rank's batch would be).
    accumulate: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "log_every", "checkpoint_every", "accumulate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "min_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("compile", "sparse_embeddings"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise ValueError(f"{name} must be auto, on or off, got {getattr(self, name)!r}")
        if self.parallel not in ("auto", "ddp", "fsdp"):
            raise ValueError(f"parallel must be auto, ddp or fsdp, got {self.parallel!r}")
        if self.parallel == "fsdp" and self.sparse_embeddings == "on":
            raise ValueError("FSDP shards dense gradients: set sparse_embeddings to auto or off")
        if self.lr <= 0 or self.table_lr < 0:
            raise ValueError(f"lr must be > 0 and table_lr >= 0, got {self.lr}, {self.table_lr}")

    def preset_config(self, **overrides: Any) -> ArgusConfig:
        """The preset's model config with ``overrides``, ``--max-len`` and ``--model`` applied."""
        if self.max_len:
            overrides["max_len"] = self.max_len
        return apply_overrides(preset(self.preset, **overrides), list(self.model))

    def split(self, events: Events) -> TemporalSplit | None:
        """The held-out test window, or None when training on everything."""
        return choose_split(events, self.test_days, self.test_fraction)


def choose_split(events: Events, test_days: float, test_fraction: float) -> TemporalSplit | None:
    """``last_fraction`` when ``test_fraction`` > 0, else ``last_days`` when ``test_days`` > 0."""
    if test_fraction > 0:
        return TemporalSplit.last_fraction(events, test_fraction)
    if test_days > 0:
        return TemporalSplit.last_days(events, test_days)
    return None


def training_events(events: Events, objective: str) -> Events:
    """The events an objective trains on: all of them, or the positives only for SASRec."""
    return events.take(events.positive) if objective == "sasrec" else events


_PAST = {"pretrain": "pretrained", "finetune": "fine-tuned"}


@dataclass
class TrainSummary:
    stage: str  # "pretrain" or "finetune"
    preset: str
    objective: str
    transformer_parameters: int
    steps: int
    events: int  # target events processed (summed over ranks)
    elapsed_s: float
    final_loss: float
    peak_memory_mib: float
    out: str
    interrupted: bool = False  # stopped by SIGINT/SIGTERM; the checkpoint allows --resume
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    @property
    def events_per_s(self) -> float:
        return self.events / max(self.elapsed_s, 1e-9)

    def line(self) -> str:
        if self.interrupted:
            return (
                f"interrupted at step {self.steps}; checkpoint saved in {self.out} "
                "(rerun with --resume to continue)"
            )
        return (
            f"{_PAST[self.stage]} {self.preset} ({self.objective}, "
            f"{self.transformer_parameters / 1e6:.2f}M transformer params): {self.steps} steps, "
            f"{self.events:,} events in {self.elapsed_s:.1f} s "
            f"({self.events_per_s:,.0f} events/s), "
            f"final loss {self.final_loss:.4f}, peak memory {self.peak_memory_mib:,.0f} MiB "
            f"-> {self.out}"
        )


class Optimizers:
    """AdamW for the dense parameters and, when the hashed table's gradient is sparse, SparseAdam
    for the table: only the rows a batch touched are read and updated (lazy Adam), so a step costs
    what the batch uses, not the 2^19-row table. Embeddings, norms and biases get no weight decay.
    """

    def __init__(self, model: Argus, cfg: TrainConfig, *, sparse: bool) -> None:
        table = model.item.table
        table.sparse = sparse
        no_decay = {
            id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
        }
        decay: list[nn.Parameter] = []
        rest: list[nn.Parameter] = []
        trainable = [p for p in model.parameters() if p.requires_grad]  # fine-tuning freezes heads
        # fine-tuning's new parts start from scratch: each its own learning rate (a multiple)
        rates = {
            "retrieval": getattr(cfg, "retrieval_lr", 0.0),
            "towers": getattr(cfg, "tower_lr", 0.0),
        }
        own: dict[str, list[nn.Parameter]] = {part: [] for part, lr in rates.items() if lr}
        part_of = {
            id(p): part
            for n, p in model.named_parameters()
            for part in own
            if n.split(".")[0] in PARTS[part]
        }
        table_scale = (cfg.table_lr or cfg.lr) / cfg.lr
        for p in trainable:
            if p is table.weight:
                continue
            if id(p) in part_of:
                own[part_of[id(p)]].append(p)
                continue
            (decay if p.ndim >= 2 and id(p) not in no_decay else rest).append(p)
        betas = (0.9, 0.98)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
        if not sparse and table.weight.requires_grad:
            groups.append({"params": [table.weight], "weight_decay": 0.0, "lr_scale": table_scale})
        decays = {"towers": getattr(cfg, "tower_weight_decay", 0.0)}
        for part, params in own.items():
            scale, wd = rates[part] / cfg.lr, decays.get(part, 0.0)
            matrices = [p for p in params if wd and p.ndim >= 2 and id(p) not in no_decay]
            others = [p for p in params if all(p is not m for m in matrices)]
            for members, decay_of in ((matrices, wd), (others, 0.0)):
                if members:
                    groups.append(
                        {
                            "params": members,
                            "weight_decay": decay_of,
                            "lr_scale": scale,
                            "part": part,
                        }
                    )
        self.parameters = trainable
        # the retrieval space is clipped on its own: its loss is a different scale
        retrieval = own.get("retrieval", [])
        separate = {id(p) for p in retrieval}
        self.clip_sets = [[p for p in trainable if id(p) not in separate], retrieval]
        self.dense = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)
        self.sparse = (
            torch.optim.SparseAdam(
                [{"params": [table.weight], "lr_scale": table_scale}], lr=cfg.lr, betas=betas
            )
            if sparse
            else None
        )

    @property
    def all(self) -> list[torch.optim.Optimizer]:
        return [self.dense] if self.sparse is None else [self.dense, self.sparse]

    def set_lr(self, lr: float, *, besides: tuple[str, ...] = ()) -> None:
        """Every group's rate from ``lr``, but the groups of the parts ``besides`` (their own
        learning rate given, in PARTS names): they keep theirs."""
        for optimizer in self.all:
            for group in optimizer.param_groups:
                if group.get("part") not in besides:
                    group["lr"] = lr * group.get("lr_scale", 1.0)

    def zero_grad(self) -> None:
        for optimizer in self.all:
            optimizer.zero_grad(set_to_none=True)

    def clip_and_step(self, max_norm: float) -> float:
        """Clip the global gradient norm (dense and sparse alike) to ``max_norm``, then step.
        The retrieval space (a separate tower with its own loss) is clipped on its own, so its
        gradients never shrink the rest's.

        Returns the norm of the rest before clipping.
        """
        totals = [self._clip(ps, max_norm) for ps in self.clip_sets]
        for optimizer in self.all:
            optimizer.step()
        return totals[0]

    @staticmethod
    def _clip(parameters: list[nn.Parameter], max_norm: float) -> float:
        grads = []
        for p in parameters:
            if p.grad is not None:
                if p.grad.is_sparse:
                    p.grad = p.grad.coalesce()  # duplicates summed, so the norm is right
                grads.append(p.grad)
        if not grads:
            return 0.0
        norms = [g.values().norm() if g.is_sparse else g.norm() for g in grads]
        # FSDP: each norm is of this rank's shard; full_tensor() reduces it over the ranks
        norms = [n.full_tensor() if isinstance(n, DTensor) else n for n in norms]
        total = torch.stack(norms).norm()
        scale = float((max_norm / (total + 1e-6)).clamp(max=1.0))  # a number: DTensors too
        for g in grads:
            g.mul_(scale)
        return float(total)

    def state_dict(self) -> dict[str, Any]:
        return {
            "dense": self.dense.state_dict(),
            "sparse": self.sparse and self.sparse.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None:
            self.sparse.load_state_dict(state["sparse"])


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_batches(
    spans: Spans, cfg: TrainConfig, max_len: int, runtime: Runtime, epoch: int
) -> list[np.ndarray]:
    """This rank's batches of spans for ``epoch``: shuffled, length-bucketed, seeded by epoch."""
    batches = bucket_batches(
        spans,
        batch_size=cfg.batch_size,
        max_tokens=cfg.max_tokens or cfg.batch_size * max_len,
        shuffle=True,
        seed=cfg.seed * 1_000_003 + epoch,
    )
    return runtime.shard(batches)


def _peak_memory_mib(runtime: Runtime) -> float:
    if runtime.cuda:
        return torch.cuda.max_memory_allocated(runtime.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    current = asdict(cfg)
    differ = [
        name
        for name in current
        if name not in RESUMABLE and _plain(saved.get(name)) != _plain(current[name])
    ]
    if differ:
        detail = ", ".join(f"{n}: {saved.get(n)!r} -> {current[n]!r}" for n in differ)
        raise ValueError(f"{path}: cannot resume with a different configuration ({detail})")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def saved_state(cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume (checked against ``cfg``), or None; refuses to overwrite one."""
    checkpoint_path = Path(cfg.out) / CHECKPOINT_FILE
    if resume:
        saved = read_checkpoint(checkpoint_path)
        _check_resumable(saved["train_config"], cfg, checkpoint_path)
        return saved
    if checkpoint_path.exists():
        raise ValueError(
            f"{checkpoint_path} already exists; pass --resume to continue it, or another --out"
        )
    return None


@dataclass
class Job:
    """What differs between pretraining and fine-tuning; :class:`Trainer` runs it."""

    cfg: TrainConfig
    stage: str  # "pretrain" or "finetune"
    preset: str  # the model's size preset, for the summary
    objective_name: str  # "argus", "sasrec" or "pairwise"
    model: Argus
    objective: nn.Module  # computes the losses; wrapped in DDP when there are several ranks
    epoch_batches: Callable[[int], list[np.ndarray]]  # this rank's batches of an epoch
    # (wrapped objective, batch) -> (losses with a "loss" entry, events the batch processed)
    step: Callable[[nn.Module, np.ndarray], tuple[dict[str, torch.Tensor], int]]
    train_until: int  # the model has seen no event at or after this time
    # values logged with each metrics row besides the losses (e.g. the learned temperature)
    extra_metrics: Callable[[], dict[str, float]] = dict
    # These parts (names of PARTS) train at least ``floor_steps`` steps (``max_steps`` unset)
    # when the job sets
    # ``floor_only``: called before every step with whether the rest of the model is done. The
    # rest learns as it would without them, on its own schedule; beyond it they train alone.
    floor_parts: tuple[str, ...] = ()
    floor_steps: int = 0
    floor_only: Callable[[bool], None] | None = None
    # Early stopping of the parts besides the floor parts: ``evaluate`` measures the model on
    # held-out data at the end of every epoch and of the run, and its ``watch`` value (higher is
    # better) decides. They end at their best evaluation, and stop training after ``patience``
    # evaluations without a gain; the floor parts then train alone to the run's end (with no
    # ``floor_only``, the run ends).
    evaluate: Callable[[], dict[str, float]] | None = None
    watch: str = ""
    patience: int = 2
    # Weight averaging: the parts besides the floor parts and the retrieval space end at an
    # exponential moving average of their weights after each step, with a horizon of this
    # fraction of their steps (early stopping then scores and keeps the averaged weights); 0:
    # none.
    average: float = 0.0
    # A random stream of the job's own (e.g. the retrieval loss's negatives, drawn apart so the
    # rest of training draws the same with or without them): the checkpoint keeps its state,
    # so a resumed run draws on as the uninterrupted one.
    rng: torch.Generator | None = None


@dataclass
class Stopping:
    """Where early stopping is (:attr:`Job.evaluate`); a checkpoint stores it."""

    # (step, what ``evaluate`` measured) of each evaluation
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    best: float = -math.inf
    best_step: int = 0
    stale: int = 0  # evaluations since the best
    stopped_step: int = 0  # 0: still training
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # the parts at their best


@dataclass
class Position:
    """Where a run is; a checkpoint stores it, so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    events_seen: int = 0  # target events, summed over ranks
    elapsed_s: float = 0.0  # training time, logging and checkpoints excluded


class MetricsWindow:
    """Sums over the steps since the last logged row: losses, gradient norm, events, time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)  # steps that logged each value
        self.steps, self.events, self.started = 0, 0, time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], grad_norm: float, events: int) -> None:
        for name, value in losses.items():
            self.sums[name] += float(value.detach())
            self.counts[name] += 1
        self.sums["grad_norm"] += grad_norm
        self.counts["grad_norm"] += 1
        self.steps += 1
        self.events += events

    def close(self, runtime: Runtime) -> tuple[dict[str, float], float, float]:
        """The window's means (over its steps and the ranks), seconds and events per second;
        starts anew."""
        seconds = time.perf_counter() - self.started
        means = {
            name: runtime.sum(value) / runtime.world_size / self.counts[name]
            for name, value in self.sums.items()
        }
        events_per_s = self.events / max(seconds, 1e-9)
        self.reset()
        return means, seconds, events_per_s


def uses_fsdp(cfg: TrainConfig, parameters: int, ranks: int) -> bool:
    """Whether training on ``ranks`` ranks shards the model (``cfg.parallel``, or ``auto``:
    above :data:`FSDP_ABOVE` parameters)."""
    auto = cfg.parallel == "auto" and parameters > FSDP_ABOVE
    return ranks > 1 and (cfg.parallel == "fsdp" or auto)


def fsdp_units(model: Argus) -> list[nn.Module]:
    """What FSDP gathers one at a time: each block and each other submodule (the heads and
    tables are called outside ``forward()`` — negatives, queries — so each gathers itself)."""
    return [*model.blocks, *(m for name, m in model.named_children() if name != "blocks")]


class Trainer:
    """Optimises ``job.objective``: schedule, clipping, logging, checkpoints, resume, curve."""

    def __init__(
        self, job: Job, runtime: Runtime, saved: dict[str, Any] | None, *, progress: bool
    ) -> None:
        self.job, self.runtime, self.cfg = job, runtime, job.cfg
        cfg, model = job.cfg, job.model
        self.out = Path(cfg.out)
        self.fsdp = uses_fsdp(cfg, count_parameters(model), runtime.world_size)
        sparse = cfg.sparse_embeddings == "on" or (
            cfg.sparse_embeddings == "auto"
            and not self.fsdp
            and not (runtime.cuda and runtime.world_size > 1)
        )
        model.item.table.sparse = sparse  # before DDP wraps it: DDP sets up sparse gradients
        self.position = Position()
        if saved is not None:  # the full weights, before any sharding
            model.load_state_dict(saved["model"])
            self.position = Position(**{name: saved[name] for name in asdict(self.position)})
        model.to(runtime.device).train()
        self.replicated: list[nn.Parameter] = []  # FSDP: whole on each rank, averaged by us
        if self.fsdp:  # shard in place; the optimizer then sees this rank's shards only
            # the root is the objective, the first module a step calls
            self.replicated = runtime.fully_shard(job.objective, fsdp_units(model))
            self.objective: nn.Module = job.objective
        else:
            self.objective = runtime.wrap(job.objective)
        self.optimizer = Optimizers(model, cfg, sparse=sparse)
        if saved is not None:
            self.load_optimizer(saved["optimizer"])
        if cfg.compile == "on" or (cfg.compile == "auto" and runtime.cuda):
            model.compile(dynamic=True)
        k = cfg.accumulate
        epoch_steps = sum(len(job.epoch_batches(e)) // k for e in range(cfg.epochs))
        self.whole_steps = cfg.max_steps or max(cfg.min_steps, epoch_steps)  # every part's
        # beyond them, the job's floor parts alone to their floor. One process: under DDP a
        # part without gradients would stall the all-reduce
        split = job.floor_only is not None and not cfg.max_steps and runtime.world_size == 1
        self.total = max(self.whole_steps, job.floor_steps) if split else self.whole_steps
        self.warmup = min(cfg.warmup_steps, self.total // 10)  # a short run keeps its cosine
        self.whole_warmup = min(cfg.warmup_steps, self.whole_steps // 10)
        self.window = MetricsWindow()
        self.lr, self.last_loss = cfg.lr, math.nan
        self.metrics_path = self.out / "metrics.jsonl"
        step = self.position.step
        self.history = _read_history(self.metrics_path, step) if saved is not None else []
        if runtime.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(
                json.dumps({"train": asdict(cfg), "model": asdict(model.cfg)}, indent=2) + "\n"
            )
            _write_history(self.metrics_path, self.history)
        self.stopping: Stopping | None = None
        if job.evaluate is not None:
            if runtime.world_size > 1:
                raise ValueError("early stopping runs on one process: train without torchrun")
            known = saved.get("stopping") if saved is not None else None
            self.stopping = Stopping(**known) if known else Stopping()
        if saved is not None and job.rng is not None and saved.get("rng") is not None:
            job.rng.set_state(saved["rng"])
        self.averaged: dict[str, torch.Tensor] = {}  # weight averaging (Job.average)
        if job.average > 0 and self.fsdp:  # the towers end at their last weights
            if runtime.is_main:
                print("weight averaging is off under FSDP: it averages whole weights", flush=True)
        elif job.average > 0:
            known = saved.get("averaged") if saved is not None else None
            self.averaged = known or {n: p.detach().clone() for n, p in self._averaged()}
        self.title = f"{job.preset} ({job.objective_name})"
        self.bar = tqdm(
            total=self.total,
            initial=step,
            desc=f"{job.stage} {self.title}",
            unit="step",
            disable=not (progress and runtime.is_main),
            dynamic_ncols=True,
        )

    @property
    def finished(self) -> bool:
        at = self.position
        return at.step >= self.total or self.ended_early

    @property
    def ended_early(self) -> bool:
        """Early stopping has ended the run: it stopped the model, and no part trains on."""
        stopped = self.stopping is not None and self.stopping.stopped_step > 0
        return stopped and self.job.floor_only is None

    def run(self) -> TrainSummary:
        """Train until ``finished`` or a stop request; checkpoint; summarise."""
        at, cfg = self.position, self.cfg
        stopped = False
        with _StopRequest() as stop:
            while not (self.finished or stopped):
                batches = self.job.epoch_batches(at.epoch)
                k = cfg.accumulate
                usable = len(batches) - len(batches) % k  # whole steps only
                if usable == 0:  # no whole step in an epoch: more epochs would not add one
                    break
                for start in range(at.batch_in_epoch, usable, k):
                    self.step(batches[start : start + k])
                    if at.step % cfg.log_every == 0 or at.step == self.total:
                        self.log()
                    self.bar.update(1)
                    if at.step == self.whole_steps < self.total:  # the rest of the model is done
                        self.settle()
                    if at.step % cfg.checkpoint_every == 0:
                        self.checkpoint()
                    if at.step >= self.total:
                        break
                    stopped = self.runtime.sum(float(stop.requested)) > 0  # on every rank
                    if stopped:
                        break
                if at.batch_in_epoch >= usable:
                    at.epoch, at.batch_in_epoch = at.epoch + 1, 0
                    self.evaluate()
        if self.finished:
            self.settle()
        self.bar.close()
        self.checkpoint()
        if self.runtime.is_main:
            from model.plots import training_curve

            training_curve(self.history, self.out / "training_curve.png", title=self.title)
        return self.summary()

    def step(self, group: list[np.ndarray]) -> None:
        """One optimiser step on the batches of spans in ``group`` (``accumulate`` of them):
        the mean of their losses, each batch seeded with the step's seed (dropout, sampling),
        as each rank's batch is under data parallelism."""
        cfg, at = self.cfg, self.position
        self.lr = cfg.lr * lr_factor(at.step, self.warmup, self.total, cfg.min_lr_ratio)
        self.optimizer.set_lr(self.lr)
        if self.whole_steps < self.total:  # all but the floor parts on a schedule of their own
            step = min(at.step, self.whole_steps - 1)
            whole = lr_factor(step, self.whole_warmup, self.whole_steps, cfg.min_lr_ratio)
            self.optimizer.set_lr(cfg.lr * whole, besides=self.job.floor_parts)
        if self.job.floor_only is not None:
            stopped = self.stopping is not None and self.stopping.stopped_step > 0
            self.job.floor_only(at.step >= self.whole_steps or stopped)
        self.optimizer.zero_grad()
        totals: dict[str, torch.Tensor] = {}
        batch_events = 0
        for index in group:
            torch.manual_seed(cfg.seed * 1_000_003 + at.step)
            losses, events = self.job.step(self.objective, index)
            (losses["loss"] / len(group)).backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value.detach() / len(group)
            batch_events += events
        self.runtime.average_gradients(self.replicated)
        grad_norm = self.optimizer.clip_and_step(cfg.grad_clip)
        at.step += 1
        at.batch_in_epoch += len(group)
        self.average()
        seen = int(self.runtime.sum(float(batch_events)))
        at.events_seen += seen
        self.window.add(totals, grad_norm, seen)

    def settle(self) -> None:
        """The parts besides the floor parts are done: they take their averaged weights, and
        early stopping scores them and keeps its best."""
        if not (self.stopping is not None and self.stopping.stopped_step):
            self._copy(self.averaged)
        self.evaluate()  # the last weights are a candidate too; then the best stays
        self.stop()

    def average(self) -> None:
        """Weight averaging (:attr:`Job.average`): move the averaged weights towards the
        weights of this step, while the parts they average train."""
        stopped = self.stopping is not None and self.stopping.stopped_step > 0
        if not self.averaged or stopped or self.position.step > self.whole_steps:
            return
        # the mean of the steps so far until the horizon is reached, then a moving average:
        # the weights the run started from (new towers are random) count for nothing
        horizon = max(1.0, self.job.average * self.whole_steps)
        rate = 1.0 / min(float(self.position.step), horizon)
        with torch.no_grad():
            for name, parameter in self._averaged():
                self.averaged[name].lerp_(parameter.detach(), rate)

    def evaluate(self) -> None:
        """Early stopping (:attr:`Job.evaluate`): score the model (its averaged weights, with
        weight averaging) unless stopped or scored at this step; keep the weights of a best
        score, stop after ``patience`` without one."""
        stopping, step = self.stopping, self.position.step
        if stopping is None or stopping.stopped_step or step > self.whole_steps:
            return
        if stopping.evaluations and stopping.evaluations[-1][0] == step:
            return
        assert self.job.evaluate is not None
        last = {n: p.detach().clone() for n, p in self._averaged()} if self.averaged else {}
        self._copy(self.averaged)
        measured = self.job.evaluate()
        stopping.evaluations.append((step, measured))
        score = measured[self.job.watch]
        best = score > stopping.best
        if best:
            stopping.weights = {n: p.detach().clone() for n, p in self._stopping_parameters()}
        self._copy(last)  # training goes on from its own weights
        if best:
            stopping.best, stopping.best_step, stopping.stale = score, step, 0
        else:
            stopping.stale += 1
        self.bar.set_postfix(held_out=f"{score:.4f}", best=f"{stopping.best:.4f}")
        if stopping.stale >= self.job.patience:
            self.stop()

    def stop(self) -> None:
        """Early stopping: the parts besides the floor parts back to their best weights, and
        trained no more."""
        stopping = self.stopping
        if stopping is None or stopping.stopped_step:
            return
        with torch.no_grad():
            for name, parameter in self._stopping_parameters():
                parameter.copy_(stopping.weights[name])
        stopping.stopped_step = max(self.position.step, 1)

    def _copy(self, weights: dict[str, torch.Tensor]) -> None:
        """Set the parameters named in ``weights`` to them."""
        if not weights:
            return
        with torch.no_grad():
            for name, parameter in self.job.model.named_parameters():
                if name in weights:
                    parameter.copy_(weights[name])

    def _averaged(self) -> list[tuple[str, nn.Parameter]]:
        """What weight averaging averages: the early-stopping parts but the retrieval space,
        which trains on, and whose trend weight is calibrated on a copy trained as it was."""
        own = set(PARTS["retrieval"])
        return [(n, p) for n, p in self._stopping_parameters() if n.split(".")[0] not in own]

    def _stopping_parameters(self) -> list[tuple[str, nn.Parameter]]:
        floor = {name for part in self.job.floor_parts for name in PARTS[part]}
        return [
            (name, p)
            for name, p in self.job.model.named_parameters()
            if p.requires_grad and name.split(".")[0] not in floor
        ]

    def log(self) -> None:
        """One row of ``metrics.jsonl``: the window's means, position, learning rate."""
        self.runtime.synchronize()
        at = self.position
        means, seconds, events_per_s = self.window.close(self.runtime)
        at.elapsed_s += seconds
        row = {
            **means,
            "step": at.step,
            "epoch": at.epoch,
            "lr": self.lr,
            "events_per_s": events_per_s,
            "events": at.events_seen,
            "elapsed_s": at.elapsed_s,
            **self.job.extra_metrics(),
        }
        self.last_loss = row["loss"]
        self.history.append(row)
        if self.runtime.is_main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", ev_s=f"{events_per_s:,.0f}")

    def load_optimizer(self, state: dict[str, Any]) -> None:
        if not self.fsdp:
            self.optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(
            self.job.model, self.optimizer.dense, state["dense"], options=options
        )

    def checkpoint(self) -> None:
        """``checkpoint.pt`` (rank 0): weights, optimiser state and position. Under FSDP every
        rank first takes part in gathering the full weights and optimizer state."""
        weights, optimizer = None, None
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            weights = get_model_state_dict(self.job.model, options=options)
            dense = get_optimizer_state_dict(self.job.model, self.optimizer.dense, options=options)
            optimizer = {"dense": dense, "sparse": None}
        if self.runtime.is_main:
            save_checkpoint(
                self.out / CHECKPOINT_FILE,
                self.job.model,
                weights=weights,
                train_config=asdict(self.cfg),
                optimizer=optimizer or self.optimizer.state_dict(),
                train_until=self.job.train_until,
                stopping=asdict(self.stopping) if self.stopping is not None else None,
                averaged=self.averaged or None,
                rng=self.job.rng.get_state() if self.job.rng is not None else None,
                **asdict(self.position),
            )

    def summary(self) -> TrainSummary:
        at, job = self.position, self.job
        return TrainSummary(
            stage=job.stage,
            preset=job.preset,
            objective=job.objective_name,
            transformer_parameters=count_parameters(job.model, transformer_only=True),
            steps=at.step,
            events=at.events_seen,
            elapsed_s=at.elapsed_s,
            final_loss=self.last_loss,
            peak_memory_mib=_peak_memory_mib(self.runtime),
            out=str(self.out),
            interrupted=at.step < self.total and not self.ended_early,
            history=self.history,
        )


class _StopRequest:
    """SIGINT/SIGTERM (Ctrl-C, a preempted node, ``kubectl delete``) finish the current step,
    write a checkpoint and end the run; ``--resume`` continues it exactly."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __enter__(self) -> _StopRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _read_history(path: Path, up_to_step: int) -> list[dict[str, float]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["step"] <= up_to_step]


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
