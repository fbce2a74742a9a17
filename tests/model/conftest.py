from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def terminated_after(metrics: Path, rows: int) -> Iterator[None]:
    """SIGTERM this process once ``metrics`` holds ``rows`` rows (a run in the block then
    checkpoints and stops, as when a node is preempted)."""

    def terminate() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= rows:
                break
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=terminate)
    watcher.start()
    try:
        yield
    finally:
        watcher.join()
