"""Pretraining throughput of ``argus-3m`` at max_len 512: ARGUS objective vs SASRec, one run.

Each objective trains in its own child process (so that each peak memory is its own) on the same
simulated data with the same preset, batch and step count. Throughput is measured after the first
``--warmup`` steps: training events (sequence positions) per second, and peak memory (RSS on CPU,
allocated memory on CUDA).

    .venv/bin/python -m benchmarks.train_throughput [--steps 30] [--batch-size 8] [--device auto]

Writes ``runs/bench/train_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    from model.train import PretrainConfig, pretrain

    config = PretrainConfig(
        data=str(args.data),
        out=str(args.run),
        preset=args.preset,
        objective=args.objective,
        max_len=args.max_len,
        batch_size=args.batch_size,
        max_steps=args.steps,
        test_days=0,
        log_every=args.warmup,
        checkpoint_every=10**9,
        device=args.device,
    )
    summary = pretrain(config, progress=False)
    first, last = summary.history[0], summary.history[-1]  # the first window is the warm-up
    measured = {
        "events_per_s": (last["events"] - first["events"])
        / (last["elapsed_s"] - first["elapsed_s"]),
        "peak_memory_mib": summary.peak_memory_mib,
        "transformer_parameters": summary.transformer_parameters,
        "steps_measured": summary.steps - args.warmup,
        "events_measured": last["events"] - first["events"],
        "final_loss": summary.final_loss,
    }
    print("RESULT " + json.dumps(measured))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="argus-3m")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/train_throughput.json")
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.objective:
        child(args)
        return

    from model.data.simulate import SimConfig, Simulator

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        sim = Simulator(SimConfig(n_users=2_000, n_items=20_000, n_days=60, seed=0)).run(
            data, progress=False
        )
        print(sim.line())
        for objective in ("argus", "sasrec"):
            command = [
                sys.executable,
                "-m",
                "benchmarks.train_throughput",
                "--objective",
                objective,
                "--data",
                str(data),
                "--run",
                str(Path(tmp) / objective),
                "--preset",
                args.preset,
                "--max-len",
                str(args.max_len),
                "--batch-size",
                str(args.batch_size),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--device",
                args.device,
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            results[objective] = json.loads(line.removeprefix("RESULT "))
            print(f"{objective}: {results[objective]}")
    ratio = results["argus"]["events_per_s"] / results["sasrec"]["events_per_s"]
    report = {
        "preset": args.preset,
        "max_len": args.max_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "simulated_events": sim.events,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, device {args.device}",
        "results": results,
        "argus_over_sasrec_events_per_s": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for objective, r in results.items():
        print(
            f"{args.preset} {objective:6s} max_len {args.max_len}: {r['events_per_s']:,.0f} "
            f"events/s, peak memory {r['peak_memory_mib']:,.0f} MiB"
        )
    print(f"ARGUS / SASRec throughput: {ratio:.2f}")


if __name__ == "__main__":
    main()
