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

from model.data.simulate import SimConfig, Simulator
from model.evaluate import ORACLE, EvalConfig, evaluate
from model.finetune import FinetuneConfig, finetune
from model.plots import compare_curves
from model.train import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
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
    parser.add_argument("--lag", default="1d")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/pretrain_ablation")
    args = parser.parse_args()
    model = ("d_model=64", "n_heads=2", "hash_rows=65536", "n_uniform_negatives=512")

    data = args.out / "data"
    if not (data / "events.parquet").exists():
        sim = SimConfig(n_users=args.users, n_items=args.items, n_days=args.days, seed=0)
        print(Simulator(sim).run(data).line())
    pretrained = args.out / "pretrained"
    if not (pretrained / "checkpoint.pt").exists():
        pretraining = PretrainConfig(
            data=str(data),
            out=str(pretrained),
            preset="argus-tiny",
            model=model,
            max_len=args.max_len,
            batch_size=args.batch_size,
            max_steps=args.pretrain_steps,
            lr=2e-3,
            test_days=args.test_days,
        )
        print(pretrain(pretraining).line())

    runs: dict[str, dict[str, list[float]]] = {"pretrained": {}, "scratch": {}}
    curves = {}
    for seed in args.seeds:
        for init in runs:
            out = args.out / f"finetune_{init}_seed{seed}"
            config = FinetuneConfig(
                data=str(data),
                out=str(out),
                init=str(pretrained) if init == "pretrained" else "",
                preset="argus-tiny",
                model=model,
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
            curves[f"{init} (seed {seed})"] = [
                json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            ]
        report = evaluate(
            [args.out / f"finetune_{init}_seed{seed}" for init in runs],
            data,
            args.out / f"eval_seed{seed}",
            cfg=EvalConfig(max_users=1_000),
        )
        rows = report["models"]
        for init in runs:
            name = f"ARGUS fine-tuned (finetune_{init}_seed{seed})"
            runs[init].setdefault("pair_accuracy", []).append(rows[name]["pair_accuracy"])
        pairs = report["pairs"]
        most_pop, oracle = rows["MostPop"]["pair_accuracy"], rows[ORACLE]["pair_accuracy"]

    def mean(values: list[float]) -> str:
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        each = ", ".join(f"{v:.4f}" for v in values)
        return f"{statistics.fmean(values):.4f}{spread} ({each})"

    result = {
        "settings": vars(args) | {"out": str(args.out), "model": model},
        "pairs": pairs,
        "pair_accuracy": {
            "from pretrained": runs["pretrained"]["pair_accuracy"],
            "from scratch": runs["scratch"]["pair_accuracy"],
            "MostPop": most_pop,
            "oracle": oracle,
        },
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    compare_curves(
        curves,
        "pair_accuracy",
        args.out / "finetune_curves.png",
        "training PairAccuracy: fine-tuning from pretrained vs from scratch",
    )
    lines = [
        f"PairAccuracy on {pairs['pairs']:,} pairs of {pairs['impressions']:,} test impressions "
        f"(lag {pairs['lag']}); seeds {args.seeds}:",
        "",
        "| init | PairAccuracy, mean ± std (per seed) |",
        "|---|---:|",
        f"| pretrained ({args.pretrain_steps} steps NIP+FP) | "
        f"{mean(runs['pretrained']['pair_accuracy'])} |",
        f"| scratch | {mean(runs['scratch']['pair_accuracy'])} |",
        f"| MostPop | {most_pop:.4f} |",
        f"| oracle (true affinity) | {oracle:.4f} |",
    ]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
