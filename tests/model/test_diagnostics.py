"""Backbone diagnostics: the probes, the token shares, the states they read, and
``benchmarks.backbone`` end to end on a tiny world (a trained model's probes beat an untrained
one's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.argus import Argus, preset
from model.data.batching import Spans, TemporalSplit, make_batch
from model.data.events import read_events
from model.diagnostics import (
    diagnose,
    last_rows_before,
    mood_probes,
    ridge_accuracy,
    ridge_r2,
    token_effects,
    token_shares,
)
from model.inference import states_at

ROOT = Path(__file__).resolve().parents[2]


def test_ridge_r2_is_high_for_a_linear_target_and_near_zero_for_noise() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2_000, 8))
    y = x @ rng.standard_normal((8, 3)) + 0.1 * rng.standard_normal((2_000, 3))
    assert ridge_r2(x, y) > 0.98
    assert abs(ridge_r2(x, rng.standard_normal((2_000, 3)))) < 0.02


def test_ridge_accuracy_reads_separable_classes_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(5, size=3_000)
    centres = 3.0 * rng.standard_normal((5, 8))
    x = centres[labels] + rng.standard_normal((3_000, 8))
    assert ridge_accuracy(x, labels) > 0.9
    assert ridge_accuracy(rng.standard_normal((3_000, 8)), labels) < 0.3  # chance is 0.2


def test_a_strong_mood_shows_in_a_session_s_first_items(tmp_path: Path) -> None:
    """The mood probes on a small world whose sessions follow a strong mood: the true latents of
    a session's first events tell its mood far above chance."""
    from model.data.simulate import SimConfig, Simulator, Truth

    config = SimConfig(n_users=150, n_items=600, n_days=10, seed=5, mood_strength=0.9)
    Simulator(config).run(tmp_path, progress=False)
    events = read_events(tmp_path)
    torch.manual_seed(0)
    model = Argus(preset("argus-tiny", max_len=64)).eval()
    found = mood_probes(model, events, Truth(tmp_path / "truth.npz"), sessions=1_500)
    assert found["probe_mood_sessions"] > 300
    assert found["probe_mood_items_true"] > found["probe_mood_chance"] + 0.15
    for view in ("state_after", "state_before", "items_embedded"):
        assert 0.0 <= found[f"probe_mood_{view}"] <= 1.0


def untrained(**overrides: Any) -> Argus:
    """A seeded, untrained ``argus-tiny`` (with ``overrides``), in evaluation mode."""
    torch.manual_seed(0)
    return Argus(preset("argus-tiny", **overrides)).eval()


LEGACY = {"fusion": "concat", "fp_dot": False}  # the concatenated token that drowned the item


def test_token_shares_sum_to_one_and_no_part_of_the_balanced_token_is_drowned(
    sim_data: Path,
) -> None:
    events = read_events(sim_data)
    shares = token_shares(untrained(), events, rows=2_000)
    assert set(shares) == {"context", "item", "feedback", "signed_item"}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["item"] > 0.2  # the earlier fusion gave the item about 1%
    assert token_shares(untrained(**LEGACY), events, rows=2_000)["item"] < 0.05


def test_total_effects_see_the_item_in_the_balanced_token_and_the_feedback_only_where_read(
    sim_data: Path,
) -> None:
    events = read_events(sim_data)
    balanced = token_effects(untrained(), events, rows=2_000)
    assert set(balanced) == {"item", "feedback"}
    assert balanced["item"] > 0.5
    assert 0.0 < balanced["feedback"] < 1.0
    assert token_effects(untrained(**LEGACY), events, rows=2_000)["item"] < 0.05
    assert token_effects(untrained(objective="sasrec"), events, rows=2_000) == {
        "item": pytest.approx(1.0, abs=0.1),
        "feedback": 0.0,
    }


def test_states_at_rows_equal_a_forward_pass_over_the_history(sim_data: Path) -> None:
    events = read_events(sim_data)
    torch.manual_seed(0)
    model = Argus(preset("argus-tiny", retrieval_dim=4, tower_dim=4)).eval()
    users = np.unique(events.user_id)[:5]
    cut = int(np.median(events.timestamp))
    rows = last_rows_before(events, users, cut)
    assert (rows >= 0).all()
    assert (events.timestamp[rows] < cut).all() and (events.user_id[rows] == users).all()
    nxt = rows + 1
    later = (nxt < len(events)) & (events.user_id[np.minimum(nxt, len(events) - 1)] == users)
    assert (events.timestamp[nxt[later]] >= cut).all()  # each the last one before the cut
    states = states_at(model, events, rows)
    _, offsets = events.user_offsets()
    for user, row in zip(users.tolist(), rows.tolist(), strict=True):
        start = offsets[np.searchsorted(np.unique(events.user_id), user)]
        start = max(int(start), row + 1 - model.cfg.max_len)
        span = Spans(np.array([start]), np.array([row + 1]), np.array([start]))
        with torch.no_grad():
            h = model(make_batch(events, span).to_torch())[0, row - start]
        torch.testing.assert_close(states.at(np.array([row]))[0][0], h, rtol=0, atol=1e-5)


def test_the_backbone_benchmark_shows_a_trained_model_s_probes_beat_an_untrained_one_s(
    tmp_path: Path,
) -> None:
    """``python -m benchmarks.backbone`` as a user runs it, on a tiny world."""
    argv = ["--users", "400", "--items", "1500", "--days", "14", "--epochs", "6"]
    argv += ["--finetune-steps", "60", "--max-len", "128", "--sample", "200"]
    command = [sys.executable, "-m", "benchmarks.backbone", *argv, "--work", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2_000:]
    results = json.loads((tmp_path / "backbone.json").read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1])["pairs"] == results["pairs"]
    stages = results["stages"]
    for key in ("probe_taste_r2", "probe_item_r2"):
        assert stages["pretrained"][key] > stages["untrained"][key] + 0.02, key
    # the reference reads the true items, so it does not depend on the model
    reference = {stages[s]["probe_taste_history_r2"] for s in stages}
    assert len(reference) == 1 and reference.pop() > stages["untrained"]["probe_taste_r2"] + 0.1
    required = [
        "token_share_item",
        "token_effect_feedback",
        "probe_taste_r2",
        "probe_offset_r2",
        "probe_item_r2",
        "fp_pair_accuracy",
        "fp_pair_accuracy_other_user",
        "towers_pair_accuracy",
        "towers_state_only_pair_accuracy",
        "shortcut_only_pair_accuracy",
        "mostpop_pair_accuracy",
        "oracle_pair_accuracy",
    ]
    assert all(k in results for k in required), set(required) - set(results)
    assert "| probe R², state → taste |" in (tmp_path / "backbone.md").read_text()


def test_the_widths_benchmark_takes_settings_for_one_width(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--finetune-set-at WIDTH:KEY=VALUE`` reaches that width's fine-tuning alone; a
    malformed value or a width not trained is a usage error naming it."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is not installed
    from benchmarks.widths import model_setting, settings_at

    parser = argparse.ArgumentParser()
    given = ["128:tower_weight_decay=0.1", "128:tower_lr=1e-3", "64:tower_dim=32"]
    assert settings_at(given, [32, 64, 128], parser) == {
        128: ["tower_weight_decay=0.1", "tower_lr=1e-3"],
        64: ["tower_dim=32"],
    }
    assert [model_setting(s) for s in ("dropout=0.1", "tower_weight_decay=0.1")] == [True, False]
    for bad, named in (("128-wd=0.1", "WIDTH:KEY=VALUE"), ("256:a=1", "width 256")):
        with pytest.raises(SystemExit):
            settings_at([bad], [32, 64, 128], parser)
        assert named in capsys.readouterr().err


def test_real_data_without_a_truth_gets_the_pair_accuracies_and_no_probe(sim_data: Path) -> None:
    events = read_events(sim_data)
    torch.manual_seed(0)
    model = Argus(preset("argus-tiny", retrieval_dim=4, tower_dim=4)).eval()
    split = TemporalSplit.last_days(events, 3.0)
    out = diagnose(model, events, None, split, users=50)
    assert out["pairs"] > 0 and 0 <= out["fp_pair_accuracy"] <= 1
    assert {"mostpop_pair_accuracy", "towers_pair_accuracy", "token_share_item"} <= set(out)
    assert not [k for k in out if k.startswith("probe_") or k.startswith("oracle")]
