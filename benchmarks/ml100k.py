"""ARGUS vs the SASRec baseline vs MostPop on MovieLens-100K, one split, same budget.

The last 20% of the time range is the test window. Both models share the backbone size, the
optimiser, the number of steps and the batch size; ARGUS trains on every rating (next item + the
like/dislike heads, with context), SASRec on the positive ratings only (rating >= 4). Metrics are
full-catalog NDCG@10 and Recall@10 of the next positive item, seen items excluded, on the same
targets for all three. Seeds are reported one by one and as mean ± std.

    .venv/bin/python -m benchmarks.ml100k [--seeds 0 1 2] [--steps 1500]

Writes ``runs/bench/ml100k/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from model.config import apply_overrides
from model.data.convert import convert_ml100k
from model.data.events import read_events, write_events
from model.data.fetch import ml100k
from model.evaluate import EvalConfig, evaluate
from model.train import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]
MODEL = (
    "d_model=64",
    "n_layers=2",
    "n_heads=2",
    "hash_rows=16384",
    "dropout=0.2",
    "n_uniform_negatives=512",
)
METRICS = ("ndcg@10", "recall@10")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--positives-only",
        action="store_true",
        help="keep the positive ratings only (every event a like, no negatives): both objectives "
        "then see the same events, and the extra inputs of ARGUS carry nothing",
    )
    parser.add_argument(
        "--model", action="append", default=[], help="key=value over MODEL, both objectives"
    )
    parser.add_argument("--set", action="append", default=[], help="key=value training setting")
    parser.add_argument("--out", type=Path, default=None, help="runs/bench/ml100k[-positives]")
    args = parser.parse_args()
    args.out = args.out or ROOT / (
        "runs/bench/ml100k" + ("-positives" if args.positives_only else "")
    )
    return args


def one_seed(args: argparse.Namespace, data: Path, seed: int) -> dict[str, Any]:
    """ARGUS and SASRec pretrained with ``seed``, evaluated on the same targets."""
    runs = []
    for objective in ("argus", "sasrec"):
        out = args.out / f"seed{seed}" / objective
        for stale in (out / "checkpoint.pt", out / "metrics.jsonl"):
            stale.unlink(missing_ok=True)
        config = apply_overrides(
            PretrainConfig(
                data=str(data),
                out=str(out),
                preset="argus-tiny",
                objective=objective,
                model=(*MODEL, *args.model),
                max_len=args.max_len,
                batch_size=args.batch_size,
                max_steps=args.steps,
                lr=args.lr,
                test_days=0,
                test_fraction=0.2,
                seed=seed,
                log_every=50,
                checkpoint_every=10**9,
            ),
            args.set,
        )
        print(pretrain(config, progress=True).line())
        runs.append(out)
    report = evaluate(
        runs, data, args.out / f"seed{seed}", cfg=EvalConfig(exclude_seen=True), progress=False
    )
    models = report["models"]
    print(
        f"seed {seed}: "
        + ", ".join(f"{_short(n)} ndcg@10={m['ndcg@10']:.4f}" for n, m in models.items())
    )
    return report


def main() -> None:
    args = arguments()
    data = args.out / "data"
    convert_ml100k(ml100k(), data)
    if args.positives_only:
        events = read_events(data)
        write_events(events.take(events.positive), data)
    started = time.perf_counter()
    reports = [one_seed(args, data, seed) for seed in args.seeds]
    per_seed = [
        {_short(name): metrics for name, metrics in report["models"].items()} for report in reports
    ]
    report = reports[-1]
    names = list(per_seed[0])
    summary = {
        name: {
            metric: {
                "mean": statistics.fmean(s[name][metric] for s in per_seed),
                "std": statistics.pstdev(s[name][metric] for s in per_seed),
                "per_seed": [s[name][metric] for s in per_seed],
            }
            for metric in METRICS
        }
        for name in names
    }
    ratio = [s["ARGUS"]["ndcg@10"] / s["SASRec"]["ndcg@10"] for s in per_seed]
    result = {
        "seeds": args.seeds,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "lr": args.lr,
        "model": [*MODEL, *args.model],
        "settings": args.set,
        "positives_only": args.positives_only,
        "ranking_targets": report["ranking_targets"],
        "catalog_size": report["catalog_size"],
        "summary": summary,
        "argus_over_sasrec_ndcg10": ratio,
        "elapsed_s": time.perf_counter() - started,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(args, result, names)
    (args.out / "results.md").write_text(text)
    print(text, end="")


def markdown(args: argparse.Namespace, result: dict[str, Any], names: list[str]) -> str:
    summary, ratio = result["summary"], result["argus_over_sasrec_ndcg10"]
    lines = [
        f"ML-100K, last 20% of the time range as test; {result['ranking_targets']:,} targets, "
        f"{result['catalog_size']:,} items, seen excluded; seeds {args.seeds}, "
        f"{args.steps} steps each" + ("; positive ratings only." if args.positives_only else "."),
        "",
        "| model | NDCG@10 | Recall@10 |",
        "|---|---:|---:|",
    ]
    for name in names:
        cells = [f"{summary[name][m]['mean']:.4f} ± {summary[name][m]['std']:.4f}" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "ARGUS / SASRec NDCG@10 per seed: " + ", ".join(f"{r:.3f}" for r in ratio),
        f"(mean {statistics.fmean(ratio):.3f})",
    ]
    return "\n".join(lines) + "\n"


def _short(name: str) -> str:
    """ "ARGUS (argus) + like" -> "ARGUS + like"."""
    return name.replace(" (argus)", "").replace(" (sasrec)", "")


if __name__ == "__main__":
    main()
