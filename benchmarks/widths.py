"""Scaling in width: the same world, the same epochs, three model widths.

    .venv/bin/python -m benchmarks.widths [--widths 32 64 128 --users 5000 --items 20000]

For each width d (``argus-tiny``'s two layers, one head per 16 dimensions), pretrains and
fine-tunes as ``benchmarks.backbone`` does (the demo's schedule by default: 2 epochs in batches
of 8, then 600 fine-tuning steps; ``--finetune-epochs N`` fine-tunes every width N epochs
instead; ``--finetune-set-at 128:key=value`` gives one width a fine-tuning or model setting of
its own, such as regularisation sized to it), then measures the held-out NIP loss (``argus
evaluate``'s, full softmax over the catalog, 1,000 sampled test users) and the towers'
PairAccuracy on ``argus evaluate``'s pairs, and each width's PairAccuracy minus the next narrower
one's on those same pairs with a 95% paired bootstrap interval over users (a difference smaller
than the interval is not a gain). Prints a table, writes ``widths.json`` and ``widths.png`` (both
figures against log parameters) under ``--work``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from argus.demo import options, stage
from argus.replay import Pairs
from benchmarks.backbone import ROOT, train
from model.argus import ArgusConfig, count_parameters
from model.checkpoint import load_model
from model.data.batching import TemporalSplit
from model.data.events import read_events
from model.data.simulate import Truth
from model.diagnostics import HeldOutPairs, diagnose, tower_parts
from model.evaluate import EvalConfig, evaluate
from model.finetune import FinetuneConfig
from model.inference import ItemPopularity, states_at
from model.plots import _pyplot

ARGUS_FIELDS = {f.name for f in dataclasses.fields(ArgusConfig)}
FINETUNE_FIELDS = {f.name for f in dataclasses.fields(FinetuneConfig)}


def measure(data: Path, pre: Path, fine: Path, users: int) -> dict[str, float]:
    """Parameters, test NIP loss and the towers' PairAccuracy of one width."""
    events, truth = read_events(data), Truth(data)
    split = TemporalSplit.last_days(events, 7.0)
    pretrained, _ = load_model(pre)
    report = evaluate([pre], data, None, cfg=EvalConfig(max_users=users), progress=False)
    nip = next(iter(report["models"].values()))["nip_loss"]
    found = diagnose(load_model(fine)[0], events, truth, split, users=users)
    return {
        "parameters": count_parameters(pretrained),
        "transformer_parameters": count_parameters(pretrained, transformer_only=True),
        "test_nip_loss": nip,
        "towers_pair_accuracy": found["towers_pair_accuracy"],
        "towers_state_only_pair_accuracy": found["towers_state_only_pair_accuracy"],
        "probe_item_r2": found["probe_item_r2"],
        "mostpop_pair_accuracy": found["mostpop_pair_accuracy"],
        "oracle_pair_accuracy": found["oracle_pair_accuracy"],
    }


def paired(data: Path, fine: dict[str, Path], users: int) -> dict[str, dict[str, float]]:
    """Each width's towers PairAccuracy minus the next narrower width's, on the same pairs,
    with a 95% paired bootstrap interval over users (keys like ``"d64-d32"``)."""
    events = read_events(data)
    split = TemporalSplit.last_days(events, 7.0)
    held = HeldOutPairs.of(events, split, users=users)
    popularity = ItemPopularity.of(split.train(events))
    rows, state = held.impressions.row, held.impressions.state
    pairs = Pairs(
        rows,
        held.events.user_id[rows],
        held.item_id,
        held.events.timestamp[rows],
        held.impressions.grade,
        held.impressions.group,
        held.hi,
        held.lo,
        held.weight,
    )
    scores = {}
    for width, run in fine.items():
        model = load_model(run)[0].eval()
        h, taste = states_at(model, held.events, state).at(state)
        scores[width] = tower_parts(model, held, h, taste, popularity)["towers"].numpy()
    order = sorted(scores, key=int)
    return {
        f"d{wide}-d{narrow}": pairs.difference(scores[wide], scores[narrow])
        for narrow, wide in pairwise(order)
    }


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    plt = _pyplot()
    params = [r["parameters"] for r in results.values()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(params, [r["test_nip_loss"] for r in results.values()], marker="o")
    axes[0].set_ylabel("held-out NIP loss (full softmax)")
    axes[1].plot(params, [r["towers_pair_accuracy"] for r in results.values()], marker="o")
    first = next(iter(results.values()))
    for key, label in (("mostpop_pair_accuracy", "MostPop"), ("oracle_pair_accuracy", "oracle")):
        axes[1].axhline(first[key], linestyle="--", color="grey")
        axes[1].annotate(label, (params[0], first[key]), va="bottom")
    axes[1].set_ylabel("/score PairAccuracy (towers)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("parameters (log)")
        ax.grid(alpha=0.3)
    for width, r in results.items():
        axes[0].annotate(f"d={width}", (r["parameters"], r["test_nip_loss"]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tables(out: dict[str, Any]) -> str:
    """The per-width table and the paired differences, as Markdown."""
    lines = [
        "| d | parameters | held-out NIP loss | /score PairAccuracy | state-only part |",
        "|---|---:|---:|---:|---:|",
    ]
    for width, r in out["results"].items():
        lines.append(
            f"| {width} | {r['parameters']:,} | {r['test_nip_loss']:.4f} | "
            f"{r['towers_pair_accuracy']:.4f} | {r['towers_state_only_pair_accuracy']:.4f} |"
        )
    lines += ["| difference | PairAccuracy | 95% interval |", "|---|---:|---|"]
    for name, d in out["paired"].items():
        lines.append(f"| {name} | {d['difference']:+.4f} | [{d['low']:+.4f}, {d['high']:+.4f}] |")
    return "\n".join(lines)


def model_setting(setting: str) -> bool:
    """Whether ``key=value`` sets the model (``argus finetune --model``, e.g. ``dropout``) rather
    than fine-tuning (``--set``)."""
    key = setting.partition("=")[0].strip()
    return key in ARGUS_FIELDS and key not in FINETUNE_FIELDS


def settings_at(
    given: list[str], widths: list[int], parser: argparse.ArgumentParser
) -> dict[int, list[str]]:
    """``--finetune-set-at`` values by width (``"128:key=value"`` -> ``{128: ["key=value"]}``);
    a malformed value or a width not trained is a usage error naming it."""
    found: dict[int, list[str]] = {}
    for text in given:
        width, _, setting = text.partition(":")
        if not width.isdigit() or "=" not in setting:
            parser.error(f"--finetune-set-at {text!r}: expected WIDTH:KEY=VALUE")
        if int(width) not in widths:
            parser.error(f"--finetune-set-at {text!r}: width {width} is not in --widths {widths}")
        found.setdefault(int(width), []).append(setting)
    return found


def width_run(args: argparse.Namespace, width: int, settings: list[str]) -> argparse.Namespace:
    """``benchmarks.backbone``'s arguments for one width: the demo's schedule and table at
    width d, one head per 16 dimensions, and the width's own fine-tuning settings."""
    return argparse.Namespace(
        work=args.work / f"d{width}",
        users=args.users,
        items=args.items,
        days=args.days,
        seed=args.seed,
        preset="argus-tiny",
        max_len=256,
        pretrain_batch_size=8,
        batch_size=16,
        epochs=args.epochs,
        pretrain_steps=0,
        finetune_steps=args.finetune_steps,
        finetune_epochs=args.finetune_epochs,
        model=["hash_rows=65536", f"d_model={width}", f"n_heads={max(2, width // 16)}"],
        pretrain_set=[],
        finetune_set=[s for s in settings if not model_setting(s)],
        finetune_model=[s for s in settings if model_setting(s)],
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=600,
        help="fine-tuning steps; 0: `argus finetune`'s default, 2 epochs but at least 600 steps",
    )
    parser.add_argument(
        "--finetune-epochs", type=int, default=0, help="fine-tuning epochs (0: --finetune-steps)"
    )
    parser.add_argument(
        "--finetune-set-at",
        action="append",
        default=[],
        metavar="WIDTH:KEY=VALUE",
        help="a fine-tuning setting for one width, e.g. 128:tower_weight_decay=0.1 (repeatable)",
    )
    parser.add_argument("--sample", type=int, default=1_000)
    parser.add_argument("--work", type=Path, default=ROOT / "runs/bench/widths")
    args = parser.parse_args(argv)
    settings = settings_at(args.finetune_set_at, args.widths, parser)
    began = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    fine: dict[str, Path] = {}
    data = args.work / "data"
    sizes = options(users=args.users, items=args.items, days=args.days, seed=args.seed)
    stage((data / "events.parquet").exists(), "simulate", *sizes, *options(out=data), "--quiet")
    for width in args.widths:
        run = width_run(args, width, settings.get(width, []))
        run.work.mkdir(parents=True, exist_ok=True)
        if not (run.work / "data").exists():  # one world for every width
            (run.work / "data").symlink_to(data.resolve(), target_is_directory=True)
        _, pre, fine[str(width)] = train(run)
        started = time.perf_counter()
        results[str(width)] = measure(data, pre, fine[str(width)], args.sample)
        results[str(width)]["measure_s"] = time.perf_counter() - started
        print(f"d={width}: {results[str(width)]}", flush=True)
    out = {
        "widths": args.widths,
        "epochs": args.epochs,
        "finetune": (
            f"{args.finetune_epochs} epochs"
            if args.finetune_epochs
            else f"{args.finetune_steps} steps"
        ),
        "finetune_set": {str(width): found for width, found in settings.items()},
        "world": f"{args.users} users x {args.items} items x {args.days} days, seed {args.seed}",
        "results": results,
        "paired": paired(data, fine, args.sample),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "elapsed_s": time.perf_counter() - began,
    }
    (args.work / "widths.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(results, args.work / "widths.png")
    print(tables(out))
    return out


if __name__ == "__main__":
    main()
