"""The retrieval space: its query, its targets, its training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.argus import PARTS, Argus, positive_events, preset
from model.checkpoint import load_model
from model.contract import DAY
from model.data.batching import Spans, make_batch
from model.data.events import counts_before, read_events
from model.finetune import FinetuneConfig, finetune
from model.losses import (
    ItemFrequencies,
    ItemTrend,
    batch_softmax_loss,
    future_targets,
    retrieval_loss,
)


def batch_of(sim_data: Path, n: int = 6, length: int = 40) -> dict[str, torch.Tensor]:
    events = read_events(sim_data)
    _, offsets = events.user_offsets()
    start = offsets[:n]
    end = np.minimum(offsets[1 : n + 1], start + np.arange(length - n + 1, length + 1))
    return make_batch(events, Spans(start, end, start), pad_to_multiple=1).to_torch()


def retrieval_loss_of(
    model: Argus, batch: dict[str, torch.Tensor], **settings: Any
) -> torch.Tensor:
    """The batch's retrieval loss, its negatives the batch's first 16 items."""
    frequencies = ItemFrequencies.from_item_ids(batch["item_id"].flatten().numpy())
    return retrieval_loss(
        model,
        batch,
        frequencies,
        frequencies.ids[:16],
        horizon=7 * DAY,
        window=32,
        temperature=0.05,
        **settings,
    )


def trained_by_the_retrieval_loss(
    model: Argus, batch: dict[str, torch.Tensor], trend: ItemTrend | None = None
) -> set[str]:
    """The parameters one backward pass of the batch's retrieval loss gives a gradient."""
    retrieval_loss_of(model, batch, trend=trend).backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.any())}


@pytest.mark.parametrize("reads", ["pooled", "state"])
def test_the_query_is_the_mlp_of_the_mean_positive_item_so_far(sim_data: Path, reads: str) -> None:
    """``pooled``: the MLP of the mean positive item so far; ``state``: of it and the state."""
    torch.manual_seed(0)
    cfg = preset("argus-tiny", tower_dim=8, retrieval_dim=12, retrieval_query=reads)
    model = Argus(cfg).eval()
    batch = batch_of(sim_data)
    with torch.no_grad():
        queries = model.retrieval_queries(batch)
        h = model(batch)
        positive = positive_events(batch)
        for row in range(len(batch["lengths"])):
            for t in range(int(batch["lengths"][row])):
                ids = batch["item_id"][row, : t + 1][positive[row, : t + 1]]
                mean = (
                    model.retrieval_items(ids).mean(0)
                    if len(ids)
                    else torch.zeros(model.cfg.retrieval_dim)
                )
                read = torch.cat([mean, h[row, t]]) if reads == "state" else mean
                expected = model.retrieval_head(read)
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


def test_future_targets_count_the_horizon_from_when_the_query_is_asked(sim_data: Path) -> None:
    """A query asked when the next event came (``retrieval_gap``): its targets are the
    positives within the horizon of that moment, however long the user was away before it."""
    batch = batch_of(sim_data, n=8, length=64)
    time = batch["timestamp"]
    asked = time + 3 * DAY  # as if every user came back three days later
    valid, target = future_targets(batch, DAY, 32, torch.Generator().manual_seed(1), asked)
    rows, positions = torch.nonzero(valid, as_tuple=True)
    chosen = target[rows, positions]
    assert len(chosen) and bool((chosen > positions).all())
    assert bool((time[rows, chosen] - asked[rows, positions] <= DAY).all())
    assert bool((time[rows, chosen] - time[rows, positions] > DAY).any())  # beyond the default
    default, _ = future_targets(batch, DAY, 32, torch.Generator().manual_seed(1))
    assert not torch.equal(valid, default)


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
    events = read_events(sim_data)
    positive = events.take(events.positive)
    trend = ItemTrend.of(positive.item_id, positive.timestamp, 7 * DAY)
    touched = trained_by_the_retrieval_loss(model, batch, trend)
    assert touched and all(n.split(".")[0] in PARTS["retrieval"] for n in touched), touched
    assert "trend_head.bias" in touched  # the trend weight learns from the same loss
    with pytest.raises(ValueError, match="pass the ItemTrend"):
        retrieval_loss(
            model, batch, frequencies, frequencies.ids[:16], horizon=DAY, window=8, temperature=1
        )


def test_item_trend_counts_each_item_s_positives_in_the_window_before_the_day(
    sim_data: Path,
) -> None:
    events = read_events(sim_data)
    positive = events.take(events.positive)
    window = 3 * DAY
    trend = ItemTrend.of(positive.item_id, positive.timestamp, window)
    rng = np.random.default_rng(0)
    ids = np.r_[rng.choice(np.unique(positive.item_id), 40), -5, 10**12]  # two never seen
    at = np.r_[rng.integers(positive.timestamp.min(), positive.timestamp.max(), 30), 0, 2**40]
    got = trend.log_counts(torch.from_numpy(ids), torch.from_numpy(at)).expm1().round()
    day = at // DAY * DAY  # the day's start: the count the day's bundle holds
    for row, d in enumerate(day):
        bounds = np.full(len(ids), d)
        want = counts_before(positive.item_id, positive.timestamp, ids, bounds - window, bounds)
        np.testing.assert_array_equal(got[row].numpy(), want)
    assert got.sum() > 0 and got[:, -2:].sum() == 0
    # of all time: every positive before the day
    ever = trend.log_counts(torch.from_numpy(ids), torch.from_numpy(at), all_time=True)
    ever = ever.expm1().round()
    for row, d in enumerate(day):
        bounds = np.full(len(ids), d)
        want = counts_before(positive.item_id, positive.timestamp, ids, bounds - 2**50, bounds)
        np.testing.assert_array_equal(ever[row].numpy(), want)
    assert (ever >= got).all() and (ever > got).any() and ever[:, -2:].sum() == 0


def test_the_trend_prior_is_the_query_s_weight_times_the_candidate_s_trend_for_its_row() -> None:
    """The in-batch softmax with a row-dependent prior: each row's logits are what vectors with
    the query's weight and the candidate's trend (on that row's day) appended would give."""
    torch.manual_seed(0)
    n, e, catalog = 6, 4, 20
    table = torch.randn(catalog, e)
    ids = torch.tensor([3, 5, 5, 9, 0, 12])
    uniform = torch.tensor([1, 3, 17, 19])
    frequencies = ItemFrequencies.from_item_ids(np.arange(catalog).repeat(np.arange(catalog) + 1))
    query, weight = torch.randn(n, e), torch.randn(n)
    trend = torch.rand(n, catalog) * 3  # each row's own day: its own trend of every item

    with_prior = batch_softmax_loss(
        query,
        ids,
        lambda i: table[i],
        uniform,
        frequencies,
        0.5,
        lambda i: weight[:, None] * trend[:, i],
    )
    rows = []
    negatives = torch.unique(torch.cat([ids, uniform]))
    log_q = frequencies.log_q(negatives, n, len(uniform))
    for row in range(n):
        logits = (query[row] @ table[negatives].T + weight[row] * trend[row, negatives]) / 0.5
        logits = logits - log_q
        target = int((negatives == ids[row]).nonzero())
        others = negatives != ids[row]
        normalizer = torch.logaddexp(logits[target], torch.logsumexp(logits[others], 0))
        rows.append(normalizer - logits[target])
    torch.testing.assert_close(with_prior, torch.stack(rows).mean())


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


def test_the_stored_query_reads_the_time_away_until_the_cut_off_the_runtime_one_none(
    finetuned: Path, exported: Path, sim_data: Path
) -> None:
    """With ``retrieval_gap`` (the default), the retrieval part of every stored user vector is
    the query asked at the export's cut-off, ``as_of - last event`` after the user's last event;
    the runtime ONNX encoder asks it at the last event (the live history ends now)."""
    import onnxruntime as ort

    from model.export import ENCODER_FILE, ENCODER_INPUTS, ENCODER_OUTPUT
    from model.inference import last_spans

    model, _ = load_model(finetuned)
    assert model.cfg.retrieval_gap and model.cfg.retrieval_trend
    events = read_events(sim_data)
    as_of = json.loads((exported / "export.json").read_text())["as_of"]
    assert as_of == int(events.timestamp.max()) + 1
    users = np.load(exported / "user_vectors.npy")
    spans = last_spans(events, model.cfg.max_len)
    session = ort.InferenceSession(str(exported / ENCODER_FILE), providers=["CPUExecutionProvider"])
    d, gaps, apart = model.cfg.ranking_dim, [], []
    for k in np.random.default_rng(2).choice(len(spans), 6, replace=False).tolist():
        batch = make_batch(events, spans.take(np.array([k])), pad_to_multiple=1)
        tensors = batch.to_torch()
        n = int(tensors["lengths"][0])
        with torch.no_grad():
            h = model(tensors)[:, n - 1]
            taste = model.taste(tensors)[:, n - 1]
            gap = as_of - tensors["timestamp"][:, n - 1]
            stored = model.retrieval_query(taste, h, gap).numpy()[0]
            runtime = model.retrieval_query(taste, h).numpy()[0]
        gaps.append(int(gap[0]))
        apart.append(float(np.abs(stored - runtime).max()))
        np.testing.assert_allclose(users[k, d:], stored, rtol=0, atol=1e-5)
        inputs = {name: getattr(batch, name) for name in ENCODER_INPUTS}
        (onnx_out,) = session.run([ENCODER_OUTPUT], inputs)
        np.testing.assert_allclose(onnx_out[0, d:], runtime, atol=1e-4)
    assert len(set(gaps)) > 1 and max(apart) > 1e-4  # the time away reaches the query


@pytest.mark.parametrize("trains_state", [False, True])
def test_the_retrieval_loss_reaches_the_backbone_only_with_retrieval_trains_state(
    sim_data: Path, trains_state: bool
) -> None:
    torch.manual_seed(0)
    cfg = preset("argus-tiny", tower_dim=8, retrieval_dim=12, retrieval_trains_state=trains_state)
    model = Argus(cfg)
    touched = {n.split(".")[0] for n in trained_by_the_retrieval_loss(model, batch_of(sim_data))}
    assert {"retrieval_item", "retrieval_head"} <= touched
    backbone = {"blocks", "final_norm", "fusion"}
    assert (backbone <= touched) if trains_state else not (backbone & touched), touched
    assert "user_proj" not in touched and "nip_head" not in touched  # never the other heads


def test_state_dropout_reaches_the_query_while_training_and_never_in_evaluation(
    sim_data: Path,
) -> None:
    torch.manual_seed(0)
    model = Argus(preset("argus-tiny", tower_dim=8, retrieval_dim=12))
    batch = batch_of(sim_data)

    def loss(dropout: float) -> float:
        torch.manual_seed(1)
        generator = torch.Generator().manual_seed(2)
        value = retrieval_loss_of(model, batch, generator=generator, state_dropout=dropout)
        return float(value.detach())

    model.train()
    assert loss(0.5) == loss(0.5) != loss(0.0)
    model.eval()
    assert loss(0.5) == loss(0.0)
    config = FinetuneConfig(data="x", out="y", retrieval_state_dropout=0.3)
    training = config.retrieval_training(read_events(sim_data), "cpu")
    assert training is not None and training.state_dropout == 0.3
    for wrong in (-0.1, 1.0):
        with pytest.raises(ValueError, match="retrieval_state_dropout"):
            FinetuneConfig(data="x", out="y", retrieval_state_dropout=wrong)


def test_with_retrieval_popularity_the_query_weighs_all_time_positives_too(
    sim_data: Path,
) -> None:
    """``retrieval_popularity``: the query ends with two weights, popularity's then the trend's;
    the item vectors with log1p of the items' positives of all time, then of the trend window;
    the retrieval loss trains both weights."""
    from model.inference import item_vectors, trend_counts

    torch.manual_seed(0)
    cfg = preset(
        "argus-tiny",
        tower_dim=8,
        retrieval_dim=6,
        retrieval_trend=7 * DAY,
        retrieval_popularity=True,
        max_len=64,
    )
    model = Argus(cfg)
    taste, h = torch.randn(3, 5, 6), torch.randn(3, 5, cfg.d_model)
    with torch.no_grad():
        model.trend_head.bias.copy_(torch.tensor([0.5, -2.0]))
        query = model.retrieval_query(taste, h)
    assert query.shape == (3, 5, 8)
    assert (query[..., -2] == 0.5).all() and (query[..., -1] == -2.0).all()

    events = read_events(sim_data)
    ids, _, retrieval = item_vectors(model, events)
    assert retrieval.shape == (len(ids), 8)
    np.testing.assert_allclose(retrieval[:, -2], np.log1p(trend_counts(events, ids, None)))
    np.testing.assert_allclose(retrieval[:, -1], np.log1p(trend_counts(events, ids, 7 * DAY)))
    assert (retrieval[:, -2] > retrieval[:, -1]).any()
    positives = np.bincount(np.searchsorted(ids, events.item_id[events.positive]), None, len(ids))
    np.testing.assert_allclose(retrieval[:, -2], np.log1p(positives), rtol=1e-6)

    batch = batch_of(sim_data, n=8, length=64)
    positive = events.take(events.positive)
    trend = ItemTrend.of(positive.item_id, positive.timestamp, 7 * DAY)
    trained_by_the_retrieval_loss(model, batch, trend)
    grad = model.trend_head.bias.grad
    assert grad is not None and bool((grad != 0).all())  # both weights learn
    with pytest.raises(ValueError, match="retrieval_popularity needs retrieval_trend"):
        preset("argus-tiny", tower_dim=8, retrieval_dim=6, retrieval_popularity=True)


def test_fine_tuning_starts_the_retrieval_table_from_the_training_positives_factors(
    sim_data: Path, tmp_path: Path
) -> None:
    """``warm_retrieval`` (the default): before its first step the retrieval space's items are
    the unit-length rank-``retrieval_dim`` SVD factors of the training positives (the held-out
    days left out), up to a rotation (a small log's singular values tie); off, the table
    starts at random."""
    import dataclasses

    from model.future import positive_factors

    events = read_events(sim_data)
    cfg = FinetuneConfig(
        data=str(sim_data),
        out="-",
        preset="argus-tiny",
        test_days=3.0,
        batch_size=8,
        max_steps=1,
        lr=1e-9,
        retrieval_lr=1e-9,
        retrieval_dim=8,
    )
    assert FinetuneConfig(data="-", out="-").warm_retrieval
    split = cfg.split(events)
    assert split is not None
    ids, factors = positive_factors(split.train(events), split.split_time, rank=8)
    want = torch.from_numpy(factors / np.linalg.norm(factors, axis=1, keepdims=True)).float()
    explained = {}
    for warm in (True, False):
        out = tmp_path / str(warm)
        finetune(dataclasses.replace(cfg, out=str(out), warm_retrieval=warm), progress=False)
        model, _ = load_model(out)
        with torch.no_grad():
            got = model.retrieval_items(torch.from_numpy(ids))
        fit = got @ torch.linalg.lstsq(got, want).solution  # the best linear map onto them
        explained[warm] = float(1 - ((fit - want) ** 2).sum() / ((want - want.mean(0)) ** 2).sum())
        assert float(torch.median(got.norm(dim=1))) == pytest.approx(1.0, abs=0.1)
    assert explained[True] > 0.99 and explained[False] < 0.3, explained
