"""The feedback readout: the ridge each user's feedback fits, its calibration after
fine-tuning, and the export and the service reading it alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.calibration import READOUT_FILE
from model.checkpoint import load_model
from model.contract import HISTORY_EVENT
from model.data.events import read_events
from model.impressions import feedback_grades
from model.readout import RIDGES, Readout, corrections, history_grades, padded_history, within_slope
from tests.conftest import tiny_finetune


def planted(users: int = 40, events: int = 60, dim: int = 6, seed: int = 0) -> dict:
    """Histories whose grades are ``b_u + slope <u, v> + <c_u, v>`` exactly."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(users, dim))
    c = rng.normal(size=(users, dim))
    v = rng.normal(size=(users, events, dim))
    b = rng.normal(size=(users, 1))
    grades = b + 0.5 * np.einsum("uld,ud->ul", v, u) + np.einsum("uld,ud->ul", v, c)
    return {"u": u, "c": c, "v": v, "grades": grades}


def test_the_ridge_finds_the_direction_a_users_feedback_departs_in() -> None:
    p = planted()
    found = corrections(p["u"], p["v"], p["grades"], slope=0.5, ridge=1e-6)
    np.testing.assert_allclose(found, p["c"], atol=1e-6)
    # the served vector is u + c / slope: it scores the history as its grades order it
    moved = Readout(0.5, 1e-6).apply(p["u"], p["v"], p["grades"])
    np.testing.assert_allclose(moved, p["u"] + p["c"] / 0.5, atol=1e-4)
    # a larger ridge moves it less, in the same direction
    shrunk = corrections(p["u"], p["v"], p["grades"], slope=0.5, ridge=100.0)
    assert 0 < np.linalg.norm(shrunk) < np.linalg.norm(p["c"])
    assert np.mean(np.sum(shrunk * p["c"], 1) > 0) == 1.0


def test_nothing_graded_or_a_readout_off_moves_nothing() -> None:
    p = planted(users=3)
    grades = p["grades"].copy()
    grades[1] = np.nan  # user 1 has no feedback at all
    grades[2, :30] = np.nan  # user 2 half of it
    moved = Readout(0.5, 10.0).apply(p["u"], p["v"], grades)
    np.testing.assert_array_equal(moved[1], p["u"][1].astype(np.float32))
    assert not np.allclose(moved[2], p["u"][2])
    assert Readout().apply(p["u"], p["v"], grades) is p["u"]  # off: the vectors as they were
    assert not Readout(0.0, 10.0).on and not Readout(0.5).on and Readout(0.5, 10.0).on


def test_the_slope_is_the_one_within_users() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(30, 50)) + rng.normal(scale=5.0, size=(30, 1))
    grades = 3.0 - 0.2 * scores[:, :1] + 0.7 * scores + rng.normal(scale=0.01, size=(30, 50))
    grades[0, :10] = np.nan
    # users' means differ in both (a pooled slope across users would not be 0.7)
    assert within_slope(scores, grades) == pytest.approx(0.7, abs=0.01)


def test_a_manifest_round_trips_the_readout_and_an_off_one_has_no_infinity() -> None:
    on, off = Readout(0.4, 30.0), Readout(0.4)
    assert Readout.from_manifest({"readout": on.manifest()}) == on
    assert off.manifest() == {"slope": 0.4, "ridge": None}
    assert json.loads(json.dumps(off.manifest())) == off.manifest()
    assert not Readout.from_manifest({"readout": off.manifest()}).on
    assert not Readout.from_manifest({}).on  # a bundle from before the readout


def test_histories_pad_and_grade_only_known_items_with_feedback(sim_data: Path) -> None:
    events = read_events(sim_data)
    _, offsets = events.user_offsets()
    starts, ends = offsets[:2], np.minimum(offsets[:2] + np.array([5, 9]), offsets[1:3])
    ids = np.unique(events.item_id)[::2]  # half the catalog
    vectors, grades = padded_history(events, starts, ends, ids, np.ones((len(ids), 3)))
    assert vectors.shape == (2, 9, 3) and grades.shape == (2, 9)
    assert np.isnan(grades[0, 5:]).all()  # padding
    rows = starts[0] + np.arange(5)
    known = np.isin(events.item_id[rows], ids)
    assert (np.isfinite(grades[0, :5]) <= known).all()
    assert (vectors[0, :5, 0] == known).all()


def test_finetuning_sets_the_readout_with_the_slope_of_its_histories(
    sim_data: Path, tmp_path: Path
) -> None:
    out = tiny_finetune(sim_data, tmp_path / "set", readout_ridge=20.0)
    report = json.loads((out / READOUT_FILE).read_text())
    assert report["users"] > 0 and report["pairs"] == 0  # set, not chosen
    readout = Readout.of(load_model(out)[0])
    assert readout.slope == pytest.approx(report["slope"], abs=1e-6)
    # on with the ridge asked for, unless the towers' score does not rise with the grades
    assert readout.on == (report["slope"] > 0) and report["ridge"] == (20.0 if readout.on else None)
    plain = tiny_finetune(sim_data, tmp_path / "plain")  # off by default
    assert not (plain / READOUT_FILE).exists() and not Readout.of(load_model(plain)[0]).on


def test_finetuning_can_choose_the_ridge_on_held_out_days(sim_data: Path, tmp_path: Path) -> None:
    out = tiny_finetune(sim_data, tmp_path / "chosen", readout_ridge=30.0, readout_calibration="2d")
    report = json.loads((out / READOUT_FILE).read_text())
    assert report["pairs"] > 0 and report["users"] > 0
    assert set(report["pair_accuracy"]) == {str(r) for r in RIDGES}
    readout = Readout.of(load_model(out)[0])
    if report["ridge"] is None:  # off only where no ridge beat the towers alone
        assert max(report["pair_accuracy"].values()) <= report["pair_accuracy_towers"]
    else:
        assert readout.ridge == report["ridge"]
        assert report["pair_accuracy"][str(report["ridge"])] > report["pair_accuracy_towers"]


def test_days_held_out_for_the_cold_level_choose_the_ridge_too(
    sim_data: Path, tmp_path: Path
) -> None:
    from model.calibration import CALIBRATION_FILE

    out = tiny_finetune(sim_data, tmp_path / "cold", readout_ridge=30.0, cold_calibration="2d")
    report = json.loads((out / READOUT_FILE).read_text())
    assert report["pairs"] > 0 and set(report["pair_accuracy"]) == {str(r) for r in RIDGES}
    assert (out / CALIBRATION_FILE).exists()


def test_readout_settings_out_of_range_are_refused(sim_data: Path, tmp_path: Path) -> None:
    from model.finetune import FinetuneConfig

    with pytest.raises(ValueError, match="readout_ridge must be >= 0"):
        FinetuneConfig(data=str(sim_data), out=str(tmp_path), readout_ridge=-1.0)
    with pytest.raises(ValueError, match="needs readout_ridge > 0"):
        FinetuneConfig(
            data=str(sim_data), out=str(tmp_path), readout_ridge=0.0, readout_calibration="1d"
        )


def test_a_live_history_is_graded_as_the_logs_are(sim_data: Path) -> None:
    events = read_events(sim_data)
    history = np.zeros(len(events), dtype=HISTORY_EVENT)
    for name in ("played_ratio", "liked", "disliked"):
        history[name] = getattr(events, name)
    grades = feedback_grades(events)
    expected = np.where(grades >= 0, grades, np.nan)
    np.testing.assert_array_equal(history_grades(history), expected)
    assert (expected == 4).any() and (expected == 0).any()
    silent = np.zeros(1, dtype=HISTORY_EVENT)
    silent["played_ratio"] = np.nan  # an event without feedback
    assert np.isnan(history_grades(silent)).all()


def test_evaluation_and_the_diagnostics_score_with_the_readout(
    finetuned: Path, sim_data: Path, tmp_path: Path
) -> None:
    from model.checkpoint import CHECKPOINT_FILE, read_checkpoint
    from model.data.batching import TemporalSplit
    from model.diagnostics import pair_accuracies
    from model.evaluate import EvalConfig, evaluate

    state = read_checkpoint(finetuned)
    for name, readout in (("on", [0.25, 0.125]), ("off", [0.25, float("inf")])):
        state["model"]["readout"] = torch.tensor(readout)
        (tmp_path / name).mkdir()
        torch.save(state, tmp_path / name / CHECKPOINT_FILE)
    report = evaluate([tmp_path / "on"], sim_data, None, cfg=EvalConfig(), progress=False)
    (row,) = [m for m in report["models"].values() if "pair_accuracy_without_readout" in m]
    assert row["pair_accuracy"] != row["pair_accuracy_without_readout"]
    plain = evaluate([tmp_path / "off"], sim_data, None, cfg=EvalConfig(), progress=False)
    tower = next(m for k, m in plain["models"].items() if k.startswith("ARGUS"))
    assert "pair_accuracy_without_readout" not in tower
    assert tower["pair_accuracy"] == row["pair_accuracy_without_readout"]

    events = read_events(sim_data)
    split = TemporalSplit.last_days(events, 3.0)
    model, _ = load_model(tmp_path / "on")
    train = split.train(events)
    out = pair_accuracies(model, events, None, split, train, 50, 0)
    assert out["towers_readout_pair_accuracy"] != out["towers_pair_accuracy"]
    assert 0 < out["readout_only_pair_accuracy"] < 1
    off = pair_accuracies(load_model(tmp_path / "off")[0], events, None, split, train, 50, 0)
    assert not {"towers_readout_pair_accuracy", "readout_only_pair_accuracy"} & set(off)
