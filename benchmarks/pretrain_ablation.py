"""Does pretraining help fine-tuning? Two-tower fine-tuning from the pretrained checkpoint vs
from scratch, with the same fine-tuning steps, on simulated data with impressions.

One simulated service (the last ``--test-days`` days held out); one pretraining run (NIP + FP);
then, per seed, two fine-tuning runs that differ only in their initial weights (same data, model,
batches, learning rate, lag and number of steps). ``argus evaluate`` scores both on the test
window: weighted PairAccuracy next to MostPop's and the oracle's (the simulator's true affinity),
on the same pairs.

    .venv/bin/python -m benchmarks.pretrain_ablation [--pretrain-steps 600] [--finetune-steps 300]

Writes ``runs/bench/pretrain_ablation/results.json``, ``results.md`` and ``finetune_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from model.contract import DEFAULT_LAG
from model.data.simulate import SimConfig, Simulator
from model.evaluate import ORACLE, EvalConfig, evaluate
from model.finetune import FinetuneConfig, finetune
from model.plots import compare_curves
from model.train import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]


MODEL = ("d_model=64", "n_heads=2", "hash_rows=65536", "n_uniform_negatives=512")
INITS = ("pretrained", "scratch")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=3_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--test-days", type=float, default=5.0)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lag", default=DEFAULT_LAG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/pretrain_ablation")
    return parser.parse_args()


def pretrained_once(args: argparse.Namespace, data: Path) -> Path:
    """The simulated service and one pretraining run on it, each made once under --out."""
    if not (data / "events.parquet").exists():
        sim = SimConfig(n_users=args.users, n_items=args.items, n_days=args.days, seed=0)
        print(Simulator(sim).run(data).line())
    pretrained = args.out / "pretrained"
    if not (pretrained / "checkpoint.pt").exists():
        pretraining = PretrainConfig(
            data=str(data),
            out=str(pretrained),
            preset="argus-tiny",
            model=MODEL,
            max_len=args.max_len,
            batch_size=args.batch_size,
            max_steps=args.pretrain_steps,
            lr=2e-3,
            test_days=args.test_days,
        )
        print(pretrain(pretraining).line())
    return pretrained


def fine_tuned(
    args: argparse.Namespace, data: Path, pretrained: Path, init: str, seed: int
) -> tuple[Path, list[dict[str, Any]]]:
    """One fine-tuning run (made once) from the pretrained weights or from scratch; its curve."""
    out = args.out / f"finetune_{init}_seed{seed}"
    config = FinetuneConfig(
        data=str(data),
        out=str(out),
        init=str(pretrained) if init == "pretrained" else "",
        preset="argus-tiny",
        model=MODEL,
        max_len=args.max_len,
        batch_size=args.batch_size,
        max_steps=args.finetune_steps,
        lr=args.lr,
        lag=args.lag,
        test_days=args.test_days,
        seed=seed,
    )
    if not (out / "checkpoint.pt").exists():
        print(finetune(config).line())
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, curve


def main() -> None:
    args = arguments()
    data = args.out / "data"
    pretrained = pretrained_once(args, data)
    runs: dict[str, list[float]] = {init: [] for init in INITS}
    curves = {}
    for seed in args.seeds:
        outs = []
        for init in INITS:
            out, curves[f"{init} (seed {seed})"] = fine_tuned(args, data, pretrained, init, seed)
            outs.append(out)
        report = evaluate(
            outs, data, args.out / f"eval_seed{seed}", cfg=EvalConfig(max_users=1_000)
        )
        rows = report["models"]
        for init, out in zip(INITS, outs, strict=True):
            runs[init].append(rows[f"ARGUS fine-tuned ({out.name})"]["pair_accuracy"])
    result = {
        "settings": vars(args) | {"out": str(args.out), "model": MODEL},
        "pairs": report["pairs"],
        "pair_accuracy": {
            "from pretrained": runs["pretrained"],
            "from scratch": runs["scratch"],
            "MostPop": rows["MostPop"]["pair_accuracy"],
            "oracle": rows[ORACLE]["pair_accuracy"],
        },
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    compare_curves(
        curves,
        "pair_accuracy",
        args.out / "finetune_curves.png",
        "training PairAccuracy: fine-tuning from pretrained vs from scratch",
    )
    text = markdown(args, result)
    (args.out / "results.md").write_text(text)
    print(text, end="")


def markdown(args: argparse.Namespace, result: dict[str, Any]) -> str:
    def mean(values: list[float]) -> str:
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        each = ", ".join(f"{v:.4f}" for v in values)
        return f"{statistics.fmean(values):.4f}{spread} ({each})"

    pairs, accuracy = result["pairs"], result["pair_accuracy"]
    lines = [
        f"PairAccuracy on {pairs['pairs']:,} pairs of {pairs['impressions']:,} test impressions "
        f"(lag {pairs['lag']}); seeds {args.seeds}:",
        "",
        "| init | PairAccuracy, mean ± std (per seed) |",
        "|---|---:|",
        f"| pretrained ({args.pretrain_steps} steps NIP+FP) | "
        f"{mean(accuracy['from pretrained'])} |",
        f"| scratch | {mean(accuracy['from scratch'])} |",
        f"| MostPop | {accuracy['MostPop']:.4f} |",
        f"| oracle (true affinity) | {accuracy['oracle']:.4f} |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
