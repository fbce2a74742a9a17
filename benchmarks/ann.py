"""HNSW vs exact search: build time, memory per vector, single-thread QPS at recall@100 >= 0.95.

The catalog is the simulator's: ``--items`` item latents, clustered by genre and artist with
norms that vary (as trained item towers do), not isotropic noise; the queries are simulated
users' latents. Two runs by default: the simulator's 16 taste factors lifted to ``--dim`` by a
fixed linear map (what a ``--dim``-wide tower trained on such data represents: vectors of low
intrinsic dimension) and a simulator with ``--dim`` factors (every dimension independent noise
within an artist: the hard case). ``ef_search`` is tuned exactly as ``argus build`` does, on
``--tune-queries`` users; QPS and recall are then measured on *other* users, one query at a time
on one thread, for HNSW and for numpy brute force (BLAS pinned to one thread) on the same
queries. Also measures the recall/QPS curve over the ``ef`` values tuning tried.

    .venv/bin/python -m benchmarks.ann [--items 1000000] [--dim 128]

Writes ``runs/bench/index.json``, ``.md`` and ``index.png``.
"""

from __future__ import annotations

import os

# One BLAS thread: the exact baseline is single-threaded like the HNSW queries (set before numpy).
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.hnsw import ItemIndex, exact_top_k, recall, tune_ef
from model.data.simulate import SimConfig, make_catalog, make_users

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hnsw_qps(index: ItemIndex, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    rows = np.empty((len(queries), k), dtype=np.int64)
    began = time.perf_counter()
    for i in range(len(queries)):
        rows[i] = index.knn(queries[i : i + 1], k, threads=1)[0][0]
    return len(queries) / (time.perf_counter() - began), rows


def catalog_vectors(
    n_items: int, dim: int, latent_dim: int, genres: int, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Simulator item latents and user (query) latents in ``latent_dim`` dimensions, mapped to
    ``dim`` by a fixed random linear map when smaller (what a ``dim``-wide tower trained on that
    simulator represents: a ``latent_dim``-factor taste space)."""
    cfg = SimConfig(n_items=n_items, latent_dim=latent_dim, n_genres=genres, seed=seed)
    rng = np.random.default_rng(seed)
    catalog = make_catalog(cfg, rng)
    items, users = catalog.latent, make_users(cfg, rng, n_queries)
    queries = users.latent(catalog.genre_centers, 0.5)
    if latent_dim < dim:
        lift = rng.standard_normal((latent_dim, dim)) / np.sqrt(dim)
        items, queries = items @ lift, queries @ lift
    return np.ascontiguousarray(items, np.float32), np.ascontiguousarray(queries, np.float32)


def run_case(args: argparse.Namespace, latent_dim: int) -> dict:
    began = time.perf_counter()
    items, queries = catalog_vectors(
        args.items, args.dim, latent_dim, args.genres, args.tune_queries + args.queries, args.seed
    )
    tune, held_out = queries[: args.tune_queries], queries[args.tune_queries :]
    norms = np.linalg.norm(items, axis=1)
    name = f"simulator latents, {latent_dim} factors" + (
        f" -> {args.dim} dims" if latent_dim < args.dim else ""
    )
    print(f"{name}: {args.items:,} x {args.dim}, item norms {norms.min():.2f}..{norms.max():.2f}")

    before = rss_bytes()
    t0 = time.perf_counter()
    index = ItemIndex.build(items, m=args.m, ef_construction=args.ef_construction, seed=args.seed)
    build_s = time.perf_counter() - t0
    rss_per_vector = (rss_bytes() - before) / args.items
    with tempfile.TemporaryDirectory() as tmp:
        index.save(f"{tmp}/items.hnsw")
        file_per_vector = Path(f"{tmp}/items.hnsw").stat().st_size / args.items
    print(f"built in {build_s:.1f} s ({args.items / build_s:,.0f} items/s, {os.cpu_count()} cores)")

    t0 = time.perf_counter()
    tuning = tune_ef(index, items, tune, k=args.k, target=args.target)
    print(
        f"ef_search {tuning.ef_search}: recall@{args.k} {tuning.recall:.4f} "
        f"({time.perf_counter() - t0:.1f} s)"
    )

    truth = exact_top_k(held_out, items, args.k)
    ladder = sorted({ef for ef in tuning.tried if ef & (ef - 1) == 0 or ef % args.k == 0})
    curve = []
    for ef in tqdm(ladder, desc="recall/QPS curve"):
        index.set_ef(ef)
        qps, rows = hnsw_qps(index, held_out[: args.curve_queries], args.k)
        curve.append({"ef": ef, "recall": recall(rows, truth[: args.curve_queries]), "qps": qps})
    index.set_ef(tuning.ef_search)
    hnsw_qps_value, rows = hnsw_qps(index, held_out, args.k)
    hnsw_recall = recall(rows, truth)

    n_exact = min(args.exact_queries, len(held_out))
    exact_rows = np.empty((n_exact, args.k), dtype=np.int64)
    t0 = time.perf_counter()
    for i in tqdm(range(n_exact), desc="exact (1 thread)"):
        exact_rows[i] = exact_top_k(held_out[i : i + 1], items, args.k)[0]
    exact_qps = n_exact / (time.perf_counter() - t0)
    assert recall(exact_rows, truth[:n_exact]) > 0.999  # the baseline is exact
    return {
        "vectors": name,
        "latent_dim": latent_dim,
        "build_s": build_s,
        "build_items_per_s": args.items / build_s,
        "index_file_bytes_per_vector": file_per_vector,
        "rss_bytes_per_vector": rss_per_vector,
        "ef_search": tuning.ef_search,
        "tuning_recall": tuning.recall,
        "hnsw_recall": hnsw_recall,
        "hnsw_qps_1_thread": hnsw_qps_value,
        "exact_qps_1_thread": exact_qps,
        "speedup": hnsw_qps_value / exact_qps,
        "curve": curve,
        "elapsed_s": time.perf_counter() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument(
        "--latent-dims", default="16,128", help="simulator factor counts, one run each"
    )
    parser.add_argument("--genres", type=int, default=200)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--tune-queries", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=1_000, help="held-out HNSW queries")
    parser.add_argument("--curve-queries", type=int, default=300)
    parser.add_argument("--exact-queries", type=int, default=100, help="of those, brute-forced")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args()

    cases = [run_case(args, int(d)) for d in args.latent_dims.split(",")]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "items": args.items,
        "dim": args.dim,
        "space": "mips",
        "M": args.m,
        "ef_construction": args.ef_construction,
        "k": args.k,
        "target_recall": args.target,
        "held_out_queries": args.queries,
        "exact_queries": min(args.exact_queries, args.queries),
        "raw_vector_bytes": 4 * args.dim,
        "goal_speedup": 50.0,
        "cases": cases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "index.md").write_text(markdown(result))
    plot(result, args.out / "index.png")
    print(markdown(result))
    for c in cases:
        print(
            f"{c['vectors']}: HNSW {c['hnsw_qps_1_thread']:,.0f} QPS at recall@{args.k} "
            f"{c['hnsw_recall']:.3f} vs exact {c['exact_qps_1_thread']:,.1f} QPS: "
            f"{c['speedup']:.0f}x (goal 50x), built in {c['build_s']:.0f} s"
        )


def markdown(r: dict) -> str:
    cases = r["cases"]
    lines = [
        f"HNSW ({r['space']}, M={r['M']}, ef_construction={r['ef_construction']}) over "
        f"{r['items']:,} x {r['dim']} item vectors; queries are simulated users, {r['machine']}.",
        "",
        "| figure | " + " | ".join(c["vectors"] for c in cases) + " |",
        "|---|" + "---|" * len(cases),
    ]

    def row(label: str, fmt: object) -> None:
        lines.append(f"| {label} | " + " | ".join(fmt(c) for c in cases) + " |")  # type: ignore[operator]

    row(
        "build time (all cores)",
        lambda c: f"{c['build_s']:.1f} s ({c['build_items_per_s']:,.0f}/s)",
    )
    row(
        f"index file per vector (raw {r['raw_vector_bytes']} B)",
        lambda c: f"{c['index_file_bytes_per_vector']:.0f} B",
    )
    row("resident memory per vector", lambda c: f"{c['rss_bytes_per_vector']:.0f} B")
    row(f"tuned ef_search (recall@{r['k']} >= {r['target_recall']})", lambda c: str(c["ef_search"]))
    row(
        f"recall@{r['k']}, {r['held_out_queries']:,} held-out users",
        lambda c: f"{c['hnsw_recall']:.4f}",
    )
    row("HNSW QPS, 1 thread", lambda c: f"{c['hnsw_qps_1_thread']:,.0f}")
    row(
        f"exact numpy QPS, 1 thread ({r['exact_queries']} queries)",
        lambda c: f"{c['exact_qps_1_thread']:,.1f}",
    )
    row(f"**speed-up** (goal {r['goal_speedup']:.0f}x)", lambda c: f"**{c['speedup']:.0f}x**")
    for c in cases:
        lines += [
            "",
            f"{c['vectors']}:",
            "",
            "| ef | recall@k | QPS (1 thread) | x exact |",
            "|---|---|---|---|",
        ]
        exact = c["exact_qps_1_thread"]
        lines += [
            f"| {p['ef']} | {p['recall']:.4f} | {p['qps']:,.0f} | {p['qps'] / exact:.0f} |"
            for p in c["curve"]
        ]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for c, color in zip(r["cases"], ("C0", "C1", "C2"), strict=False):
        curve = c["curve"]
        ax.plot(
            [p["recall"] for p in curve],
            [p["qps"] for p in curve],
            "o-",
            color=color,
            label=f"HNSW, {c['vectors']}",
        )
        for p in curve:
            ax.annotate(f"ef={p['ef']}", (p["recall"], p["qps"]), fontsize=6)
        ax.axhline(c["exact_qps_1_thread"], color=color, ls="--", lw=0.8)
    ax.axvline(r["target_recall"], color="red", ls=":", label="target recall")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{r['k']}")
    ax.set_ylabel("queries/s, one thread (dashed: exact numpy)")
    ax.set_title(f"{r['items']:,} x {r['dim']} items: HNSW vs exact")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
