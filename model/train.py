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
from model.data.events import read_events
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
