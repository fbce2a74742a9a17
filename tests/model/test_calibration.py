from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.calibration import CALIBRATION_FILE, cold_offset
from model.checkpoint import CHECKPOINT_FILE, load_model, read_checkpoint
from model.contract import DAY
from model.data.events import read_events
from model.finetune import FinetuneConfig
from tests.conftest import tiny_finetune

W = np.ones(2)
SETTINGS: dict[str, Any] = {"item_min_events": 3, "retrieval_dim": 0}


def test_the_offset_balances_the_pairs_a_cold_item_wins_and_loses() -> None:
    # cold 0 liked over known 1 by -1; known 2 liked over cold 3 by +3: the loss
    # softplus(1 - δ) + softplus(δ - 3) is least where both margins are 2, at δ = 2
    scores = np.array([0.0, 1.0, 3.0, 0.0])
    cold = np.array([True, False, False, True])
    delta = cold_offset(scores, cold, np.array([0, 2]), np.array([1, 3]), W)
    assert delta == pytest.approx(2.0, abs=1e-6)
    # a heavier pair pulls it its way
    heavier = cold_offset(scores, cold, np.array([0, 2]), np.array([1, 3]), np.array([3.0, 1.0]))
    assert heavier > 2.5


def test_without_a_pair_of_one_cold_item_nothing_moves() -> None:
    scores = np.array([0.0, 1.0, 2.0, 3.0])
    both_known = cold_offset(scores, np.zeros(4, bool), np.array([0]), np.array([1]), W[:1])
    both_cold = cold_offset(scores, np.ones(4, bool), np.array([0, 2]), np.array([1, 3]), W)
    assert both_known == 0.0 and both_cold == 0.0


def test_pairs_on_one_side_only_stop_at_a_finite_margin() -> None:
    scores = np.array([0.0, 5.0])
    cold = np.array([True, False])
    delta = cold_offset(scores, cold, np.array([0]), np.array([1]), W[:1])  # cold must rise
    assert np.isfinite(delta) and 5.0 < delta <= 9.0 + 1e-6


def test_calibration_needs_cold_items() -> None:
    with pytest.raises(ValueError, match=r"cold_calibration.*cold_items"):
        FinetuneConfig(data="x", out="y", cold_calibration="1d")
    with pytest.raises(ValueError, match="'one day' is not a duration"):
        FinetuneConfig(data="x", out="y", cold_items=True, cold_calibration="one day")


def test_finetuning_places_the_level_on_the_held_out_days(sim_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated"
    tiny_finetune(sim_data, out, cold_calibration="2d", **SETTINGS)
    report = json.loads((out / CALIBRATION_FILE).read_text())
    assert report["mixed_pairs"] > 0 and report["impressions"] > 0
    assert report["level_after"] != report["level_before"]
    assert report["loss_after"] < report["loss_before"]  # the offset minimises it
    model, state = load_model(out)  # the checkpoint holds the placed level and offset
    assert float(model.cold_item.detach()[0]) == pytest.approx(report["level_after"], abs=1e-6)
    assert float(model.unseen_offset[0]) == pytest.approx(report["unseen_offset"], abs=1e-6)
    # and the whole training window: the test days stay out of everything
    days = read_events(sim_data).timestamp
    assert state["train_until"] == int(days.max()) + 1 - 3 * DAY


def test_a_held_out_window_without_impressions_is_refused(sim_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no impressions in the last 1s"):
        tiny_finetune(sim_data, tmp_path / "x", cold_calibration="1s", **SETTINGS)


def test_a_checkpoint_from_before_the_unseen_offset_still_loads(
    sim_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "old"
    tiny_finetune(sim_data, out, **SETTINGS)
    state = read_checkpoint(out)
    del state["model"]["unseen_offset"]  # as a checkpoint written before it existed
    torch.save(state, out / CHECKPOINT_FILE)
    model, _ = load_model(out)
    assert float(model.unseen_offset[0]) == 0.0
    del state["model"]["cold_item"]  # but a weight it needs is still refused by name
    torch.save(state, out / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match=r"missing.*cold_item"):
        load_model(out)


def _turnover_log(hours: int) -> Any:
    """Ten days of likes: every ``hours`` (from 6 a.m.) a new set of 150 items takes all the
    likes (0: the same 150 items all along, in random order)."""
    from tests.events import events_from

    rng = np.random.default_rng(0)
    times = np.sort(rng.integers(0, 10 * DAY, 6_000))
    era = (times + 6 * 3600) // (hours * 3600) if hours else np.zeros_like(times)
    items = era * 1_000 + rng.integers(0, 150, len(times))
    users = rng.integers(0, 300, len(times))
    return events_from(
        user_id=users, item_id=items, timestamp=times, played_ratio=np.ones(len(times))
    )


def test_the_trend_window_is_short_when_the_catalog_turns_over_within_a_day() -> None:
    """Items that live 12 hours want the window that still sees them; items that last keep the
    7-day default, which lists them as well as any window; a log of a day keeps it too."""
    from model.calibration import TREND_WINDOWS, choose_trend_window

    fast = choose_trend_window(_turnover_log(12))
    assert fast.window in ("3h", "6h", "12h"), fast
    assert fast.hit_rates[fast.window] > 2 * fast.hit_rates["7d"] and fast.days == 7
    assert set(fast.hit_rates) == set(TREND_WINDOWS) and fast.positives > 0
    assert "retrieval trend window" in fast.line()
    steady = choose_trend_window(_turnover_log(0))
    assert steady.window == "7d" and steady.hit_rates["7d"] > 0.6  # 100 of the 150 items
    assert max(steady.hit_rates.values()) != steady.hit_rates["7d"]  # a near tie: 7 days stay
    short = _turnover_log(12)
    assert choose_trend_window(short.take(short.timestamp < DAY)).window == "7d"


def test_finetuning_with_the_trend_window_auto_records_the_choice(tmp_path: Path) -> None:
    """The model's trend window is the chosen one, its report beside the checkpoint; a window
    asked for is used as given."""
    from model.calibration import TREND_FILE
    from model.data.events import write_events

    data = tmp_path / "data"
    write_events(_turnover_log(12), data)
    chosen = tiny_finetune(data, tmp_path / "auto", min_history=1)
    report = json.loads((chosen / TREND_FILE).read_text())
    model, _ = load_model(chosen)
    assert model.cfg.retrieval_trend == int(report["window"][:-1]) * 3600
    asked = tiny_finetune(data, tmp_path / "asked", min_history=1, retrieval_trend="2d")
    assert load_model(asked)[0].cfg.retrieval_trend == 2 * DAY
    assert not (asked / TREND_FILE).exists()


def test_a_model_without_a_trend_has_no_trend_weight_to_place(tmp_path: Path) -> None:
    from model.calibration import TREND_CALIBRATION_FILE
    from model.data.events import write_events

    data = tmp_path / "data"
    write_events(_turnover_log(12), data)
    out = tiny_finetune(data, tmp_path / "none", min_history=1, retrieval_trend="0")
    assert not (out / TREND_CALIBRATION_FILE).exists()
    assert FinetuneConfig(data="x", out="y").trend_calibration == "1d"  # the default: on


def test_the_trend_weight_rises_where_the_held_out_day_brings_new_items(tmp_path: Path) -> None:
    """Items that live 12 hours: a retrieval space that has not seen the held-out day knows none
    of its items, and what was liked in the hours before the day lists them. The offset found is
    added to the model's trend weight and nothing else of the model moves."""
    from model.calibration import TREND_CALIBRATION_FILE
    from model.data.events import write_events

    data = tmp_path / "data"
    write_events(_turnover_log(12), data)
    settings: dict[str, Any] = {"min_history": 1, "retrieval_trend": "12h"}
    plain = tiny_finetune(data, tmp_path / "plain", trend_calibration="0", **settings)
    assert not (plain / TREND_CALIBRATION_FILE).exists()
    weights = load_model(plain)[0].state_dict()
    out = tiny_finetune(data, tmp_path / "calibrated", trend_calibration="1d", **settings)
    report = json.loads((out / TREND_CALIBRATION_FILE).read_text())
    assert report["offset"] > 0 and report["users"] > 0 and report["positives"] > 0
    assert max(report["recalls"].values()) > 1.02 * report["recalls"]["0.0"]
    calibrated = load_model(out)[0].state_dict()
    moved = [name for name in weights if not torch.equal(weights[name], calibrated[name])]
    assert moved == ["trend_head.bias"]
    change = calibrated["trend_head.bias"] - weights["trend_head.bias"]
    assert float(change[-1]) == pytest.approx(report["offset"], rel=1e-5)


def test_a_trend_that_lists_nothing_new_leaves_the_weight_alone(tmp_path: Path) -> None:
    """The same 150 items all along: every list holds most of them, no offset wins by the
    margin, and the weight stays as fine-tuning left it."""
    from model.calibration import TREND_CALIBRATION_FILE
    from model.data.events import write_events

    data = tmp_path / "data"
    write_events(_turnover_log(0), data)
    out = tiny_finetune(
        data, tmp_path / "steady", min_history=1, trend_calibration="1d", trend_calibration_k=20
    )
    report = json.loads((out / TREND_CALIBRATION_FILE).read_text())
    assert report["offset"] == 0.0 and report["users"] > 0
    assert report["top"] == 20  # the recall of the lists a ranker reads, as long as asked
    with pytest.raises(ValueError, match="trend_calibration_k must be >= 1, got 0"):
        FinetuneConfig(data="x", out="y", trend_calibration_k=0)


def test_a_held_out_span_longer_than_the_log_leaves_the_weight_alone(tmp_path: Path) -> None:
    from model.calibration import TREND_CALIBRATION_FILE
    from model.data.events import write_events

    data = tmp_path / "data"
    write_events(_turnover_log(12), data)
    out = tiny_finetune(data, tmp_path / "long", min_history=1, trend_calibration="30d")
    report = json.loads((out / TREND_CALIBRATION_FILE).read_text())
    assert report["offset"] == 0.0 and report["users"] == 0
