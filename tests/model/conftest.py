from __future__ import annotations

from pathlib import Path

import pytest

from model.data.simulate import SimConfig, Simulator
from model.train import PretrainConfig


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated service (about 10k events over 12 days), shared by the model tests."""
    out = tmp_path_factory.mktemp("sim")
    Simulator(SimConfig(n_users=80, n_items=400, n_days=12, seed=3)).run(out, progress=False)
    return out


def tiny_config(data: Path, out: Path, **overrides: object) -> PretrainConfig:
    """A seconds-long pretraining run of the tiny preset, holding out the last 3 days."""
    settings: dict[str, object] = {
        "preset": "argus-tiny",
        "model": ("n_uniform_negatives=64", "dropout=0.1"),
        "batch_size": 8,
        "max_steps": 6,
        "test_days": 3.0,
        "log_every": 2,
        "warmup_steps": 2,
        **overrides,
    }
    return PretrainConfig(data=str(data), out=str(out), **settings)  # type: ignore[arg-type]
