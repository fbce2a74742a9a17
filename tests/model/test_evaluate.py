from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_model
from model.data.batching import Spans, TemporalSplit, make_batch, sample_users
from model.data.events import Catalog, Events, read_events
from model.evaluate import EvalConfig, evaluate, evaluate_model, ranking_targets
from model.metrics import ranking_metrics, ranks
from model.train import pretrain
from tests.model.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(sim_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for objective in ("argus", "sasrec"):
        out = root / objective
        config = tiny_config(sim_data, out, objective=objective, max_steps=30, max_len=512)
        pretrain(config, progress=False)
        runs[objective] = out
    return runs


def test_ranks_count_ties_half_and_skip_excluded_items() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5], [3.0, 2.0, 1.0, 0.0, -1.0]])
    target = torch.tensor([0, 4])
    # row 0: one item above, two others tied (count half) -> 1 + 1; row 1: last of five -> 4
    assert ranks(scores, target).tolist() == [2, 4]
    excluded = torch.tensor([[False, True, False, False, False], [True, True, False, False, False]])
    assert ranks(scores, target, excluded).tolist() == [1, 2]


def test_ranking_metrics_by_hand() -> None:
    metrics = ranking_metrics(np.array([0, 1, 9, 10, 500]), ks=(10, 100))
    assert metrics["recall@10"] == pytest.approx(3 / 5)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)
    assert metrics["recall@100"] == pytest.approx(4 / 5)


def test_ranking_targets_are_test_positives_after_a_positive() -> None:
    #        user 1 ......................  user 2 ..........
    liked = [True, False, True, True, True, False, True, True]
    items = [10, 11, 12, 10, 13, 20, 21, 22]
    time = [1, 2, 3, 10, 11, 1, 10, 11]
    events = Events.from_arrays(
        user_id=np.array([1, 1, 1, 1, 1, 2, 2, 2]),
        item_id=np.array(items),
        timestamp=np.array(time),
        source=np.zeros(8),
        artist_id=np.full(8, -1),
        played_ratio=np.full(8, np.nan),
        liked=np.array(liked),
        disliked=np.zeros(8, dtype=bool),
    )
    split = TemporalSplit(split_time=10, end_time=12)
    # user 2's first test positive (row 6) has no earlier positive: not a target
    assert ranking_targets(events, split, exclude_seen=False).tolist() == [3, 4, 7]
    # row 3 repeats item 10: dropped when seen items are excluded
    assert ranking_targets(events, split, exclude_seen=True).tolist() == [4, 7]


@pytest.mark.parametrize("objective", ["argus", "sasrec"])
def test_batched_ranks_equal_one_history_at_a_time(
    objective: str, sim_data: Path, trained: dict[str, Path]
) -> None:
    """The evaluation's batching, spans and gathers give the rank a direct computation gives."""
    model, _ = load_model(trained[objective])
    events = read_events(sim_data)
    split = TemporalSplit.last_days(events, 3)
    events = split.until_end(events)
    catalog = Catalog.from_events(events)
    targets = ranking_targets(events, split, exclude_seen=True)
    cfg = EvalConfig(exclude_seen=True, batch_size=5)
    result = evaluate_model(model, events, split, catalog, targets, cfg, torch.device("cpu"), False)
    assert set(result.ranks["nip"]) == set(targets.tolist())
    assert np.diff(events.user_offsets()[1]).max() <= model.cfg.max_len  # whole histories fit

    own = events.take(events.positive) if objective == "sasrec" else events
    rows_of_own = (
        np.flatnonzero(events.positive) if objective == "sasrec" else np.arange(len(events))
    )
    _, offsets = own.user_offsets()
    output = model.output_embedding(torch.from_numpy(catalog.ids))
    for row in targets[:: max(1, len(targets) // 15)]:
        r = int(np.searchsorted(rows_of_own, row))  # the target's row in the model's own events
        first = offsets[np.searchsorted(offsets, r, side="right") - 1]
        start = max(first, r + 1 - model.cfg.max_len)
        one = make_batch(own, Spans(np.array([start]), np.array([r + 1]), np.array([r])))
        tensors = one.to_torch()
        with torch.no_grad():
            context = model.context_embedding(tensors) if model.argus else None
            h = model(tensors, context)[0, r - start - 1]  # state just before the target
            ctx = context[0, r - start][None] if context is not None else None
            scores = (model.nip_query(h[None], ctx) @ output.T)[0]
        user = events.user_id[row]
        seen = events.item_id[(events.user_id == user) & (np.arange(len(events)) < row)]
        scores[torch.from_numpy(catalog.column(np.unique(seen)))] = float("-inf")
        target = catalog.column(events.item_id[[row]])[0]
        expected = int((scores > scores[target]).sum())
        assert result.ranks["nip"][int(row)] == expected, row


def test_evaluate_writes_a_report_on_common_targets(
    sim_data: Path, trained: dict[str, Path], tmp_path: Path
) -> None:
    report = evaluate(
        [trained["argus"], trained["sasrec"]], sim_data, tmp_path, cfg=EvalConfig(), progress=False
    )
    models = report["models"]
    assert list(models) == ["ARGUS (argus)", "ARGUS (argus) + like", "SASRec (sasrec)", "MostPop"]
    argus = models["ARGUS (argus)"]
    for name in ("nip_loss", "like_loss", "dislike_loss", "skip_loss", "played_ratio_loss"):
        assert np.isfinite(argus[name]) and argus[name] > 0
    assert "like_loss" not in models["SASRec (sasrec)"]
    assert report["split"]["test_days"] == 3.0  # taken from the checkpoint
    for metrics in models.values():
        assert 0 <= metrics["ndcg@10"] <= metrics["ndcg@100"] <= 1
        assert metrics["recall@10"] <= metrics["recall@100"]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["models"] == models
    table = (tmp_path / "eval.md").read_text()
    assert "| MostPop |" in table and "ndcg@10" in table

    events = read_events(sim_data)
    split = TemporalSplit.last_days(events, 3)
    events = split.until_end(events)
    targets = ranking_targets(events, split, exclude_seen=False)
    assert report["ranking_targets"] == len(targets)
    assert models["MostPop"]["recall@10"] == pytest.approx(mostpop_recall10(events, split, events))

    # A sample of users: fewer targets, but popularity still counts every user.
    sampled = evaluate(
        [trained["argus"]], sim_data, None, cfg=EvalConfig(max_users=10), progress=False
    )
    some = sample_users(events, split, 10)
    assert np.unique(some.user_id).size == 10
    assert sampled["ranking_targets"] == len(ranking_targets(some, split, exclude_seen=False))
    expected = mostpop_recall10(some, split, events)
    assert sampled["models"]["MostPop"]["recall@10"] == pytest.approx(expected)


def mostpop_recall10(events: Events, split: TemporalSplit, popularity_from: Events) -> float:
    """MostPop Recall@10, recomputed independently with numpy and dicts."""
    targets = ranking_targets(events, split, exclude_seen=False)
    train = popularity_from.take(
        (popularity_from.timestamp < split.split_time) & popularity_from.positive
    )
    items, counts = np.unique(train.item_id, return_counts=True)
    popularity = dict(zip(items.tolist(), counts.tolist(), strict=True))
    catalog = np.unique(popularity_from.item_id)
    score = np.array([popularity.get(i, 0) for i in catalog.tolist()])
    hits = 0
    for row in targets:
        s = popularity.get(int(events.item_id[row]), 0)
        rank = (score > s).sum() + ((score == s).sum() - 1) // 2
        hits += rank < 10
    return hits / len(targets)


def test_a_checkpoint_trained_on_the_test_window_is_refused(sim_data: Path, tmp_path: Path) -> None:
    pretrain(tiny_config(sim_data, tmp_path / "all", test_days=0), progress=False)
    with pytest.raises(ValueError, match="would leak"):
        evaluate([tmp_path / "all"], sim_data, None, test_days=3, progress=False)
    with pytest.raises(ValueError, match="needs a test window"):
        evaluate([tmp_path / "all"], sim_data, None, progress=False)
