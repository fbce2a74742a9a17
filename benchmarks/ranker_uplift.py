"""The paper's offline metric: the PairAccuracy uplift of a downstream gradient-boosting ranker
when ARGUS is added as a feature, with the features fetched from the running service.

    .venv/bin/python -m benchmarks.ranker_uplift [--work runs/bench/replay --users 4000]

Reuses the data and bundle of ``benchmarks/replay.py`` (run it first; the bundle is as of the
start of the 7-day test window). The ranker is LightGBM's LambdaRank (a pairwise objective over
the impressions of one user and UTC day, labelled by feedback grade). It trains on the window's
first 4 days and is tested on its last 3: the bundle has seen neither, so the ARGUS features
cannot leak feedback (impressions before the window were part of the bundle's own training). Three
feature sets, same ranker settings:

1. baseline — item popularity over 1/7/30 days, the user's activity over 1/7/30 days, the
   user's events and positives with the item's artist, source, hour of day (every counter from
   events before the impression's UTC day);
2. + ``/score``'s dot product ⟨u, v⟩;
3. + the full user and item vectors (``return_vectors``, base64).

Beside LightGBM, a small neural ranker on the same features and split: a torch MLP (two hidden
layers of 64 and 32, ReLU, dropout 0.1) over the standardised features, trained with the
weighted pairwise logistic loss on the training days' pairs, stopped on a tenth of their groups
held out. With the vectors it also reads their elementwise
product ``u ⊙ v`` (an MLP over a concatenation learns a product poorly; the product's sum is the
dot product, its parts are what the vectors add).

Reports test weighted PairAccuracy of each ranker and feature set and the relative uplifts;
writes ``runs/bench/ranker_uplift/results.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from argus.replay import Client, Pairs
from benchmarks.replay import ROOT, serving
from index.bundle import Bundle, list_versions
from model.contract import DAY, HOUR
from model.data.events import Events, counts_before, read_events
from model.progress import bar as tqdm

TRAIN_DAYS = 4  # of the 7-day window; the rest is the test
MLP_EPOCHS = 8  # at most, passes of the neural ranker over the training pairs
RANKERS = ("LightGBM", "MLP")


def baseline_features(events: Events, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The counters of the module docstring for impression ``rows`` of ``events``."""
    day = events.timestamp[rows] // DAY * DAY
    item, user, artist = events.item_id[rows], events.user_id[rows], events.artist_id[rows]
    positive = events.positive
    out: dict[str, np.ndarray] = {}
    for n in (1, 7, 30):
        out[f"item_pop_{n}d"] = counts_before(
            events.item_id[positive], events.timestamp[positive], item, day - n * DAY, day
        )
        out[f"user_events_{n}d"] = counts_before(
            events.user_id, events.timestamp, user, day - n * DAY, day
        )
    pair = events.user_id * (int(events.artist_id.max()) + 2) + (events.artist_id + 1)
    query = user * (int(events.artist_id.max()) + 2) + (artist + 1)
    known = artist >= 0
    never = np.full(len(rows), np.iinfo(np.int64).min // 4)
    out["user_artist_events"] = np.where(
        known, counts_before(pair, events.timestamp, query, never, day), 0
    )
    out["user_artist_positives"] = np.where(
        known, counts_before(pair[positive], events.timestamp[positive], query, never, day), 0
    )
    out["source"] = events.source[rows].astype(np.int64)
    out["hour"] = (events.timestamp[rows] % DAY) // HOUR
    return out


def service_features(
    client: Client, user: np.ndarray, item: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dot (M,), user vectors (M, D), item vectors (M, D)) from ``/score`` with
    ``return_vectors`` in base64, one call per user (NaN/zeros where the service has none)."""
    dot = np.full(len(user), np.nan)
    users = np.zeros((len(user), dim), np.float32)
    items = np.zeros((len(user), dim), np.float32)
    for u in tqdm(np.unique(user).tolist(), desc="/score", unit="user"):
        mine = np.flatnonzero(user == u)
        ids = np.unique(item[mine])
        body = {"user_id": u, "item_ids": ids.tolist(), "return_vectors": True}
        reply = client.post("/score", body | {"vectors_format": "base64"})
        at = np.searchsorted(ids, item[mine])
        dot[mine] = np.array([np.nan if s is None else s for s in reply["scores"]])[at]
        if reply["user_vector"] is not None:
            users[mine] = np.frombuffer(base64.b64decode(reply["user_vector"]), "<f4")
        vectors = np.frombuffer(base64.b64decode(reply["item_vectors"]), "<f4").reshape(
            len(ids), -1
        )
        items[mine] = vectors[at]
    return dot, users, items


def fit_and_score(
    features: np.ndarray, grade: np.ndarray, group: np.ndarray, train: np.ndarray, seed: int
) -> np.ndarray:
    """LambdaRank on the ``train`` rows (grouped), scores of every row."""
    import lightgbm as lgb

    rows = np.flatnonzero(train)
    rows = rows[np.argsort(group[rows], kind="stable")]  # LightGBM wants groups contiguous
    sizes = np.unique(group[rows], return_counts=True)[1]
    params = {
        "objective": "lambdarank",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "feature_fraction": 0.8,
        "seed": seed,
        "num_threads": os.cpu_count(),
        "verbose": -1,
    }
    data = lgb.Dataset(features[rows], grade[rows], group=sizes)
    ranker = lgb.train(params, data, num_boost_round=300)
    return np.asarray(ranker.predict(features), dtype=np.float64)


def fit_mlp(features: np.ndarray, pairs: Pairs, train: np.ndarray, seed: int) -> np.ndarray:
    """The neural ranker of the module docstring on the pairs within the ``train`` rows, with a
    tenth of the training groups held out to stop it (the epoch with the best held-out
    PairAccuracy wins, up to ``MLP_EPOCHS``); scores of every row."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = np.nan_to_num(features, nan=0.0)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    inputs = torch.from_numpy(((x - mean) / std).astype(np.float32))
    groups = np.unique(pairs.group[train])
    held = np.isin(pairs.group, rng.choice(groups, max(1, len(groups) // 10), replace=False))
    fit = train & ~held
    inside = fit[pairs.hi] & fit[pairs.lo]
    hi, lo = (torch.from_numpy(a[inside]) for a in (pairs.hi, pairs.lo))
    weight = torch.from_numpy(pairs.weight[inside].astype(np.float32))
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 64),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)

    def scores() -> np.ndarray:
        model.eval()
        with torch.no_grad():
            out = model(inputs).squeeze(1).double().numpy()
        model.train()
        return out

    best, best_state = -1.0, None
    for _ in range(MLP_EPOCHS):
        order = torch.randperm(len(hi), generator=generator)
        for begin in range(0, len(order), 4096):
            part = order[begin : begin + 4096]
            margin = (model(inputs[hi[part]]) - model(inputs[lo[part]])).squeeze(1)
            w = weight[part]
            loss = (w * torch.nn.functional.softplus(-margin)).sum() / w.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        held_out = pairs.accuracy(scores(), among=held & train)
        if held_out > best:
            best, best_state = held_out, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    return scores()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs/bench/replay")
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/ranker_uplift")
    args = parser.parse_args()
    began = time.perf_counter()
    bundle = Bundle.open(list_versions(args.work / "bundles")[-1])
    events = read_events(args.work / "data")
    start = int(bundle.manifest["trained_until"])
    users = np.unique(Pairs.of(events, None, start, days=7).user)  # with window impressions
    chosen = np.random.default_rng(0).choice(users, min(args.users, len(users)), replace=False)
    pairs = Pairs.of(events, chosen, start, days=7)
    rows, grade, group = pairs.rows, pairs.grade, pairs.group
    train = pairs.timestamp < start + TRAIN_DAYS * DAY

    base = baseline_features(events, rows)
    with serving(args.work, bundle) as client:
        dot, user_vectors, item_vectors = service_features(
            client, events.user_id[rows], events.item_id[rows], bundle.dim
        )
    baseline = np.stack(list(base.values()), axis=1).astype(np.float64)
    vectors = [user_vectors, item_vectors]
    sets = {
        "baseline": {ranker: baseline for ranker in RANKERS},
        "+ ARGUS dot product": {ranker: np.column_stack([baseline, dot]) for ranker in RANKERS},
        "+ ARGUS dot product and vectors": {
            "LightGBM": np.column_stack([baseline, dot, *vectors]),
            "MLP": np.column_stack([baseline, dot, *vectors, user_vectors * item_vectors]),
        },
    }
    test = ~train
    test_pairs = int((test[pairs.hi] & test[pairs.lo]).sum())  # both impressions in the test days
    accuracy: dict[str, dict[str, list[float]]] = {ranker: {} for ranker in RANKERS}
    for name, by_ranker in sets.items():
        for ranker, features in by_ranker.items():
            for seed in args.seeds:
                if ranker == "LightGBM":
                    scores = fit_and_score(features, grade, group, train, seed)
                else:
                    scores = fit_mlp(features, pairs, train, seed)
                found = accuracy[ranker].setdefault(name, [])
                found.append(pairs.accuracy(scores, among=test))
                print(f"{ranker} {name} seed {seed}: PairAccuracy {found[-1]:.4f}", flush=True)
    mean = {r: {n: float(np.mean(v)) for n, v in accuracy[r].items()} for r in RANKERS}
    names = list(sets)
    uplift = {r: {n: mean[r][n] / mean[r]["baseline"] - 1.0 for n in names[1:]} for r in RANKERS}
    result: dict[str, Any] = {
        "impressions": {"train": int(train.sum()), "test": int(test.sum())},
        "test_pairs": test_pairs,
        "users": len(chosen),
        "features": {"baseline": list(base), "dim": bundle.dim},
        "pair_accuracy": accuracy,
        "mean": mean,
        "relative_uplift": uplift,
        "vectors_over_dot": {
            r: uplift[r][names[2]] / uplift[r][names[1]] if uplift[r][names[1]] else None
            for r in RANKERS
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "bundle": bundle.version,
        "elapsed_s": time.perf_counter() - began,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, names, args.seeds)
    (args.out / "results.md").write_text(text)
    print(text, end="")
    print(f"ranker uplift in {result['elapsed_s']:.0f} s -> {args.out}")


def markdown(result: dict[str, Any], names: list[str], seeds: list[int]) -> str:
    mean, uplift = result["mean"], result["relative_uplift"]
    impressions = result["impressions"]
    lines = [
        f"LightGBM LambdaRank and an MLP, {result['users']:,} users, train "
        f"{impressions['train']:,} / test {impressions['test']:,} impressions "
        f"({result['test_pairs']:,} test pairs), seeds {seeds}; {result['machine']}.",
        "",
        "| features | LightGBM PairAccuracy | uplift | MLP PairAccuracy | uplift |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        cells = [
            f"{mean[r][name]:.4f} | " + (f"{uplift[r][name]:+.2%}" if name in uplift[r] else "")
            for r in RANKERS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
