"""``argus pretrain``: next-item + feedback prediction (or the SASRec baseline) on an event log.

The trainer knows nothing model-specific beyond :func:`model.losses.pretraining_loss`.
AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast and ``torch.compile``
on CUDA. Every step reseeds torch from ``(seed, step)``, so a run is deterministic for a seed and a
resumed run continues exactly as if it had never stopped. Rank 0 writes ``checkpoint.pt``,
``config.json``, ``metrics.jsonl`` and ``training_curve.png`` into ``out``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.argus import Argus, ArgusConfig
from model.data.batching import chunk_spans, make_batch
from model.data.events import Catalog, Events, read_events
from model.future import positive_factors
from model.losses import ItemFrequencies
from model.objectives import PretrainingObjective
from model.runtime import Runtime
from model.trainer import (
    Job,
    TrainConfig,
    Trainer,
    TrainSummary,
    epoch_batches,
    saved_state,
    training_events,
)


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    objective: str = "argus"  # "argus" or "sasrec"
    epochs: int = 4  # more passes kept improving what the state knows, to 4 at least
    # the item table starts from a truncated SVD of the training positives (user x item), each
    # item's row unit-length: item structure the logs show at once, which the NIP then refines
    warm_items: bool = True

    def model_config(self) -> ArgusConfig:
        return self.preset_config(objective=self.objective)


def pretrain(cfg: PretrainConfig, *, progress: bool = True, resume: bool = False) -> TrainSummary:
    """Train a model as ``cfg`` says; see the module docstring."""
    runtime = Runtime.setup(cfg.device)
    with runtime.session():
        saved = saved_state(cfg, resume)
        model_cfg = cfg.model_config()
        events = read_events(cfg.data)
        split = cfg.split(events)
        train = training_events(split.train(events) if split else events, cfg.objective)
        if len(train) == 0:
            raise ValueError(f"{cfg.data}: no training events before the test window")
        spans = chunk_spans(train.user_offsets()[1], model_cfg.max_len)
        frequencies = ItemFrequencies.from_item_ids(train.item_id).to(runtime.device)
        torch.manual_seed(cfg.seed)
        model = Argus(model_cfg)
        if cfg.warm_items and saved is None:  # a resumed run loads its own weights
            warm_start(model, train, progress)

        def step(objective: nn.Module, index: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
            batch = make_batch(train, spans.take(index))
            uniform = frequencies.sample_uniform(model_cfg.n_uniform_negatives)
            with runtime.autocast():
                losses = objective(batch.to_torch(runtime.device), uniform)
            return losses, int(batch.lengths.sum())

        job = Job(
            cfg=cfg,
            stage="pretrain",
            preset=cfg.preset,
            objective_name=cfg.objective,
            model=model,
            objective=PretrainingObjective(model, frequencies),
            epoch_batches=functools.partial(epoch_batches, spans, cfg, model_cfg.max_len, runtime),
            step=step,
            train_until=split.split_time if split else int(train.timestamp.max()) + 1,
            extra_metrics=lambda: {"temperature": float(model.temperature().detach())},
        )
        return Trainer(job, runtime, saved, progress=progress).run()


# The positives the warm start's SVD reads at most: a seeded sample of them beyond this, so that a
# log of billions of events costs the start-up seconds, not the memory of the whole matrix.
WARM_MAX_POSITIVES = 20_000_000


def warm_start(
    model: Argus,
    train: Events,
    progress: bool,
    max_positives: int = WARM_MAX_POSITIVES,
    *,
    retrieval: bool = False,
) -> None:
    """The item table from a truncated SVD of ``train``'s positives (``PretrainConfig``'s
    ``warm_items``; at most ``max_positives`` of them, a seeded sample): every item with a
    positive gets its factor row, scaled to unit length (a rank below the table's width where
    the logs have fewer users or items; nothing without positives). ``retrieval``: the
    retrieval space's table (``FinetuneConfig``'s ``warm_retrieval``)."""
    table = model.retrieval_item.table if retrieval else model.item.table
    dim = table.weight.shape[1]
    rows = np.flatnonzero(train.positive)
    if len(rows) > max_positives:
        rows = np.sort(np.random.default_rng(0).choice(rows, max_positives, replace=False))
    train = train.take(rows)
    positive = train.positive
    rank = min(
        dim, len(np.unique(train.user_id[positive])), len(np.unique(train.item_id[positive]))
    )
    if rank < 1:
        return
    items, factors = positive_factors(train, int(train.timestamp.max()) + 1, rank=rank)
    targets = np.zeros((len(items), dim), np.float32)
    targets[:, :rank] = factors / (np.linalg.norm(factors, axis=1, keepdims=True) + 1e-9)
    catalog = Catalog.from_events(train)
    artist = catalog.artist_id[catalog.column(items)]
    residual = model.warm_start_items(
        torch.from_numpy(items),
        torch.from_numpy(artist),
        torch.from_numpy(targets),
        retrieval=retrieval,
    )
    if progress:
        space = "retrieval items" if retrieval else "items"
        print(f"warm start: {len(items):,} {space} from a rank-{rank} SVD, residual {residual:.2f}")
