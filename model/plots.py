"""PNG figures of training runs and benchmarks (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.data.events import FEEDBACK


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (imported on first use: train extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curve(rows: Sequence[Mapping[str, float]], path: str | Path, title: str = "") -> Path:
    """Loss curves of a ``metrics.jsonl`` history: total and NIP loss, FP losses, learning rate."""
    plt = _pyplot()
    path = Path(path)
    steps = [row["step"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in ("loss", "nip"):
        axes[0].plot(steps, [row.get(name, float("nan")) for row in rows], label=name)
    axes[0].set_title("total and next-item loss")
    for name in FEEDBACK:
        if any(name in row for row in rows):
            axes[1].plot(steps, [row.get(name, float("nan")) for row in rows], label=name)
    axes[1].set_title("feedback-prediction losses")
    axes[2].plot(steps, [row.get("lr", float("nan")) for row in rows], label="lr")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare_curves(
    runs: Mapping[str, Sequence[Mapping[str, float]]], key: str, path: str | Path, title: str = ""
) -> Path:
    """One line per run of ``key`` against step (e.g. NIP loss of two model sizes)."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in runs.items():
        ax.plot([row["step"] for row in rows], [row[key] for row in rows], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
