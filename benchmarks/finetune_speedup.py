"""Fine-tuning epoch time: one transformer pass per chunk vs re-running it per impression group.

Same simulated data, model, batches, optimizer and loss in one run; only how the user states are
computed differs. The data imitate a streaming service's heavy-but-ordinary users: about 16 events
a day (Yambda-5B averages ~16 listens per user per day) over ``--days`` days, so one ``max_len``
chunk holds months of history and one group per day with recommendations (the default grouping,
one user and one lag bucket of a day).

    .venv/bin/python -m benchmarks.finetune_speedup [--users 32] [--days 120] [--max-len 2048]

Writes ``runs/bench/finetune_speedup.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.argus import Argus, preset
from model.contract import DEFAULT_LAG
from model.data.batching import bucket_batches
from model.data.events import parse_duration, read_events
from model.data.simulate import SimConfig, Simulator
from model.finetune import FinetuneConfig
from model.impressions import find_impressions, pair_weight_table
from model.objectives import (
    ImpressionBatch,
    PairwiseObjective,
    impression_level_backward,
    make_samples,
    sample_batch,
)
from model.trainer import Optimizers

ROOT = Path(__file__).resolve().parents[1]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--sessions-per-day", type=float, default=2.0)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--preset", default="argus-tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lag", default=DEFAULT_LAG)
    parser.add_argument("--group", default="auto")
    parser.add_argument("--prefix-batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    return parser.parse_args()


def simulated(args: argparse.Namespace) -> Path:
    """Heavy-but-ordinary users: about 16 events a day over ``--days`` (cached under --out)."""
    data = args.out / f"finetune_speedup_data_{args.users}u_{args.days}d"
    if not (data / "events.parquet").exists():
        sim = SimConfig(
            n_users=args.users,
            n_items=20_000,
            n_days=args.days,
            sessions_per_day=args.sessions_per_day,
            activity_sigma=0.3,
            seed=0,
        )
        Simulator(sim).run(data, progress=False)
    return data


class Race:
    """One model, data, batches and loss; the two ways of computing the user states."""

    def __init__(self, args: argparse.Namespace, data: Path) -> None:
        self.events = read_events(data)
        impressions = find_impressions(self.events, parse_duration(args.lag), args.group)
        self.samples = make_samples(self.events, impressions, args.max_len, min_history=1)
        table = pair_weight_table()
        spans = self.samples.spans
        self.batches = bucket_batches(spans, batch_size=args.batch_size, shuffle=True, seed=0)
        torch.manual_seed(0)
        self.model = Argus(preset(args.preset, max_len=args.max_len, tower_dim=32))
        self.cfg = FinetuneConfig(data=str(data), out="unused")
        self.optimizer = Optimizers(self.model, self.cfg, sparse=True)
        self.objective = PairwiseObjective(self.model)
        self.prepared = [sample_batch(self.events, self.samples, i, table) for i in self.batches]
        self.prefix_batch = args.prefix_batch

    def impression_level(self, index: np.ndarray, imp: ImpressionBatch) -> float:
        spans = self.samples.spans.take(index)
        return impression_level_backward(
            self.model, self.events, spans, imp, prefix_batch=self.prefix_batch
        )

    def first_batch_losses(self) -> tuple[float, float]:
        """Both losses on the same weights (the equivalence the tests prove, here at scale)."""
        batch, imp = self.prepared[0]
        a = float(self.objective(batch.to_torch(), imp.to_torch())["loss"].detach())
        self.model.zero_grad()
        b = self.impression_level(self.batches[0], imp)
        self.model.zero_grad()
        return a, b

    def one_pass_epoch(self) -> list[float]:
        losses = []
        for batch, imp in tqdm(self.prepared, desc="one-pass epoch", leave=False):
            self.optimizer.zero_grad()
            loss = self.objective(batch.to_torch(), imp.to_torch())["loss"]
            loss.backward()
            self.optimizer.clip_and_step(1.0)
            losses.append(float(loss.detach()))
        return losses

    def impression_level_epoch(self) -> list[float]:
        losses = []
        pairs = zip(self.batches, self.prepared, strict=True)
        for index, (_, imp) in tqdm(
            pairs, total=len(self.batches), desc="impression-level epoch", leave=False
        ):
            self.optimizer.zero_grad()
            losses.append(self.impression_level(index, imp))
            self.optimizer.clip_and_step(1.0)
        return losses

    def timings(self) -> dict[str, dict[str, float]]:
        """One epoch each way, from the same weights and a fresh optimiser."""
        start_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        timings = {}
        for name, epoch in (
            ("one_pass", self.one_pass_epoch),
            ("impression_level", self.impression_level_epoch),
        ):
            self.model.load_state_dict(start_state)
            self.optimizer = Optimizers(self.model, self.cfg, sparse=True)
            began = time.perf_counter()
            losses = epoch()
            timings[name] = {
                "epoch_s": time.perf_counter() - began,
                "mean_loss": float(np.mean(losses)),
            }
        return timings

    def shape(self, args: argparse.Namespace) -> dict[str, Any]:
        events, samples, prepared = self.events, self.samples, self.prepared
        per_chunk = np.diff(samples.offsets)
        groups = [len(np.unique(imp.group)) for _, imp in prepared]
        n_chunks = len(samples.spans)
        prefix_tokens = sum(
            _prefix_tokens(imp.group, imp.position, imp.sample) for _, imp in prepared
        )
        return {
            "users": len(np.unique(events.user_id)),
            "days": args.days,
            "events": len(events),
            "events_per_user": len(events) / args.users,
            "impressions_per_user": len(samples.impressions) / args.users,
            "chunks": n_chunks,
            "mean_chunk_length": float(samples.spans.length.mean()),
            "impressions_per_chunk": float(per_chunk.mean()),
            "groups_per_chunk": sum(groups) / n_chunks,
            "tokens_one_pass": int(samples.spans.length.sum()),
            "tokens_impression_level": int(prefix_tokens),
        }


def main() -> None:
    args = arguments()
    race = Race(args, simulated(args))
    a, b = race.first_batch_losses()
    timings = race.timings()
    shape = race.shape(args)
    speedup = timings["impression_level"]["epoch_s"] / timings["one_pass"]["epoch_s"]
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "data": shape,
        "model": {
            "preset": args.preset,
            "max_len": args.max_len,
            "lag": args.lag,
            "group": args.group,
        },
        "first_batch_loss": {"one_pass": a, "impression_level": b, "abs_diff": abs(a - b)},
        "timings": timings,
        "speedup": speedup,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune_speedup.json").write_text(json.dumps(result, indent=2) + "\n")
    d = shape
    line = (
        f"one epoch: one-pass {timings['one_pass']['epoch_s']:.2f} s vs impression-level "
        f"{timings['impression_level']['epoch_s']:.2f} s -> {speedup:.1f}x "
        f"({d['users']} users, {d['events_per_user']:.0f} events and "
        f"{d['impressions_per_user']:.0f} impressions per user, {d['groups_per_chunk']:.1f} "
        f"groups per chunk of {d['mean_chunk_length']:.0f} events; first-batch loss diff "
        f"{abs(a - b):.1e})"
    )
    (args.out / "finetune_speedup.md").write_text(line + "\n")
    print(line)


def _prefix_tokens(group: np.ndarray, position: np.ndarray, sample: np.ndarray) -> int:
    """Events the impression-level trainer runs through the transformer for one batch."""
    ends: dict[tuple[int, int], int] = {}
    for g, p, s in zip(group.tolist(), position.tolist(), sample.tolist(), strict=True):
        ends[(s, g)] = max(ends.get((s, g), 0), p + 1)
    return sum(ends.values())


if __name__ == "__main__":
    main()
