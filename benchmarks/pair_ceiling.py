"""How much of the MostPop → oracle PairAccuracy gap can a model learned from the logs close?

    .venv/bin/python -m benchmarks.pair_ceiling [--data runs/bench/replay/data --sample 1500]

The oracle of the replay benchmark ranks a user's impressions by their true affinity
``<u(t), v_i> + b_i`` (:class:`model.data.simulate.Truth`). This takes that score apart on the
same held-out pairs (the last 7 days; pairs of one user and UTC day, weighted by grade distance):

* which parts carry the oracle's lead: the taste on the day vs as of the training cut-off, the
  user's personal latent offset, each item's own latent vs its artist's mean, each item's bias vs
  its popularity part;
* a **ceiling for a model learned from the logs**: every part known *except* the personal offset,
  which is estimated the only way a model can know it, from the user's own feedback before the
  window (:func:`model.future.estimated_offsets`); a learned model must also estimate the parts
  given here, so it can only do worse. Again from each user's last ``--max-len`` events alone:
  a model reads no more of a history than that;
* what simple counters reach: MostPop plus the user's positive rate on the item's artist;
* how well the logs **show the items**: the oracle's true user (taste and offset) scored against
  items as a model learns them: a rank-64 SVD of the positive user x item matrix, or with
  ``--export`` the fine-tuned towers' item vectors, each mapped to the true latent and bias by the
  best linear map (fitted on the truth: generous). A model that must learn its items can do no
  better than these rows, however well it knows its users.

Simulates the replay's world first when ``--data`` has no events (same sizes and seed). Writes
``runs/bench/pair_ceiling.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from argus.demo import options, stage
from argus.replay import Pairs, counter_scores, popularity_scores
from model.data.batching import TemporalSplit
from model.data.events import Events, read_events
from model.data.simulate import Truth
from model.future import estimated_offsets, mapped_to_truth, positive_factors

ROOT = Path(__file__).resolve().parents[1]


def measure(
    events: Events,
    truth: Truth,
    sample: int,
    seed: int,
    learned: tuple[np.ndarray, np.ndarray] | None = None,
    max_len: int = 256,
) -> dict[str, object]:
    """PairAccuracy of each score on the held-out pairs; ``learned`` = ``(item ids, item
    vectors)`` of a bundle adds the towers' row; ``max_len`` > 0 adds the ceiling's row from
    each user's last ``max_len`` events alone (what a model with that ``max_len`` sees)."""
    start = TemporalSplit.last_days(events, 7.0).split_time
    inside = (events.timestamp >= start) & (events.source > 0)
    users = np.unique(events.user_id[inside])
    if 0 < sample < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, sample, replace=False))
    pairs = Pairs.of(events, users, start, days=7.0)
    item = truth.item_rows(pairs.item)
    latent, bias = truth.item_latent(item), truth.arrays["item_bias"][item]
    on_day = truth.user_latent(pairs.user, pairs.timestamp)
    at_cut = np.full(len(pairs.user), start - 1)
    cut = truth.user_latent(pairs.user, at_cut)
    no_offset = truth.user_latent(pairs.user, at_cut, offset=False)
    artist = truth.arrays["item_artist_ids"]
    _, artist_row = np.unique(artist, return_inverse=True)
    artist_mean = np.zeros((artist_row.max() + 1, latent.shape[1]))
    np.add.at(artist_mean, artist_row, truth.item_latent(np.arange(len(artist))))
    artist_mean /= np.bincount(artist_row)[:, None]
    log_popularity = np.log(truth.arrays["item_popularity"])
    popularity_part = 0.3 * (log_popularity - log_popularity.mean()) / log_popularity.std()

    def dot(user: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.einsum("nk,nk->n", user, items)

    began = time.perf_counter()
    user_row = np.searchsorted(users, pairs.user)

    def with_offsets(offsets: np.ndarray) -> np.ndarray:  # all but the offset true
        return dot(no_offset + offsets[user_row], latent) + bias

    offsets = estimated_offsets(truth, events, users, start)
    recent = {}
    if max_len > 0:
        short = estimated_offsets(truth, events, users, start, last=max_len)
        recent = {f"the same from the user's last {max_len} events": with_offsets(short)}
    mostpop = np.log1p(popularity_scores(events, pairs, start))
    item_views = {"rank-64 SVD of the positives": positive_factors(events, start, seed=seed)}
    if learned is not None:
        item_views["the fine-tuned towers' item vectors"] = learned
    scores = {
        "oracle: true affinity on the day": dot(on_day, latent) + bias,
        "taste as of the training cut-off": dot(cut, latent) + bias,
        "item latent -> its artist's mean": dot(cut, artist_mean[artist_row[item]]) + bias,
        "item bias -> its popularity part": dot(cut, latent) + popularity_part[item],
        "without the personal offset": dot(no_offset, latent) + bias,
        "ceiling: offset estimated from the user's feedback": with_offsets(offsets),
        **recent,
        "MostPop + logit of the user's artist positive rate": counter_scores(events, pairs, start),
        **{
            f"true user, items as {name}": dot(cut, mapped[0]) + mapped[1]
            for name, vectors in item_views.items()
            for mapped in [mapped_to_truth(truth, *vectors, pairs.item)]
        },
        "MostPop": mostpop,
        "item bias alone": bias.astype(np.float64),
    }
    return {
        "users": len(users),
        "pairs": len(pairs.hi),
        "start": start,
        "pair_accuracy": {name: pairs.accuracy(s) for name, s in scores.items()},
        "offset_correlation": offset_correlation(truth, users, start, offsets),
        "seconds": time.perf_counter() - began,
    }


def offset_correlation(truth: Truth, users: np.ndarray, start: int, offsets: np.ndarray) -> float:
    """The median over users (with an estimate) of the correlation, across the latent's
    coordinates, of their estimated and true personal offsets."""
    true_offsets = truth.user_latent(users, np.full(len(users), start - 1))
    true_offsets -= truth.user_latent(users, np.full(len(users), start - 1), offset=False)
    estimated_users = np.flatnonzero(np.abs(offsets).sum(1) > 0)
    return float(
        np.median([np.corrcoef(offsets[u], true_offsets[u])[0, 1] for u in estimated_users])
    )


def markdown(r: dict[str, object]) -> str:
    accuracy: dict[str, float] = r["pair_accuracy"]  # type: ignore[assignment]
    low, high = accuracy["MostPop"], accuracy["oracle: true affinity on the day"]
    goal = low + 0.5 * (high - low)
    lines = [
        f"PairAccuracy of {r['users']:,} users' last-7-day impressions ({r['pairs']:,} pairs); "
        f"{platform.machine()}, Python {platform.python_version()}.",
        "",
        "| score | PairAccuracy | share of the MostPop → oracle gap |",
        "|---|---|---|",
    ]
    for name, value in accuracy.items():
        lines.append(f"| {name} | {value:.4f} | {(value - low) / (high - low):+.0%} |")
    lines += [
        "",
        f"The issue's goal (50% of the gap) is {goal:.4f}. Median correlation of a user's "
        f"estimated personal offset with the true one: {r['offset_correlation']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "runs/bench/replay/data")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=1_500, help="users (0: all)")
    parser.add_argument(
        "--export", type=Path, help="an export's directory: adds the towers' item vectors row"
    )
    parser.add_argument(
        "--max-len",
        type=int,
        default=256,
        help="the ceiling again from each user's last N events (the replay's max_len); 0: not",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench")
    args = parser.parse_args()
    sizes = options(users=args.users, items=args.items, days=args.days, seed=args.seed)
    done = (args.data / "events.parquet").exists()
    stage(done, "simulate", *sizes, *options(out=args.data), "--quiet")
    events = read_events(args.data)
    learned = None
    if args.export is not None:
        learned = (np.load(args.export / "item_ids.npy"), np.load(args.export / "item_vectors.npy"))
    result = measure(events, Truth(args.data), args.sample, args.seed, learned, args.max_len)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pair_ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "pair_ceiling.md").write_text(text)
    print(text, end="")
    print(f"pair_ceiling: {result['pairs']:,} pairs in {result['seconds']:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
