"""What the transformer carries: backbone diagnostics on a simulated world, one command.

    .venv/bin/python -m benchmarks.backbone [--users 5000 --items 20000 --days 30]

Simulates a world, pretrains and fine-tunes ARGUS on it as ``argus demo`` does (the demo's
sizes and settings by default; ``--model``, ``--pretrain-set``, ``--finetune-set`` and
``--finetune-model`` change them), then measures, for
an untrained model of the same shape, the pretrained and the fine-tuned one
(:mod:`model.diagnostics`):

* token shares: how much of the token each part (context, item, feedback, signed item) is;
* linear probes: the state → the user's true taste and their personal offset (the part of the
  affinity only their own feedback shows), the item embedding → the item's true latent;
* PairAccuracy on ``argus evaluate``'s held-out pairs: the FP head with the user's own state and
  with another user's, the towers, their personal part read from the state alone and the
  pooled-history shortcut's alone, beside MostPop and the oracle.

Prints a table and one JSON line (the fine-tuned model's figures, the pretrained and untrained
ones nested); writes ``backbone.json`` and ``backbone.md`` under ``--work``. Stages already in
``--work`` are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from argus.demo import options, stage
from model.argus import Argus
from model.checkpoint import load_model
from model.data.batching import TemporalSplit
from model.data.events import read_events
from model.data.simulate import Truth
from model.diagnostics import diagnose

ROOT = Path(__file__).resolve().parents[1]

# Rows of the table, in order, with their labels.
ROWS = {
    "token_share_context": "token share: context",
    "token_share_item": "token share: item",
    "token_share_feedback": "token share: feedback",
    "token_share_signed_item": "token share: signed item",
    "token_effect_item": "total effect on the token: item",
    "token_effect_feedback": "total effect on the token: feedback",
    "probe_taste_r2": "probe R², state → taste",
    "probe_taste_history_r2": "probe R², history's true item latents → taste (reference)",
    "probe_offset_r2": "probe R², state → personal offset",
    "probe_item_r2": "probe R², e_item → latent (≥ 20 events)",
    "probe_item_r2_frequent": "probe R², e_item → latent (≥ 200 events)",
    "fp_pair_accuracy": "PairAccuracy, FP head, own state",
    "fp_pair_accuracy_other_user": "PairAccuracy, FP head, another user's state",
    "towers_pair_accuracy": "PairAccuracy, towers",
    "towers_readout_pair_accuracy": "PairAccuracy, towers with the feedback readout (/score)",
    "towers_state_only_pair_accuracy": "PairAccuracy, towers' personal part, state alone",
    "readout_only_pair_accuracy": "PairAccuracy, the readout's personal part, without the state",
    "shortcut_only_pair_accuracy": "PairAccuracy, towers' personal part, pooled taste alone",
    "mostpop_pair_accuracy": "PairAccuracy, MostPop",
    "oracle_pair_accuracy": "PairAccuracy, oracle",
}
STAGES = ("untrained", "pretrained", "finetuned")


def train(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The data, pretrained and fine-tuned run directories (each stage run once)."""
    work = args.work
    data, pre, fine = work / "data", work / "pretrained", work / "finetuned"
    sizes = options(users=args.users, items=args.items, days=args.days, seed=args.seed)
    stage((data / "events.parquet").exists(), "simulate", *sizes, *options(out=data), "--quiet")
    shared = [*options(data=data), "--quiet"]
    schedule = (
        options(epochs=args.epochs) if args.epochs else options(max_steps=args.pretrain_steps)
    )
    model = options(out=pre, preset=args.preset, max_len=args.max_len)
    pretrain = [*shared, *model, *options(batch_size=args.pretrain_batch_size), *schedule]
    for setting in args.model:
        pretrain += options(model=setting)
    for setting in args.pretrain_set:
        pretrain += options(set=setting)
    stage((pre / "checkpoint.pt").exists(), "pretrain", *pretrain)
    epochs = args.finetune_epochs
    length = (
        options(epochs=epochs, min_steps=0) if epochs else options(max_steps=args.finetune_steps)
    )
    tune = [*shared, *options(init=pre, out=fine), *length]
    tune += options(batch_size=args.batch_size)
    for setting in args.finetune_set:
        tune += options(set=setting)
    for setting in args.finetune_model:
        tune += options(model=setting)
    stage((fine / "checkpoint.pt").exists(), "finetune", *tune)
    return data, pre, fine


def measure(data: Path, pre: Path, fine: Path, users: int, seed: int) -> dict[str, Any]:
    """Each stage's diagnostics: an untrained model shaped like the pretrained one, then both
    checkpoints."""
    events = read_events(data)
    truth = Truth(data)
    split = TemporalSplit.last_days(events, 7.0)
    pretrained, _ = load_model(pre)
    torch.manual_seed(seed)
    models: dict[str, Argus] = {
        "untrained": Argus(pretrained.cfg),
        "pretrained": pretrained,
        "finetuned": load_model(fine)[0],
    }
    return {
        name: diagnose(model, events, truth, split, users=users, seed=seed)
        for name, model in models.items()
    }


def markdown(results: dict[str, Any]) -> str:
    stages = results["stages"]
    lines = [
        f"Backbone diagnostics on {results['data']} ({results['pairs']:,} held-out pairs of "
        f"{results['users']:,} users); {results['machine']}.",
        "",
        "| figure | " + " | ".join(STAGES) + " |",
        "|---|" + "---:|" * len(STAGES),
    ]
    for key, label in ROWS.items():
        cells = [f"{stages[s][key]:.4f}" if key in stages[s] else "—" for s in STAGES]
        if any(c != "—" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--preset", default="argus-tiny")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--pretrain-batch-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16, help="fine-tuning's")
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs (0: steps)")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument(
        "--finetune-epochs", type=int, default=0, help="fine-tuning epochs (0: --finetune-steps)"
    )
    parser.add_argument(
        "--model", action="append", default=None, help="key=value (default: the demo's table)"
    )
    parser.add_argument("--pretrain-set", action="append", default=[], help="key=value")
    parser.add_argument("--finetune-set", action="append", default=[], help="key=value")
    parser.add_argument(
        "--finetune-model",
        action="append",
        default=[],
        help="a model setting for fine-tuning alone, e.g. dropout=0.1",
    )
    parser.add_argument("--sample", type=int, default=1_000, help="users of the held-out pairs")
    parser.add_argument(
        "--sample-seed", type=int, default=0, help="their seed (0: argus evaluate's sample)"
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs/bench/backbone")
    args = parser.parse_args(argv)
    args.model = ["hash_rows=65536"] if args.model is None else args.model
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    data, pre, fine = train(args)
    stages = measure(data, pre, fine, args.sample, args.sample_seed)
    served = stages["finetuned"]
    results = {
        **{k: v for k, v in served.items() if k != "pairs"},
        "data": str(data),
        "users": args.sample,
        "pairs": int(served["pairs"]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "stages": stages,
        "elapsed_s": time.perf_counter() - began,
    }
    (args.work / "backbone.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.work / "backbone.md").write_text(markdown(results))
    print(markdown(results))
    print(json.dumps({k: v for k, v in results.items() if k != "settings"}))
    return results


if __name__ == "__main__":
    main()
