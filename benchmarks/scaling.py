"""The first point of the scaling curve: ``argus-3m`` vs ``argus-30m`` at equal steps.

Both presets train on the same simulated service (>= 1M events; the last 7 days held out) with the
same seed, batches, learning rate and number of steps, so they see exactly the same events. Both
use a smaller hashed table than the presets' 2^19 rows (``--hash-rows``) so that the dense AdamW
update of the embedding does not dominate a CPU run; the transformer is the preset's. Reported:
the training NIP loss (mean of the last ``--tail`` logged windows) and the held-out NIP loss
(full softmax over the catalog) and Recall/NDCG on a sample of test users.

    .venv/bin/python -m benchmarks.scaling [--steps 300] [--users 7000]

Writes ``runs/bench/scaling/results.json`` and ``nip_loss.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from model.data.simulate import SimConfig, Simulator
from model.evaluate import EvalConfig, evaluate
from model.plots import compare_curves
from model.train import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["argus-3m", "argus-30m"])
    parser.add_argument("--users", type=int, default=7_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--hash-rows", type=int, default=2**17)
    parser.add_argument("--eval-users", type=int, default=300)
    parser.add_argument("--tail", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/scaling")
    args = parser.parse_args()

    data = args.out / "data"
    if not (data / "events.parquet").exists():
        sim = SimConfig(n_users=args.users, n_items=args.items, n_days=args.days, seed=0)
        print(Simulator(sim).run(data).line())
    results, curves = {}, {}
    for name in args.presets:
        run = args.out / name
        for stale in (run / "checkpoint.pt", run / "metrics.jsonl"):
            stale.unlink(missing_ok=True)
        config = PretrainConfig(
            data=str(data),
            out=str(run),
            preset=name,
            model=(f"hash_rows={args.hash_rows}",),
            max_len=args.max_len,
            batch_size=args.batch_size,
            max_steps=args.steps,
            lr=args.lr,
            warmup_steps=args.steps // 10,
            test_days=7,
            log_every=10,
            checkpoint_every=10**9,
        )
        started = time.perf_counter()
        summary = pretrain(config)
        print(summary.line())
        report = evaluate([run], data, run, cfg=EvalConfig(max_users=args.eval_users))
        metrics = next(iter(report["models"].values()))
        curves[name] = summary.history
        results[name] = {
            "transformer_parameters": summary.transformer_parameters,
            "train_nip_loss": statistics.fmean(r["nip"] for r in summary.history[-args.tail :]),
            "test_nip_loss": metrics["nip_loss"],
            "test_ndcg@10": metrics["ndcg@10"],
            "test_recall@10": metrics["recall@10"],
            "events_per_s": summary.events_per_s,
            "wall_s": time.perf_counter() - started,
        }
        print(f"{name}: {results[name]}")
    compare_curves(curves, "nip", args.out / "nip_loss.png", title="training NIP loss, equal steps")
    first, last = args.presets[0], args.presets[-1]
    out = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "hash_rows": args.hash_rows,
        "lr": args.lr,
        "events": summary.events,
        "results": results,
        "larger_has_lower_test_nip_loss": results[last]["test_nip_loss"]
        < results[first]["test_nip_loss"],
        "larger_has_lower_train_nip_loss": results[last]["train_nip_loss"]
        < results[first]["train_nip_loss"],
    }
    (args.out / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    for name, r in results.items():
        print(
            f"{name}: train NIP {r['train_nip_loss']:.4f}, test NIP {r['test_nip_loss']:.4f}, "
            f"NDCG@10 {r['test_ndcg@10']:.4f}"
        )


if __name__ == "__main__":
    main()
