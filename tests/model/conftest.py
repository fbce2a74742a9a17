from __future__ import annotations

from pathlib import Path

from model.train import PretrainConfig


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
