"""What do a real log's returning users go on to consume, and which non-learned ranking finds it?

    .venv/bin/python -m benchmarks.recall_ceiling [--data DIR] [--test-fraction 0.2]

The replay benchmark's real-log protocol: the last ``--test-fraction`` of the log's time is the
window, and its targets are each user's distinct positive items there. Only the users with an
event before the window are measured: the ones a model can tell apart from the crowd. Recall@k
of every list, of all their targets and of those new to them (lists without the items they met):

* MostPop and Trending, as the replay ranks them (Trending: the last 7 days' positives first);
* **what is popular now among what is new**: positives weighed by exp(-days ago / scale),
  divided by 1 + the item's age / a scale (:func:`model.future.recency_scores`), over a grid;
* **EASE** (:func:`model.future.ease_scores`), a strong item-to-item model fitted in closed form
  on the positives before the window, over a grid of ridges;
* a **blend** of the two: z(log1p(recency)) + weight * z(EASE), each standardised over the
  catalog for the user.

Each family's best setting is reported twice: chosen on the measured users themselves
(*generous*: an upper bound for that family), and chosen on one half of the users and measured
on the other, both ways, averaged over ``--folds`` random halvings (*fair*). Defaults to
MovieLens-100K (fetched and converted like ``benchmarks.replay --ml100k``). Writes
``runs/bench/recall_ceiling.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.contract import DAY
from model.data.batching import TemporalSplit
from model.data.convert import convert_ml100k
from model.data.events import Events, read_events
from model.data.fetch import ml100k
from model.future import (
    WindowTargets,
    ease_scores,
    popular_ranking,
    recency_scores,
    split_users,
    top_excluding,
)
from model.metrics import recall_shares

ROOT = Path(__file__).resolve().parents[1]
SCALES = (0.25, 0.5, 1.0, 3.0, 7.0, 14.0, 30.0)  # days: the recency weight's time constant
AGES = (10.0, 30.0, 90.0, np.inf)  # days: the age discount's scale (inf: none)
RIDGES = (100.0, 300.0, 1000.0, 3000.0)
WEIGHTS = (0.1, 0.3, 1.0, 3.0)  # EASE's weight in the blend

# a setting's per-user recall shares: (all targets, new targets), NaN where a user has none
Shares = tuple[np.ndarray, np.ndarray]


def standardised(scores: np.ndarray) -> np.ndarray:
    """Each row (or the one vector) less its mean, over its standard deviation."""
    centred = scores - scores.mean(axis=-1, keepdims=True)
    return centred / (centred.std(axis=-1, keepdims=True) + 1e-12)


def settings(events: Events, window: WindowTargets, k: int) -> dict[str, dict[str, Shares]]:
    """Every family's settings, each with its per-user shares (all, new)."""
    ids, counts = events.positive_counts(before=window.start)
    tiebreak = 1e-6 * standardised(np.log1p(counts.astype(float)))
    new = window.new_items()

    def scored(scores: np.ndarray) -> Shares:
        table = np.broadcast_to(scores + tiebreak, (len(window), len(ids)))
        return (
            recall_shares(top_excluding(table, ids, k, None), window.items, k),
            recall_shares(top_excluding(table, ids, k, window.seen), new, k),
        )

    def listed(trend: int) -> Shares:
        return (
            recall_shares(popular_ranking(events, window, k, False, trend), window.items, k),
            recall_shares(popular_ranking(events, window, k, True, trend), new, k),
        )

    recency = {
        (scale, age): standardised(np.log1p(recency_scores(events, ids, window.start, scale, age)))
        for scale, age in itertools.product(SCALES, AGES)
    }
    ease = {ridge: standardised(ease_scores(events, window, ids, ridge)) for ridge in RIDGES}
    blends = itertools.product(recency.items(), ease.items(), WEIGHTS)
    return {
        "MostPop": {"": listed(0)},
        "Trending (7 days)": {"": listed(int(7 * DAY))},
        "recency": {f"scale {s:g} d, age {a:g} d": scored(r) for (s, a), r in recency.items()},
        "EASE": {f"ridge {r:g}": scored(e) for r, e in ease.items()},
        "blend": {
            f"scale {s:g} d, age {a:g} d, ridge {r:g}, weight {w:g}": scored(z + w * e)
            for ((s, a), z), (r, e), w in blends
        },
    }


def best(family: dict[str, Shares], rows: np.ndarray, part: int) -> str:
    """The setting with the highest mean share over ``rows`` (0: all targets, 1: new)."""
    return max(family, key=lambda name: float(np.nanmean(family[name][part][rows])))


def fair(family: dict[str, Shares], window: WindowTargets, part: int, folds: int) -> float:
    """Recall of the setting chosen on the other half, both ways, over ``folds`` halvings."""
    index = {int(u): i for i, u in enumerate(window.users)}
    results = []
    for seed in range(folds):
        halves = [np.array([index[int(u)] for u in h.users]) for h in split_users(window, seed)]
        pooled = np.concatenate(
            [
                family[best(family, fit, part)][part][measured]
                for fit, measured in (halves, halves[::-1])
            ]
        )
        results.append(float(np.nanmean(pooled)))
    return float(np.mean(results))


def measure(events: Events, test_fraction: float, k: int, folds: int) -> dict[str, Any]:
    began = time.perf_counter()
    start = TemporalSplit.last_fraction(events, test_fraction).split_time
    days = (int(events.timestamp.max()) + 1 - start) / DAY
    everyone = WindowTargets.of(events, start, days=days)
    window = everyone.with_history()
    families = settings(events, window, k)
    rows = np.arange(len(window))
    table: dict[str, dict[str, Any]] = {}
    for name, family in families.items():
        row: dict[str, Any] = {}
        for part, label in enumerate(("all", "new")):
            chosen = best(family, rows, part)
            row[label] = {
                "generous": float(np.nanmean(family[chosen][part])),
                "setting": chosen,
                "fair": fair(family, window, part, folds) if len(family) > 1 else None,
            }
        table[name] = row
    return {
        "users": len(everyone),
        "users_with_history": len(window),
        "window_days": days,
        "k": k,
        "folds": folds,
        "rankings": table,
        "seconds": time.perf_counter() - began,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }


def markdown(result: dict[str, Any], relative: Callable[[float, str], str]) -> str:
    k = result["k"]
    lines = [
        f"{result['users_with_history']} of {result['users']} window users have a history "
        f"(window {result['window_days']:.1f} days). Recall@{k}, all targets / new to the user:",
        "",
        "| ranking | all | new | all, fair | new, fair | setting (all; new) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, row in result["rankings"].items():
        a, n = row["all"], row["new"]
        cells = [relative(a["generous"], "all"), relative(n["generous"], "new")]
        cells += [
            "" if p["fair"] is None else relative(p["fair"], part)
            for p, part in ((a, "all"), (n, "new"))
        ]
        chosen = f"{a['setting']}; {n['setting']}" if a["setting"] else ""
        lines.append(f"| {name} | {' | '.join(cells)} | {chosen} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a converted log (default: MovieLens-100K)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5, help="random halvings for the fair rows")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench")
    args = parser.parse_args()
    data = args.data or args.out / "recall_ceiling-ml100k"
    if not (data / "events.parquet").exists():
        if args.data is not None:
            parser.error(f"{data} holds no events.parquet")
        convert_ml100k(ml100k(), data)
    result = measure(read_events(data), args.test_fraction, args.k, args.folds)
    trending = result["rankings"]["Trending (7 days)"]

    def relative(value: float, part: str) -> str:
        return f"{value:.3f} ({value / trending[part]['generous']:.2f}x)"

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recall_ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, relative)
    (args.out / "recall_ceiling.md").write_text(text)
    print(text, end="")
    blend = result["rankings"]["blend"]
    print(
        f"recall_ceiling: {result['users_with_history']} users with a history, best blend "
        f"{blend['all']['generous']:.3f} / {blend['new']['generous']:.3f} against Trending "
        f"{trending['all']['generous']:.3f} / {trending['new']['generous']:.3f} "
        f"in {result['seconds']:.1f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
