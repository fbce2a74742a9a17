"""Quality through the running service: simulate → pretrain → fine-tune → export (as of the
training cut-off) → build → publish to a real Redis → ``argus serve`` → replay the next 7 days.

    .venv/bin/python -m benchmarks.replay [--users 20000 --items 50000 --days 60 --sample 2000]

For a seeded sample of test-window users it calls the real HTTP endpoints:

* ``/candidates`` (k = 500, cut to every k of ``--ks``): recall of each user's positive events in
  the window, "all" and "new to the user" (their earlier items passed in ``exclude_item_ids``);
* ``/score`` on their window impressions: weighted PairAccuracy, pairs within one user and day.

Beside every figure: MostPop, Trending (MostPop of the last 7 days first; and of the model's own
trend window, where it chose another), per-user counters for ``/score`` (MostPop's log count
plus the logit of the user's positive share on the item's artist, the baseline a personal score
must beat), the simulator's oracle (true affinity + w · log popularity, w fitted on a disjoint
half of the sampled users; PairAccuracy by the true affinity alone), and the same bundle
evaluated offline by exact search (the service must lose nothing). Writes
``runs/bench/replay/results.json``, ``results.md`` and ``recall.png``. The data and trained
stages are cached under ``--work`` and reused whenever they are there: the default work
directory names the data set and the retrieval query, so another setting gets its own.

Training: 4 epochs of pretraining in batches of 8 (at full size /score closed 28% of the MostPop
→ oracle gap after 2 and 33% after 4) and 2 of fine-tuning in batches of 16 (at full size 4,290
steps: 0.28 of an epoch, the earlier 600 steps, closed 17% and 2 epochs 28%); a KuaiRand log is
fine-tuned for 2,400 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from argus.demo import argus, options, stage
from argus.replay import (
    Client,
    Pairs,
    Rankings,
    candidates,
    counter_scores,
    like_rate_scores,
    offline,
    popularity_scores,
    score_pairs,
    session_replay,
    unfamiliar_candidates,
)
from argus.servers import RedisServer, free_port
from index.bundle import Bundle, list_versions, rows_of
from index.store import publish
from model.calibration import CALIBRATION_FILE
from model.checkpoint import load_model
from model.contract import DAY
from model.data.batching import TemporalSplit
from model.data.convert import convert_kuairand, convert_ml100k
from model.data.events import Events, read_events
from model.data.fetch import ml100k
from model.data.simulate import Truth
from model.diagnostics import diagnose
from model.future import WindowTargets, fit_oracle, oracle_ranking, popular_ranking, split_users
from model.metrics import recall
from service.cli import wait_ready

ROOT = Path(__file__).resolve().parents[1]
# A log whose catalog turns over daily (KuaiRand: half the held-out impressions are of videos the
# bundle lacks): score new items with a cold prior placed on the last training day
NEW_ITEMS = ("item_negatives=true", "cold_items=true", "item_min_events=5", "cold_calibration=1d")
# A log whose returning users pick what is popular overall (MovieLens): the retrieval query
# weighs each film's positives of all time beside its last week's
POPULAR_RETURN = ("retrieval_popularity=true",)
# A log of under 100k events: each retrieval row sees few updates, so the faster rate
SMALL_LOG = ("retrieval_lr=1e-2",)
REAL_LOGS = {"ml100k": (*POPULAR_RETURN, *SMALL_LOG), "kuairand": (*NEW_ITEMS, *SMALL_LOG)}
KS = (10, 20, 50, 100, 200, 500)
TREND = 7 * DAY  # the Trending baseline: MostPop of the last week first


def pipeline(args: argparse.Namespace, work: Path) -> Path:
    """The bundle of the replayed model (each stage run once per work directory)."""
    data, pre, fine, export, bundles = (
        work / name for name in ("data", "pretrained", "finetuned", "export", "bundles")
    )
    if args.ml100k:
        if not (data / "events.parquet").exists():
            convert_ml100k(ml100k(), data)
    elif args.kuairand:
        if not (data / "events.parquet").exists():
            convert_kuairand(args.kuairand, data)
    else:
        sizes = options(users=args.users, items=args.items, days=args.days, seed=args.seed)
        done = (data / "events.parquet").exists()
        settings = [part for setting in args.sim_set for part in ("--set", setting)]
        stage(done, "simulate", *sizes, *options(out=data), *settings, "--quiet")
    real = args.ml100k or args.kuairand
    split = options(test_fraction=0.2) if real else []  # else the last 7 days
    shared = options(data=data) + split + ["--quiet"]
    schedule = (
        options(epochs=args.pretrain_epochs)
        if args.pretrain_epochs
        else options(max_steps=args.pretrain_steps)
    )
    model = [*options(preset=args.preset, max_len=args.max_len), *schedule]
    stage(
        (pre / "checkpoint.pt").exists(),
        "pretrain",
        *shared,
        *model,
        *options(out=pre, batch_size=args.pretrain_batch_size),
        *options(model=f"hash_rows={args.hash_rows}"),
        *(part for setting in args.model for part in ("--model", setting)),
    )
    steps = args.finetune_steps or (2_400 if args.kuairand else 0)
    tune = options(init=pre, out=fine, batch_size=args.batch_size)
    tune += options(max_steps=steps) if steps else options(epochs=args.finetune_epochs)
    tune += options(model=f"retrieval_query={args.retrieval_query}")
    log = "kuairand" if args.kuairand else "ml100k" if args.ml100k else ""
    settings = [*REAL_LOGS.get(log, ()), *args.finetune_set]  # later ones win
    tune += [part for setting in settings for part in ("--set", setting)]
    stage((fine / "checkpoint.pt").exists(), "finetune", *shared, *tune)
    stage(
        export.exists(),
        "export",
        *options(checkpoint=fine, data=data, out=export, until="trained"),
        "--quiet",
    )
    if not list_versions(bundles):
        argus("build", *options(export=export, bundles=bundles, search=args.search), "--quiet")
    return list_versions(bundles)[-1]


@contextlib.contextmanager
def serving(work: Path, bundle: Bundle, *, max_k: int = 1000) -> Iterator[Client]:
    """A real redis-server with ``bundle`` published to it and ``argus serve`` reading it: a
    client of that service, until the block ends."""
    with contextlib.ExitStack() as stack:
        server = RedisServer(work / "redis")
        (work / "redis").mkdir(exist_ok=True)
        server.start()
        stack.callback(server.stop)
        print(publish(bundle, redis.Redis.from_url(server.url), progress=False).line())
        port = free_port()
        env = {
            **os.environ,
            "ARGUS_BUNDLES": str(bundle.path.parent),
            "ARGUS_REDIS_URL": server.url,
            "ARGUS_MAX_K": str(max(max_k, 1000)),
        }
        process = subprocess.Popen(
            # by module from ROOT: a git worktree serves its own code, not the installed one
            [sys.executable, "-m", "argus", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=(work / "serve.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(process.wait, 30)
        stack.callback(process.terminate)
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url, timeout_s=120)
        yield Client(url)


@dataclass
class Oracle:
    """The simulator's truth, with the popularity blend fitted on users apart from the window's."""

    truth: Truth
    weights: dict[str, float]  # "all", "new": the blend weight for each kind of list

    @classmethod
    def fitted(cls, truth_path: Path, fit: WindowTargets) -> Oracle:
        truth = Truth(truth_path)
        return cls(
            truth,
            {
                "all": fit_oracle(truth, fit, 100, exclude_seen=False),
                "new": fit_oracle(truth, fit, 100, exclude_seen=True),
            },
        )


@dataclass
class Heard:
    """What the running service answered for the window's users."""

    served: Rankings  # /candidates, with and without seen items
    scores: np.ndarray  # /score of every pair's impressions
    unfamiliar: list[np.ndarray] | None  # /candidates with unfamiliar=artists (None: no artists)
    seconds: float
    realtime: dict[str, Any] | None  # the session replay, realtime vs stored


def measure(args: argparse.Namespace, work: Path, bundle_path: Path) -> dict[str, Any]:
    bundle = Bundle.open(bundle_path)
    data = work / "data"
    events = read_events(data)
    start = int(bundle.manifest["trained_until"])
    # simulated: the next 7 days; real data: the rest of it (its last 20% of time)
    real = args.ml100k or args.kuairand
    days = (int(events.timestamp.max()) + 1 - start) / DAY if real else 7.0
    truth_path = data / "truth.npz"
    n = 2 * args.sample if truth_path.exists() else args.sample
    both = WindowTargets.of(events, start, days=days, users=n, seed=args.seed)
    # the oracle's blend weight is fitted on a disjoint half
    fit, window = split_users(both, seed=args.seed) if truth_path.exists() else (both, both)
    oracle = Oracle.fitted(truth_path, fit) if truth_path.exists() else None
    pairs = Pairs.of(events, window.users, window.start, days=days)
    k = max(args.ks)
    results: dict[str, Any] = {"users": len(window), "pairs": len(pairs.hi), "start": start}
    with serving(work, bundle, max_k=k) as client:
        sessions = 0 if real else args.realtime_sample  # sessions of impressions: simulated data
        heard = hear(args, client, bundle, events, window, pairs, days, sessions)
    results["http_seconds"] = heard.seconds
    if heard.realtime is not None:
        results["realtime"] = heard.realtime
    local, local_scores = offline(bundle, window, pairs, k)
    trend = int(bundle.manifest.get("model_config", {}).get("retrieval_trend", 0))
    rankings = ranked(events, window, k, heard.served, local, oracle, trend)
    scores = {
        "service": heard.scores,
        "offline": local_scores,
        "MostPop": popularity_scores(events, pairs, start),
        "counters": counter_scores(events, pairs, start),
    }
    if args.kuairand:
        scores["past like rate"] = like_rate_scores(events, pairs, start)
        results["fp_head"] = fp_head(args, work, events, start)
    if oracle is not None:
        scores["oracle"] = oracle.truth.affinity(pairs.user, pairs.item, pairs.timestamp)
        results["oracle_popularity_weight"] = oracle.weights
    results |= recalls(args.ks, window, rankings)
    results["pair_accuracy"] = {name: pairs.accuracy(s) for name, s in scores.items()}
    results["service_minus"] = {  # with a 95% paired bootstrap interval over users
        name: pairs.difference(heard.scores, s)
        for name, s in scores.items()
        if name not in ("service", "offline", "oracle") and len(pairs.hi)
    }
    calibration = work / "finetuned" / CALIBRATION_FILE
    if calibration.exists():
        results["cold_calibration"] = json.loads(calibration.read_text())
    if args.kuairand:  # half its window's videos are new: where each score wins and loses
        _, known = rows_of(bundle.item_ids, pairs.item)
        results["pairs_by_catalog"] = pairs.by_catalog(known, scores)
    if heard.unfamiliar is not None:
        results["unfamiliar_artists"] = unfamiliar_recall(
            events, window, heard.unfamiliar, k, oracle
        )
    results["sources"] = heard.served.sources
    results["service_equals_offline_scores"] = bool(
        np.allclose(np.nan_to_num(heard.scores), np.nan_to_num(local_scores), atol=1e-5)
    )
    return results


def hear(
    args: argparse.Namespace,
    client: Client,
    bundle: Bundle,
    events: Events,
    window: WindowTargets,
    pairs: Pairs,
    days: float,
    sessions: int,
) -> Heard:
    """Every request of the replay, through ``client``: lists, scores, the unfamiliar-artists
    lists (when the data has artists) and ``sessions`` users' sessions realtime vs stored."""
    k = max(args.ks)
    began = time.perf_counter()
    served = candidates(client, window, k, progress=True)
    scores = score_pairs(client, pairs, progress=True)
    unfamiliar = None
    if (events.artist_id >= 0).any():
        unfamiliar = unfamiliar_candidates(client, window, events, k, progress=True)
    seconds = time.perf_counter() - began
    realtime = None
    if sessions:
        replay = session_replay(
            client,
            events,
            window.users[:sessions],
            window.start,
            days=days,
            max_len=int(bundle.manifest["model_config"]["max_len"]),
            reveal=args.session_reveal,
            progress=True,
        )
        realtime = asdict(replay)
    return Heard(served, scores, unfamiliar, seconds, realtime)


def ranked(
    events: Events,
    window: WindowTargets,
    k: int,
    served: Rankings,
    local: Rankings,
    oracle: Oracle | None,
    model_trend: int = 0,
) -> dict[str, Rankings]:
    """The service's lists beside the bundle's exact ones, MostPop, Trending and the oracle;
    and Trending over the model's own trend window (``model_trend`` seconds, chosen from the
    training log) where it is not the baseline's week: what the model's trend column would
    recall with nothing personal beside it."""

    def popular(trend: int) -> Rankings:
        return Rankings(
            list(popular_ranking(events, window, k, False, trend)),
            list(popular_ranking(events, window, k, True, trend)),
            {},
        )

    rankings = {
        "service": served,
        "offline": local,
        "MostPop": popular(0),
        "Trending": popular(TREND),
    }
    if model_trend and model_trend != TREND:
        rankings[f"Trending ({window_text(model_trend)})"] = popular(model_trend)
    if oracle is not None:
        rankings["oracle"] = Rankings(
            list(oracle_ranking(oracle.truth, window, k, False, oracle.weights["all"])),
            list(oracle_ranking(oracle.truth, window, k, True, oracle.weights["new"])),
            {},
        )
    return rankings


def fp_head(args: argparse.Namespace, work: Path, events: Events, start: int) -> dict[str, Any]:
    """The pretrained FP head on ``argus evaluate``'s pairs of the same split: its own like
    against hate ordering, and with another user's state."""
    pretrained, _ = load_model(work / "pretrained")
    split = TemporalSplit(start, int(events.timestamp.max()) + 1)
    fp = diagnose(pretrained, events, None, split, users=0, seed=args.seed)
    return {k: fp[k] for k in ("fp_pair_accuracy", "fp_pair_accuracy_other_user", "pairs")}


def window_text(seconds: int) -> str:
    """``7d``, ``12h`` or ``90m``: a trend window as ``--set retrieval_trend=`` takes it."""
    for unit, size in (("d", DAY), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def recalls(ks: list[int], window: WindowTargets, rankings: dict[str, Rankings]) -> dict[str, Any]:
    """Recall at each k, of all the window's positives and of those new to the user; and at
    100 for the users with a history before the window apart, both ways: the only ones a model
    can tell apart from the crowd (on ML-100K most window users are new)."""
    new = window.new_items()
    known = np.flatnonzero([len(seen) > 0 for seen in window.seen])
    return {
        "recall": {
            name: {
                "all": {k: recall(r.all, window.items, k) for k in ks},
                "new": {k: recall(r.new, new, k) for k in ks},
            }
            for name, r in rankings.items()
        },
        "with_history": {
            "users": len(known),
            "recall@100": {
                name: recall([r.all[i] for i in known], [window.items[i] for i in known], 100)
                for name, r in rankings.items()
            },
            "new@100": {
                name: recall([r.new[i] for i in known], [new[i] for i in known], 100)
                for name, r in rankings.items()
            },
        },
    }


def unfamiliar_recall(
    events: Events,
    window: WindowTargets,
    served: list[np.ndarray],
    k: int,
    oracle: Oracle | None,
) -> dict[str, Any]:
    """Recall@100 of the targets by artists new to the user, each list ranked without the
    user's artists."""
    targets = window.unfamiliar_artists(events)
    lists = {"service": served, "MostPop": list(popular_ranking(events, targets, k, True))}
    if oracle is not None:
        new = oracle.weights["new"]
        lists["oracle"] = list(oracle_ranking(oracle.truth, targets, k, True, new))
    return {
        "users": sum(len(t) > 0 for t in targets.items),
        "recall@100": {name: recall(r, targets.items, 100) for name, r in lists.items()},
    }


def gap_closed(r: dict[str, Any], part: str, k: int) -> float | None:
    """Share of the MostPop → oracle gap the service closes (None without an oracle)."""
    if "oracle" not in r["recall"]:
        return None
    pop, ora, svc = (r["recall"][n][part][k] for n in ("MostPop", "oracle", "service"))
    return (svc - pop) / (ora - pop) if ora != pop else float("nan")


def markdown(r: dict[str, Any]) -> str:
    names = list(r["recall"])
    lines = [
        f"Replay of {r['users']:,} test-window users ({r['pairs']:,} impression pairs) through "
        f"the running service; {r['machine']}.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for part in ("all", "new"):
        for k in (100, 500):
            row = [f"{r['recall'][n][part][k]:.3f}" for n in names]
            lines.append(f"| recall@{k} ({part}) | " + " | ".join(row) + " |")
    acc = [f"{r['pair_accuracy'][n]:.4f}" if n in r["pair_accuracy"] else "—" for n in names]
    lines.append("| /score PairAccuracy | " + " | ".join(acc) + " |")
    for extra in sorted(set(r["pair_accuracy"]) - set(names)):
        lines.append(f"| PairAccuracy, {extra} | {r['pair_accuracy'][extra]:.4f} |")
    lines += difference_rows(r.get("service_minus", {}))
    if "fp_head" in r:
        fp = r["fp_head"]
        lines.append(
            f"| FP head (pretrained), own / another user's state, {fp['pairs']:,.0f} pairs | "
            f"{fp['fp_pair_accuracy']:.4f} / {fp['fp_pair_accuracy_other_user']:.4f} |"
        )
    if "unfamiliar_artists" in r:
        u = r["unfamiliar_artists"]
        label = f"recall@100, artists new to the user ({u['users']:,} users)"
        row = [f"{u['recall@100'][n]:.3f}" if n in u["recall@100"] else "—" for n in names]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    known = r["with_history"]
    for key, part in (("recall@100", "all"), ("new@100", "new")):
        row = [f"{known[key][n]:.3f}" for n in names]
        label = f"recall@100 ({part}), the {known['users']:,} users with a history"
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    if "pairs_by_catalog" in r:
        lines += by_catalog_table(r["pairs_by_catalog"])
    if "cold_calibration" in r:
        lines += ["", calibration_line(r["cold_calibration"])]
    if "realtime" in r:
        rt = r["realtime"]
        lines += [
            "",
            f"Near-real-time, session by session ({rt['sessions']:,} sessions of the first "
            f"users, {rt['pairs']:,} pairs within sessions): `realtime` (the runtime encoder on "
            "the history up to the session) vs `stored` (the bundle's vector):",
            "",
            "| | realtime | stored | MostPop |",
            "|---|---|---|---|",
            "| PairAccuracy | "
            + " | ".join(f"{rt['pair_accuracy'][n]:.4f}" for n in ("realtime", "stored", "MostPop"))
            + " |",
            f"| recall@{rt['k']} of the session's positives | "
            + " | ".join(f"{rt['recall'][n]:.3f}" for n in ("realtime", "stored", "MostPop"))
            + " |",
        ]
    if "oracle" in r["recall"]:
        lines += ["", "Share of the MostPop → oracle gap the service closes (goal ≥ 50%):", ""]
        for part in ("all", "new"):
            lines.append(f"* recall@100 {part}: {gap_closed(r, part, 100):.0%}")
        pa = r["pair_accuracy"]
        closed = (pa["service"] - pa["MostPop"]) / (pa["oracle"] - pa["MostPop"])
        lines.append(f"* PairAccuracy: {closed:.0%}")
    else:
        baselines = [n for n in names if n.startswith(("MostPop", "Trending"))]
        for part in ("all", "new"):
            at = {n: r["recall"][n][part][100] for n in ("service", *baselines)}
            ratios = [f"{at['service'] / at[n]:.2f}x {n}" for n in baselines]
            lines.append(f"* recall@100 {part}: " + ", ".join(ratios) + " (goal ≥ 1.5x MostPop)")
    return "\n".join(lines) + "\n"


def difference_rows(differences: dict[str, dict[str, float]]) -> list[str]:
    """A table row per baseline: the service's PairAccuracy minus its, with the interval."""
    return [
        f"| /score PairAccuracy, service minus {name} (95% interval, users resampled) | "
        f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] |"
        for name, d in differences.items()
    ]


def calibration_line(c: dict[str, Any]) -> str:
    """What placing the cold level on the held-out training days did (cold_calibration)."""
    return (
        f"Cold level placed on the held-out training days' pairs: {c['level_before']:+.3f} -> "
        f"{c['level_after']:+.3f}, {c['unseen_offset']:+.3f} more for an item never seen "
        f"({c['mixed_pairs']:,} of {c['pairs']:,} pairs decided by them; PairAccuracy there "
        f"{c['pair_accuracy_before']:.4f} -> {c['pair_accuracy_after']:.4f})."
    )


def by_catalog_table(groups: dict[str, dict[str, float]]) -> list[str]:
    """The PairAccuracy of each score by which of a pair's items the bundle's catalog knows."""
    methods = [m for m in next(iter(groups.values())) if m != "share"]
    lines = [
        "",
        "PairAccuracy by which of the pair's items the bundle's catalog knows (an unscored item "
        "loses to any scored one):",
        "",
        "| pairs | share | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for name, row in groups.items():
        cells = " | ".join(f"{row[m]:.3f}" for m in methods)
        lines.append(f"| {name} | {row['share']:.1%} | {cells} |")
    return lines


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, part in zip(axes, ("all", "new"), strict=True):
        for name, curves in r["recall"].items():
            ks = [int(k) for k in curves[part]]
            ax.plot(ks, list(curves[part].values()), marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_title(f"/candidates recall@k, {part} items")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall of the next 7 days' positives")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def real_log_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ml100k`` and ``--kuairand``: a real log instead of the simulated world, each with the
    fine-tuning settings of :data:`REAL_LOGS`."""
    tuned = {
        name: f"; it fine-tunes with {' '.join(settings)}" for name, settings in REAL_LOGS.items()
    }
    parser.add_argument(
        "--ml100k",
        action="store_true",
        help="Replay MovieLens-100K (last 20%% of time) instead" + tuned["ml100k"],
    )
    parser.add_argument(
        "--kuairand",
        type=Path,
        default=None,
        help="Replay a KuaiRand log (argus convert kuairand's input; last 20%% of time) instead"
        + tuned["kuairand"],
    )


def arguments() -> argparse.Namespace:
    """The command line, with ``work`` filled in (and created)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="argus-tiny")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="a model setting over the preset's, e.g. d_model=64 (repeatable)",
    )
    parser.add_argument("--hash-rows", type=int, default=131_072)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pretrain-epochs", type=int, default=4, help="0: --pretrain-steps")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--pretrain-batch-size", type=int, default=8)
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="fine-tuning steps (0: --finetune-epochs, but at least 600 steps, `argus "
        "finetune`'s floor; 2,400 steps on --kuairand, whose retrieval space needs many passes "
        "over a small log)",
    )
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--sample", type=int, default=2_000)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument(
        "--realtime-sample", type=int, default=500, help="users of the session replay (0: none)"
    )
    parser.add_argument(
        "--session-reveal",
        type=int,
        default=0,
        help="session replay: the session's first events sent with the history; the rest scored",
    )
    parser.add_argument(
        "--finetune-set",
        action="append",
        default=[],
        help="a fine-tuning setting, e.g. runtime_reveal=3 (repeatable; over a real log's own)",
    )
    parser.add_argument(
        "--sim-set",
        action="append",
        default=[],
        help="a SimConfig setting for the simulated world, e.g. mood_strength=0.3 (repeatable)",
    )
    parser.add_argument(
        "--retrieval-query",
        choices=("state", "pooled", "nip"),
        default="state",
        help="what answers /candidates: the retrieval space's query of the state beside the "
        "pooled history, of the pooled history alone, or the NIP head",
    )
    parser.add_argument(
        "--search",
        choices=("auto", "hnsw", "exact"),
        default="auto",
        help="the bundle's search (argus build --search): the graph, every item, or the faster",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="runs/bench/replay[-ml100k][-pooled|-nip]"
    )
    real_log_arguments(parser)
    args = parser.parse_args()
    suffix = ("-ml100k" if args.ml100k else "-kuairand" if args.kuairand else "") + (
        "" if args.retrieval_query == "state" else f"-{args.retrieval_query}"
    )
    args.work = args.work or ROOT / f"runs/bench/replay{suffix}"
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def main() -> None:
    args = arguments()
    began = time.perf_counter()
    bundle_path = pipeline(args, args.work)
    results = measure(args, args.work, bundle_path)
    results["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results["elapsed_s"] = time.perf_counter() - began
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.work / "results.md").write_text(markdown(results))
    plot(results, args.work / "recall.png")
    print(markdown(results))
    r = results["recall"]
    print(
        f"replayed {results['users']:,} users through the service in {results['http_seconds']:.1f}"
        f" s: /candidates recall@100 {r['service']['all'][100]:.3f} vs MostPop "
        f"{r['MostPop']['all'][100]:.3f} · {results['elapsed_s']:.0f} s -> {args.work}"
    )


if __name__ == "__main__":
    main()
