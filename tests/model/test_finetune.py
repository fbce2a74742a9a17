from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from model.argus import PARTS, Argus, preset
from model.calibration import HeldOutRanking
from model.checkpoint import load_model
from model.contract import DAY
from model.data.events import Events, parse_duration, read_events
from model.evaluate import impression_scores
from model.finetune import FinetuneConfig, finetune
from model.impressions import (
    SESSION_GAP,
    find_impressions,
    group_ids,
    group_pairs,
    impression_grades,
    pair_weight_table,
    session_ids,
    snapshot_rows,
)
from model.inference import tower_scores
from model.metrics import pair_accuracy
from model.objectives import (
    PairwiseObjective,
    impression_level_backward,
    make_samples,
    sample_batch,
)
from model.train import pretrain
from tests.model.conftest import terminated_after, tiny_config


def events_of(timestamps: list[int], users: list[int] | None = None, **columns: list) -> Events:
    n = len(timestamps)
    defaults: dict[str, object] = {
        "user_id": users or [1] * n,
        "item_id": list(range(10, 10 + n)),
        "source": [1] * n,
        "artist_id": [-1] * n,
        "played_ratio": [1.0] * n,
        "liked": [False] * n,
        "disliked": [False] * n,
    }
    arrays = {k: np.asarray(v) for k, v in {**defaults, **columns}.items()}
    return Events.from_arrays(timestamp=np.asarray(timestamps), **arrays)


def tiny_towers(**overrides: object) -> Argus:
    torch.manual_seed(0)
    return Argus(preset("argus-tiny", tower_dim=16, max_len=512, **overrides))


def test_grades_rank_like_full_partial_skip_dislike_and_skip_organic_events() -> None:
    nan = float("nan")
    events = events_of(
        list(range(8)),
        source=[0, 1, 1, 1, 1, 1, 1, 2],
        played_ratio=[1.0, 1.0, 0.95, 0.5, 0.1, 0.1, nan, 0.9],
        liked=[False, True, False, False, False, False, False, False],
        disliked=[False, False, False, False, False, True, False, False],
    )
    assert impression_grades(events).tolist() == [-1, 4, 3, 2, 1, 0, -1, 3]


def test_durations_and_the_pair_weight_table() -> None:
    assert [parse_duration(t) for t in ("0", "90s", "30m", "6h", "1d", "3600")] == [
        0,
        90,
        1800,
        21_600,
        DAY,
        3600,
    ]
    with pytest.raises(ValueError, match="'yesterday' is not a duration"):
        parse_duration("yesterday")
    table = pair_weight_table()
    like, full, skip = 4, 3, 1
    assert table[like, skip] > table[full, skip] > 0  # like-vs-skip weighs more than listen-vs-skip
    assert table[skip, like] == 0 and np.all(np.diag(table) == 0)
    assert pair_weight_table("like>skip=5, full>partial=0")[like, skip] == 5
    for spec, problem in [
        ("skip>like=1", "skip is not above like"),
        ("love>skip=1", "unknown grade 'love'"),
        ("like>skip=-1", "finite number >= 0"),
        ("like-skip", "expected hi>lo=weight"),
    ]:
        with pytest.raises(ValueError, match=problem):
            pair_weight_table(spec)


def test_a_day_is_scored_with_the_state_before_its_midnight() -> None:
    t = [0, 100, DAY + 50, DAY + 100, DAY + 200, 90_000]
    events = events_of(t, users=[1, 1, 1, 1, 1, 2])
    assert snapshot_rows(events, DAY).tolist() == [-1, -1, 1, 1, 1, -1]  # one state per user-day
    # A snapshot taken 23h59m10s before midnight has seen only the event at t=0.
    assert snapshot_rows(events, DAY, DAY - 50).tolist() == [-1, -1, 0, 0, 0, -1]
    with pytest.raises(ValueError, match="lag > 0"):
        snapshot_rows(events, 0)


@pytest.mark.parametrize("lag", [0, DAY])
def test_an_impression_s_popularity_is_the_count_the_day_s_bundle_holds(
    sim_data: Path, lag: int
) -> None:
    """The towers' popularity input counts the item's positive events before the impression's
    UTC day, as the daily bundle's item vectors do: never the impression's own day (its own
    feedback, a label leak) nor anything after it."""
    events = read_events(sim_data)
    imp = find_impressions(events, lag)
    positive = events.positive
    rng = np.random.default_rng(0)
    for i in rng.choice(len(imp), 200, replace=False).tolist():
        row = imp.row[i]
        day = events.timestamp[row] // DAY * DAY
        mine = positive & (events.item_id == events.item_id[row]) & (events.timestamp < day)
        assert imp.popularity[i] == mine.sum(), i
        before = (events.item_id == events.item_id[row]) & (events.timestamp < day)
        assert imp.seen[i] == before.sum(), i  # any event: zero for an item the bundle lacks
    assert (imp.seen == 0).any() and (imp.seen > 0).any()
    popular = int(np.argmax(imp.popularity))
    assert imp.popularity[popular] > 0  # the check is not vacuous
    # Flipping every event's feedback on and after the impression's day changes nothing.
    day = events.timestamp[imp.row[popular]] // DAY * DAY
    later = events.timestamp >= day
    flipped = Events.from_arrays(
        **{k: getattr(events, k) for k in ("user_id", "item_id", "timestamp", "source")},
        artist_id=events.artist_id,
        played_ratio=np.where(later, 0.0, events.played_ratio),
        liked=events.liked & ~later,
        disliked=events.disliked | later,
    )
    again = find_impressions(flipped, lag)
    kept = np.isin(imp.row, again.row) & (events.timestamp[imp.row] < day + DAY)
    same = np.searchsorted(again.row, imp.row[kept])
    assert kept.sum() > 0
    np.testing.assert_array_equal(again.popularity[same], imp.popularity[kept])


@pytest.mark.parametrize(("lag", "delay"), [(3 * 3600, 0), (DAY, 0), (DAY, 600)])
def test_snapshot_rows_match_a_plain_loop(sim_data: Path, lag: int, delay: int) -> None:
    events = read_events(sim_data)
    got = snapshot_rows(events, lag, delay)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(events), 300, replace=False).tolist():
        cut = events.timestamp[i] // lag * lag - delay
        expected = -1
        for j in range(i - 1, -1, -1):
            if events.user_id[j] != events.user_id[i]:
                break
            if events.timestamp[j] < cut:
                expected = j
                break
        assert got[i] == expected, i


@pytest.mark.parametrize("lag", [0, DAY])
def test_both_items_of_every_pair_use_the_same_state_the_service_would_have(
    sim_data: Path, lag: int
) -> None:
    events = read_events(sim_data)
    found = find_impressions(events, lag)
    hi, lo, _ = group_pairs(found.group, found.grade, pair_weight_table())
    assert len(hi) > 1000
    assert np.array_equal(found.state[hi], found.state[lo])
    assert np.all(events.user_id[found.state] == events.user_id[found.row])
    if lag:  # the state is from before the impression's UTC midnight
        assert np.all(events.timestamp[found.state] < events.timestamp[found.row] // DAY * DAY)
    else:  # the state comes before the first impression of the group: it sees none of them
        first = np.minimum.reduceat(
            found.row, np.flatnonzero(np.r_[True, np.diff(found.group) > 0])
        )
        assert np.all(found.state < first[found.group])
        assert np.all(found.state == first[found.group] - 1)


def test_at_lag_0_a_group_s_own_feedback_never_changes_its_scores(sim_data: Path) -> None:
    events = read_events(sim_data)
    found = find_impressions(events, 0)
    sizes = np.bincount(found.group)
    # Sessions with several impressions, one per user (a user's later sessions see earlier ones).
    rich = np.flatnonzero(sizes >= 3)
    first_row = found.row[np.searchsorted(found.group, rich)]
    _, one_per_user = np.unique(events.user_id[first_row], return_index=True)
    groups = rich[one_per_user]
    assert len(groups) >= 10
    mine = np.flatnonzero(np.isin(found.group, groups))
    model = tiny_towers()
    base = impression_scores(model, events, found.take(mine))
    # Rewrite the feedback of every impression of these groups (grades change, items do not).
    rows = found.row[mine]
    columns = {name: getattr(events, name).copy() for name in vars(events)}
    rng = np.random.default_rng(0)
    columns["played_ratio"][rows] = rng.random(len(rows)).astype(np.float32)
    columns["liked"][rows] = ~columns["liked"][rows]
    columns["disliked"][rows] = ~columns["liked"][rows] & (rng.random(len(rows)) < 0.5)
    rewritten = impression_scores(model, Events(**columns), found.take(mine))
    np.testing.assert_allclose(rewritten, base, rtol=0, atol=1e-6)


def test_groups_are_one_user_and_one_bucket_or_session() -> None:
    t = [0, 100, 5000, DAY + 1, DAY + 2, 10]
    events = events_of(t, users=[1, 1, 1, 1, 1, 2])
    rows = np.arange(len(t))
    assert group_ids(events, rows, "lag", DAY).tolist() == [0, 0, 0, 1, 1, 2]
    assert group_ids(events, rows, "auto", DAY).tolist() == [0, 0, 0, 1, 1, 2]
    assert group_ids(events, rows, "lag", 0).tolist() == [0, 0, 0, 1, 1, 2]  # 1 day when lag is 0
    assert group_ids(events, rows, "session", DAY).tolist() == [0, 0, 1, 2, 2, 3]
    assert group_ids(events, rows, "auto", 0).tolist() == [0, 0, 1, 2, 2, 3]  # sessions at lag 0
    assert group_ids(events, rows, "1h", DAY).tolist() == [0, 0, 1, 2, 2, 3]
    assert group_ids(events, rows, "session", 0, session_gap=6000).tolist() == [0, 0, 0, 1, 1, 2]


def test_a_session_across_midnight_splits_when_states_are_daily() -> None:
    events = events_of([DAY - 100, DAY - 50, DAY + 50])
    rows = np.arange(3)
    assert group_ids(events, rows, "session", 0).tolist() == [0, 0, 0]
    assert group_ids(events, rows, "session", DAY).tolist() == [0, 0, 1]


def test_group_pairs_are_every_differently_graded_pair_of_a_group() -> None:
    rng = np.random.default_rng(1)
    group = rng.integers(0, 7, 60)
    grade = rng.integers(0, 5, 60)
    table = pair_weight_table("full>partial=0")
    hi, lo, weight = group_pairs(group, grade, table)
    got = {(a, b): w for a, b, w in zip(hi.tolist(), lo.tolist(), weight.tolist(), strict=True)}
    expected = {
        (a, b): table[grade[a], grade[b]]
        for a, b in itertools.permutations(range(60), 2)
        if group[a] == group[b] and grade[a] > grade[b] and table[grade[a], grade[b]] > 0
    }
    assert got == expected
    scores = grade.astype(np.float64)
    assert pair_accuracy(scores, hi, lo, weight) == 1.0
    assert pair_accuracy(-scores, hi, lo, weight) == 0.0
    assert pair_accuracy(np.zeros(60), hi, lo, weight) == 0.5  # ties count half


def test_one_pass_and_impression_level_give_the_same_loss_and_gradients(sim_data: Path) -> None:
    events = read_events(sim_data)
    samples = make_samples(events, find_impressions(events, DAY), 64, min_history=1)
    groups = [
        len(np.unique(samples.impressions.group[a:b]))
        for a, b in itertools.pairwise(samples.offsets.tolist())
    ]
    index = np.sort(np.argsort(groups, kind="stable")[-6:])  # the chunks with the most groups
    batch, imp = sample_batch(events, samples, index, pair_weight_table())
    assert len(imp.hi) > 500 and len(np.unique(imp.group)) > 3 * len(index)  # many prefixes
    model = tiny_towers(retrieval_dim=8)  # the towers read the taste and the popularity too
    objective = PairwiseObjective(model)
    one_pass = objective(batch.to_torch(), imp.to_torch())["loss"]
    one_pass.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    reference = impression_level_backward(
        model, events, samples.spans.take(index), imp, prefix_batch=5
    )
    assert abs(float(one_pass.detach()) - reference) < 1e-5
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if name in grads:
            assert p.grad is not None
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-5, msg=name)
    assert any(float(g.abs().max()) > 1e-3 for g in grads.values())  # the test is not vacuous
    for used in ("user_taste.weight", "item_taste.weight", "item_popularity.weight"):
        assert float(grads[used].abs().max()) > 0, used
    # The pairwise loss never trains the retrieval space (its taste is read, detached).
    assert not any(name.startswith("retrieval_") for name in grads)


def one_pass_scores(model: Argus, events: Events, lag: int) -> dict[int, float]:
    """Impression row -> score through the training path (one chunk per user)."""
    samples = make_samples(events, find_impressions(events, lag), 512, min_history=1)
    batch, imp = sample_batch(events, samples, np.arange(len(samples.spans)), pair_weight_table())
    tensors, it = batch.to_torch(), imp.to_torch()
    with torch.no_grad():
        h = model(tensors)[it["sample"], it["position"]]
        scores = tower_scores(model, h, it["item_id"], it["artist_id"]).numpy()
    return dict(zip(samples.impressions.row.tolist(), scores.tolist(), strict=True))


@pytest.mark.parametrize("lag", [DAY, 6 * 3600])
def test_no_impression_sees_an_event_after_its_snapshot(sim_data: Path, lag: int) -> None:
    events = read_events(sim_data)
    impressions = find_impressions(events, lag)
    # A user's impression with several events between its cut-off and itself.
    k = int(np.flatnonzero(impressions.row - impressions.state > 3)[0])
    i, s = int(impressions.row[k]), int(impressions.state[k])
    user = events.take(events.user_id == events.user_id[i])
    i, s = (
        i - int(np.flatnonzero(events.user_id == events.user_id[i])[0]),
        s - (int(np.flatnonzero(events.user_id == events.user_id[i])[0])),
    )
    cutoff = int(user.timestamp[i]) // lag * lag  # the snapshot has seen every event before it
    assert user.timestamp[s] < cutoff <= user.timestamp[s + 1]
    model = tiny_towers()

    def scores(changed: Events) -> tuple[float, float]:
        found = find_impressions(changed, lag)
        at = int(np.flatnonzero(found.row == i)[0])
        offline = impression_scores(model, changed, found.take(np.array([at])))[0]
        return float(offline), one_pass_scores(model, changed, lag)[i]

    base = scores(user)
    # Rewrite every event after the cut-off (the impression keeps its item, its grade may change).
    rng = np.random.default_rng(0)
    later = np.arange(s + 1, len(user))
    other = later[later != i]
    columns = {name: getattr(user, name).copy() for name in vars(user)}
    columns["item_id"][other] += 1000
    columns["artist_id"][other] = 7
    columns["source"][other] = rng.integers(0, 4, len(other))
    columns["played_ratio"][later] = rng.random(len(later)).astype(np.float32)
    columns["liked"][later] = rng.random(len(later)) < 0.5
    columns["disliked"][later] = ~columns["liked"][later] & (rng.random(len(later)) < 0.3)
    columns["timestamp"][later] += 3  # later still, order unchanged
    rewritten = scores(Events(**columns))
    np.testing.assert_allclose(rewritten, base, rtol=0, atol=1e-6)

    # Move the first event after the cut-off just before it: now the impression sees it.
    moved = {name: getattr(user, name).copy() for name in vars(user)}
    moved["timestamp"][s + 1] = cutoff - 1
    after_move = scores(Events(**moved))
    assert min(abs(a - b) for a, b in zip(after_move, base, strict=True)) > 1e-4
    assert abs(after_move[0] - after_move[1]) < 1e-5  # offline and one-pass scoring agree


def test_finetune_learns_and_leaves_the_pretraining_heads_alone(
    sim_data: Path, tmp_path: Path
) -> None:
    pretrain(tiny_config(sim_data, tmp_path / "pre", max_steps=20), progress=False)
    cfg = FinetuneConfig(
        data=str(sim_data),
        out=str(tmp_path / "fine"),
        init=str(tmp_path / "pre"),
        test_days=3.0,
        batch_size=8,
        max_steps=60,
        lr=3e-3,
        log_every=10,
        warmup_steps=2,
        tower_dim=16,
    )
    summary = finetune(cfg, progress=False)
    assert summary.line().startswith("fine-tuned argus-tiny (pairwise")
    rows = [json.loads(x) for x in (tmp_path / "fine" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["pair_accuracy"] > 0.55
    before, _ = load_model(tmp_path / "pre")
    after, state = load_model(tmp_path / "fine")
    assert after.cfg.tower_dim == 16 and state["train_config"]["lag"] == "1d"
    for name in ("nip_head.0.weight", "fp_head.2.bias", "log_temperature"):
        assert torch.equal(before.state_dict()[name], after.state_dict()[name]), name
    name = "blocks.0.qkv.weight"
    assert not torch.equal(before.state_dict()[name], after.state_dict()[name])


def _pretrained(sim_data: Path, tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """A short fine-tuning config (``settings`` over it) from a tiny model pretrained 10 steps."""
    pretrain(tiny_config(sim_data, tmp_path / "pre", max_steps=10), progress=False)
    return {
        "data": str(sim_data),
        "init": str(tmp_path / "pre"),
        "test_days": 3.0,
        "batch_size": 8,
        "min_steps": 0,
        "log_every": 1,
        "warmup_steps": 2,
        "tower_dim": 16,
        "trend_calibration": "0",
        **settings,
    }


def test_the_retrieval_space_trains_alone_to_its_floor_and_the_rest_as_without_it(
    sim_data: Path, tmp_path: Path
) -> None:
    base = _pretrained(sim_data, tmp_path, epochs=1)
    cfg = FinetuneConfig(out=str(tmp_path / "same"), **base, retrieval_min_steps=0)
    epoch = finetune(cfg, progress=False).steps
    cfg = FinetuneConfig(out=str(tmp_path / "floor"), **base, retrieval_min_steps=epoch + 8)
    assert finetune(cfg, progress=False).steps == epoch + 8
    # an explicit max_steps is every part's
    cfg = FinetuneConfig(out=str(tmp_path / "max"), **{**base, "max_steps": 3})
    assert finetune(cfg, progress=False).steps == 3
    same, floor = (load_model(tmp_path / name)[0].state_dict() for name in ("same", "floor"))
    retrieval = [name for name in same if name.split(".")[0] in PARTS["retrieval"]]
    rest = [name for name in same if name not in retrieval]
    # the towers and the backbone learn as in a run without the floor, to the bit ...
    assert all(torch.equal(same[name], floor[name]) for name in rest)
    # ... while the retrieval space trains on alone
    assert not all(torch.equal(same[name], floor[name]) for name in retrieval)
    path = tmp_path / "floor" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [("pairwise" in row) for row in rows] == [row["step"] <= epoch for row in rows]
    assert len(rows) == epoch + 8 and all(row["retrieval"] > 0 for row in rows)
    with pytest.raises(ValueError, match="retrieval_min_steps must be >= 0"):
        FinetuneConfig(out=str(tmp_path / "bad"), **base, retrieval_min_steps=-1)


def test_early_stopping_keeps_the_best_towers_and_the_retrieval_space_trains_on(
    sim_data: Path, tmp_path: Path
) -> None:
    # the towers overfit nine days within a few epochs
    base = _pretrained(sim_data, tmp_path, epochs=12, tower_lr=3e-2, early_stopping="1d")
    cfg = FinetuneConfig(out=str(tmp_path / "stop"), **base)
    summary = finetune(cfg, progress=False)
    report = json.loads((tmp_path / "stop" / "early_stopping.json").read_text())
    steps = [int(step) for step in report["scores"]]
    epoch = steps[0]
    best = max(report["scores"], key=report["scores"].get)
    # one evaluation an epoch, up to two without a gain; the run goes on to its length
    assert steps == [epoch * (i + 1) for i in range(len(steps))]
    assert int(best) == report["best_step"] < report["stopped_step"] == steps[-1]
    assert steps[-1] == report["best_step"] + 2 * epoch < summary.steps == 12 * epoch
    assert not summary.interrupted
    # the kept towers are the best evaluation's: they rank the held-out day as it did
    model, _ = load_model(tmp_path / "stop")
    events = read_events(sim_data)
    split = cfg.split(events)
    assert split is not None
    train = split.train(events)
    cut = split.split_time - DAY
    found = cfg.impressions(train)
    held = found.take(np.flatnonzero((train.timestamp[found.row] >= cut) & (found.head == 0)))
    before = train.take(train.timestamp < cut)
    ranking = HeldOutRanking(model, train, held, before, pair_weight_table(""))
    assert ranking()["pair_accuracy"] == pytest.approx(report["scores"][best], abs=1e-6)
    assert report["pairs"] == len(ranking.hi) > 0
    # ... and after the stop only the retrieval space learns
    rows = [json.loads(x) for x in (tmp_path / "stop" / "metrics.jsonl").read_text().splitlines()]
    assert [("pairwise" in row) for row in rows] == [
        row["step"] <= report["stopped_step"] for row in rows
    ]
    # without a retrieval space the stop ends the run
    cfg = FinetuneConfig(out=str(tmp_path / "alone"), **base, retrieval_dim=0)
    summary = finetune(cfg, progress=False)
    report = json.loads((tmp_path / "alone" / "early_stopping.json").read_text())
    assert summary.steps == report["stopped_step"] < 12 * epoch and not summary.interrupted
    with pytest.raises(ValueError, match="early_stopping_patience must be >= 1"):
        FinetuneConfig(out=str(tmp_path / "bad"), **base, early_stopping_patience=0)
    # the checkpoint keeps where early stopping is: a finished run, resumed for longer, keeps
    # its towers where they stopped and trains the retrieval space on
    short = {**base, "epochs": 2, "early_stopping_patience": 50}
    finetune(FinetuneConfig(out=str(tmp_path / "resumed"), **short), progress=False)
    first = json.loads((tmp_path / "resumed" / "early_stopping.json").read_text())
    longer = FinetuneConfig(out=str(tmp_path / "resumed"), **{**short, "epochs": 4})
    assert finetune(longer, progress=False, resume=True).steps == 4 * epoch
    again = json.loads((tmp_path / "resumed" / "early_stopping.json").read_text())
    assert again == {**first, "steps": 4 * epoch} and first["stopped_step"] == 2 * epoch


def test_weight_averaging_ends_the_towers_at_the_moving_average_of_their_steps(
    sim_data: Path, tmp_path: Path
) -> None:
    base = _pretrained(sim_data, tmp_path, max_steps=12)
    unaveraged = FinetuneConfig(out=str(tmp_path / "plain"), **base, weight_average=0)
    finetune(unaveraged, progress=False)
    # every step's weights, read as the run trains
    model: list[Argus] = []
    steps: list[dict[str, torch.Tensor]] = []

    def weights() -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in model[0].named_parameters()}

    def first(module: torch.nn.Module, args: Any) -> None:
        if isinstance(module, Argus) and not model:
            model.append(module)
            steps.append(weights())  # the weights the run starts from

    def stepped(optimizer: Any, args: Any, kwargs: Any) -> None:
        steps.append(weights())

    hooks = (
        torch.nn.modules.module.register_module_forward_pre_hook(first),
        register_optimizer_step_post_hook(stepped),
    )
    try:
        cfg = FinetuneConfig(out=str(tmp_path / "avg"), **base, weight_average=0.25)
        finetune(cfg, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    per_step = (len(steps) - 1) // 12  # the optimizers (dense, sparse table) step in turn
    assert len(steps) == 1 + 12 * per_step
    trajectory = [steps[0], *steps[per_step::per_step]]
    plain, averaged = (load_model(tmp_path / name)[0] for name in ("plain", "avg"))
    trained = {name for name, p in model[0].named_parameters() if p.requires_grad}
    retrieval = {name for name in trained if name.split(".")[0] in PARTS["retrieval"]}
    assert retrieval and "blocks.0.qkv.weight" in trained and "user_proj.weight" in trained
    for name, last in plain.state_dict().items():
        if name not in trajectory[-1]:
            continue
        # averaging does not change how the run trains ...
        assert torch.equal(trajectory[-1][name], last), name
        # ... the retrieval space (and what does not train) ends at its last weights ...
        ended = averaged.state_dict()[name]
        if name in retrieval or name not in trained:
            assert torch.equal(ended, last), name
            continue
        # ... and the towers and the backbone at the moving average over a quarter of the run
        # (the mean of the steps so far up to that horizon: the start counts for nothing)
        expected = trajectory[0][name].clone()
        for t, step in enumerate(trajectory[1:], start=1):
            expected.lerp_(step[name], 1 / min(t, 3))
        assert torch.equal(ended, expected), name
        assert not torch.equal(ended, last), name
    # interrupted and resumed, a run averages (and draws its retrieval negatives) as if it had
    # not stopped
    cfg = FinetuneConfig(out=str(tmp_path / "stopped"), **base, weight_average=0.25)
    with terminated_after(tmp_path / "stopped" / "metrics.jsonl", rows=4):
        assert finetune(cfg, progress=False).interrupted
    assert not finetune(cfg, progress=False, resume=True).interrupted
    resumed = load_model(tmp_path / "stopped")[0].state_dict()
    for name, tensor in averaged.state_dict().items():
        assert torch.equal(resumed[name], tensor), name
    with pytest.raises(ValueError, match=r"weight_average must be in \[0, 1\]"):
        FinetuneConfig(out=str(tmp_path / "bad"), **base, weight_average=1.5)


def test_finetune_refuses_a_sasrec_init_and_a_leaking_one(sim_data: Path, tmp_path: Path) -> None:
    pretrain(tiny_config(sim_data, tmp_path / "sasrec", objective="sasrec"), progress=False)
    pretrain(tiny_config(sim_data, tmp_path / "late", test_days=1.0), progress=False)
    base: dict[str, Any] = {"data": str(sim_data), "test_days": 3.0, "max_steps": 2}
    with pytest.raises(ValueError, match="needs an ARGUS backbone"):
        finetune(FinetuneConfig(out=str(tmp_path / "a"), init=str(tmp_path / "sasrec"), **base))
    with pytest.raises(ValueError, match="after this run's test window starts"):
        finetune(FinetuneConfig(out=str(tmp_path / "b"), init=str(tmp_path / "late"), **base))
    with pytest.raises(ValueError, match="'-1d' is not a duration"):
        FinetuneConfig(out=str(tmp_path / "c"), lag="-1d", **base)
    with pytest.raises(ValueError, match="min_history must be >= 1"):
        FinetuneConfig(out=str(tmp_path / "c"), min_history=0, **base)


def test_the_runtime_head_trains_on_every_impression_at_lag_0_in_groups_of_its_own(
    sim_data: Path, tmp_path: Path
) -> None:
    events = read_events(sim_data)
    cfg = FinetuneConfig(data=str(sim_data), out=str(tmp_path / "f"))  # 1d, runtime lag 0
    assert cfg.runtime_head and cfg.model_config().runtime_head
    both = cfg.impressions(events)
    daily, runtime = find_impressions(events, DAY), find_impressions(events, 0)
    assert (both.head == 0).sum() == len(daily) and (both.head == 1).sum() == len(runtime)
    assert np.all(np.diff(both.row) >= 0)
    np.testing.assert_array_equal(both.state[both.head == 1], runtime.state)
    np.testing.assert_array_equal(both.state[both.head == 0], daily.state)
    heads_per_group = np.zeros((both.group.max() + 1, 2), dtype=bool)
    heads_per_group[both.group, both.head] = True
    assert heads_per_group.sum(1).max() == 1  # a pair never mixes heads
    batch = sample_batch(
        events, make_samples(events, both, 96, 1), np.arange(4), pair_weight_table()
    )[1]
    assert batch.runtime.any() and not batch.runtime.all()
    assert np.all(batch.runtime[batch.hi] == batch.runtime[batch.lo])
    lag0 = FinetuneConfig(data=str(sim_data), out=str(tmp_path / "g"), lag="0")
    off = FinetuneConfig(data=str(sim_data), out=str(tmp_path / "h"), runtime_lag="")
    assert not lag0.runtime_head and not off.runtime_head


def test_a_revealed_session_prefix_is_the_state_and_only_the_rest_is_scored(
    sim_data: Path,
) -> None:
    events = read_events(sim_data)
    found = find_impressions(events, 0, reveal=3)
    assert len(found) > 0
    session = session_ids(events, SESSION_GAP)
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    # the state: the session's third event; every scored impression comes after it, in it
    assert (found.state == starts[session[found.row] - 1] + 2).all()
    assert (found.row > found.state).all()
    assert (session[found.state] == session[found.row]).all()
    # one state per group, and no impression of the revealed prefix
    for group in np.unique(found.group)[:50]:
        assert len(np.unique(found.state[found.group == group])) == 1
    plain = find_impressions(events, 0)
    assert len(found) < len(plain)
