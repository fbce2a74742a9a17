"""The retrieval space: its query, its targets, its training (DESIGN.md §4, §7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.argus import Argus, positive_events, preset
from model.checkpoint import load_model
from model.contract import DAY
from model.data.batching import Spans, make_batch
from model.data.events import read_events
from model.finetune import FinetuneConfig, finetune
from model.losses import ItemFrequencies, future_targets, retrieval_loss


def batch_of(sim_data: Path, n: int = 6, length: int = 40) -> dict[str, torch.Tensor]:
    events = read_events(sim_data)
    _, offsets = events.user_offsets()
    start = offsets[:n]
    end = np.minimum(offsets[1 : n + 1], start + np.arange(length - n + 1, length + 1))
    return make_batch(events, Spans(start, end, start), pad_to_multiple=1).to_torch()


def test_the_query_is_the_mlp_of_the_mean_positive_item_so_far(sim_data: Path) -> None:
    torch.manual_seed(0)
    model = Argus(preset("argus-tiny", tower_dim=8, retrieval_dim=12)).eval()
    batch = batch_of(sim_data)
    with torch.no_grad():
        queries = model.retrieval_queries(batch)
        positive = positive_events(batch)
        for row in range(len(batch["lengths"])):
            for t in range(int(batch["lengths"][row])):
                ids = batch["item_id"][row, : t + 1][positive[row, : t + 1]]
                mean = (
                    model.retrieval_items(ids).mean(0)
                    if len(ids)
                    else torch.zeros(model.cfg.retrieval_dim)
                )
                expected = model.retrieval_head(mean)
                torch.testing.assert_close(queries[row, t], expected, rtol=0, atol=1e-5)
        # Padding never reaches a real position: the same rows, cut to their own lengths.
        for row in range(len(batch["lengths"])):
            n = int(batch["lengths"][row])
            alone = {
                k: v[row : row + 1, :n] if v.ndim == 2 else v[row : row + 1]
                for k, v in batch.items()
            }
            torch.testing.assert_close(
                model.retrieval_queries(alone)[0], queries[row, :n], rtol=0, atol=1e-6
            )


def test_future_targets_are_later_positives_within_the_horizon_and_window(sim_data: Path) -> None:
    batch = batch_of(sim_data, n=8, length=64)
    positive = positive_events(batch)
    for horizon, window in ((DAY, 5), (7 * DAY, 32)):
        valid, target = future_targets(batch, horizon, window, torch.Generator().manual_seed(1))
        assert valid.any()
        rows, positions = torch.nonzero(valid, as_tuple=True)
        chosen = target[rows, positions]
        assert bool((chosen > positions).all()) and bool((chosen - positions <= window).all())
        assert bool(positive[rows, chosen].all())
        gap = batch["timestamp"][rows, chosen] - batch["timestamp"][rows, positions]
        assert bool((gap <= horizon).all())
        assert bool((chosen < batch["lengths"][rows]).all())


def test_finetuning_trains_the_retrieval_space_beside_the_towers(
    sim_data: Path, tmp_path: Path
) -> None:
    def run(out: Path, **extra: object) -> list[dict[str, float]]:
        cfg = FinetuneConfig(
            data=str(sim_data),
            out=str(out),
            preset="argus-tiny",
            test_days=3.0,
            batch_size=8,
            max_steps=30,
            log_every=5,
            tower_dim=16,
            retrieval_dim=16,
            **extra,  # type: ignore[arg-type]
        )
        finetune(cfg, progress=False)
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if '"retrieval"' in line]

    logged = run(tmp_path / "a")
    assert logged and logged[-1]["retrieval"] < logged[0]["retrieval"]  # it learns
    # Its loss reaches its own parameters only; the towers read its taste detached, so the
    # pairwise loss never trains it (tested in test_finetune).
    model, _ = load_model(tmp_path / "a")
    batch = batch_of(sim_data, n=8, length=64)
    frequencies = ItemFrequencies.from_item_ids(batch["item_id"].flatten().numpy())
    loss = retrieval_loss(
        model,
        batch,
        frequencies,
        frequencies.ids[:16],
        horizon=7 * DAY,
        window=32,
        temperature=0.05,
    )
    loss.backward()
    touched = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert touched and all(n.startswith("retrieval_") for n in touched), touched


def test_a_data_set_without_impressions_trains_the_retrieval_space_only(
    sim_data: Path, tmp_path: Path
) -> None:
    """MovieLens has no recommended events: nothing to rank, but retrieval still learns."""
    import dataclasses

    events = read_events(sim_data)
    events = dataclasses.replace(events, source=np.zeros_like(events.source))  # no impressions
    data = tmp_path / "organic"
    data.mkdir()
    import pyarrow.parquet as pq

    pq.write_table(events.to_table(), data / "events.parquet")
    common = dict(data=str(data), preset="argus-tiny", test_days=3.0, batch_size=8, max_steps=10)
    finetune(FinetuneConfig(out=str(tmp_path / "r"), log_every=5, **common), progress=False)  # type: ignore[arg-type]
    logged = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["pairwise"] == 0.0 and logged[-1]["retrieval"] > 0.0
    with pytest.raises(ValueError, match="no impressions"):
        finetune(FinetuneConfig(out=str(tmp_path / "x"), retrieval_dim=0, **common), progress=False)  # type: ignore[arg-type]
