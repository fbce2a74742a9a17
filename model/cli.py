"""``argus`` subcommands of the offline stage: data (simulate, convert, validate) and model
(presets, pretrain, finetune, evaluate, export)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from model.config import FINETUNE_LR, PRETRAIN_LR
from model.console import Quiet, fails_cleanly, needs_extra
from model.contract import DEFAULT_LAG, DEFAULT_SESSION_GAP


@fails_cleanly
def simulate(
    out: Annotated[
        Path, typer.Option(help="Output directory: events.parquet, truth.npz, simulation.json.")
    ],
    users: Annotated[int, typer.Option(help="Number of users.")] = 1_000,
    items: Annotated[int, typer.Option(help="Number of items (tracks).")] = 5_000,
    days: Annotated[int, typer.Option(help="Number of simulated days.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override any SimConfig field, e.g. --set organic_share=0.3 (repeatable)."
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Simulate a music-streaming service's event log, with its ground truth."""
    from model.config import apply_overrides
    from model.data.simulate import SimConfig, Simulator

    config = apply_overrides(
        SimConfig(n_users=users, n_items=items, n_days=days, seed=seed), set_ or []
    )
    summary = Simulator(config).run(out, progress=not quiet)
    typer.echo(summary.line())


@fails_cleanly
def validate(
    path: Annotated[Path, typer.Argument(help="An events Parquet file or a directory of them.")],
) -> None:
    """Check that a data set follows the event schema; name the first problem if not."""
    from model.data.events import validate_events

    typer.echo(f"{path}: {validate_events(path):,} valid events")


def presets() -> None:
    """List the model size presets: transformer (the blocks), item embedding table and total
    parameters, and the table's shape."""
    needs_extra("train", "torch")
    import torch

    from model.argus import (
        PRESETS,
        Argus,
        count_embedding_parameters,
        count_parameters,
        preset,
    )

    typer.echo(
        f"{'preset':<12} {'d_model':>8} {'transformer':>14} {'embedding':>12} {'table':>12} "
        f"{'total':>14}"
    )
    for name in PRESETS:
        config = preset(name)
        with torch.device("meta"):  # no memory is allocated, even for argus-1b
            model = Argus(config)
        transformer = count_parameters(model, transformer_only=True)
        embedding, total = count_embedding_parameters(model), count_parameters(model)
        table = f"{config.hash_rows}x{config.embedding_dim}"
        typer.echo(
            f"{name:<12} {config.d_model:>8} {transformer:>14,} {embedding:>12,} {table:>12} "
            f"{total:>14,}"
        )


# Options shared by `pretrain` and `finetune`.
Data = Annotated[Path, typer.Option(help="Events directory or Parquet file.")]
Out = Annotated[Path, typer.Option(help="Run directory: checkpoint, metrics, curve PNG.")]
MaxLen = Annotated[int, typer.Option(help="Events per history chunk; 0 keeps the model's.")]
BatchSize = Annotated[int, typer.Option(help="History chunks per step.")]
MaxSteps = Annotated[int, typer.Option(help="Stop after this many steps (0: use --epochs).")]
Epochs = Annotated[int, typer.Option(help="Passes over the training data.")]
MinSteps = Annotated[
    int, typer.Option(help="With --max-steps 0, train at least this many steps (more epochs).")
]
Lr = Annotated[float, typer.Option(help="Peak learning rate (AdamW).")]
TestDays = Annotated[
    float, typer.Option(help="Hold out the last N days for `argus evaluate` (0: none).")
]
TestFraction = Annotated[float, typer.Option(help="Or hold out this fraction of the time range.")]
Seed = Annotated[int, typer.Option(help="Random seed; same seed, same run.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda:N.")]
Resume = Annotated[bool, typer.Option(help="Continue the checkpoint in --out.")]
Settings = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a training setting, e.g. --set warmup_steps=50."),
]
ModelSettings = Annotated[
    list[str] | None,
    typer.Option("--model", help="Override a model setting, e.g. --model dropout=0.1."),
]


def _train(
    run: Callable[..., Any], config: Any, set_: list[str] | None, *, quiet: bool, resume: bool
) -> None:
    """Apply ``--set`` overrides, run the stage (which checks the model config before reading any
    data) and report its summary."""
    from model.config import apply_overrides

    summary = run(apply_overrides(config, set_ or []), progress=not quiet, resume=resume)
    typer.echo(summary.line())
    if summary.interrupted:
        raise typer.Exit(75)  # EX_TEMPFAIL: rerun with --resume


def dry_run(config: Any, ranks: int) -> None:
    """Print the per-rank memory of ``config``'s training on ``ranks`` ranks (nothing is read,
    nothing allocated: the model is built on the ``meta`` device)."""
    import torch

    from model.argus import Argus, count_parameters
    from model.runtime import MemoryPlan
    from model.trainer import fsdp_units, uses_fsdp

    model_config = config.model_config()
    with torch.device("meta"):
        model = Argus(model_config)
    total = count_parameters(model)
    plan = MemoryPlan(
        parameters=total,
        largest_unit=max(count_parameters(unit) for unit in fsdp_units(model)),
        ranks=ranks,
        fsdp=uses_fsdp(config, total, ranks),
        tokens=config.batch_size * model_config.max_len,
        layers=model_config.n_layers,
        width=model_config.d_model,
        negatives=model_config.n_uniform_negatives,
    )
    typer.echo(
        f"{config.preset}: {total:,} parameters, max_len {model_config.max_len}, "
        f"batch {config.batch_size}"
    )
    typer.echo(plan.table())


@fails_cleanly
def pretrain(
    data: Annotated[
        Path | None, typer.Option(help="Events directory or Parquet file (not for --dry-run).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory: checkpoint, metrics, curve PNG.")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Model size preset (see `argus presets`).")
    ] = "argus-3m",
    objective: Annotated[
        str, typer.Option(help="argus (NIP + FP) or sasrec (the positives-only baseline).")
    ] = "argus",
    max_len: MaxLen = 0,
    batch_size: BatchSize = 32,
    max_steps: MaxSteps = 0,
    # 4 epochs: against 2, the offset probe rose from 0.19 to 0.23 and /score from 0.6141 to
    # 0.6179 at full size (7M events), and both rose at demo size too
    epochs: Epochs = 4,
    min_steps: MinSteps = 0,
    lr: Lr = PRETRAIN_LR,
    test_days: TestDays = 7.0,
    test_fraction: TestFraction = 0.0,
    seed: Seed = 0,
    device: Device = "auto",
    resume: Resume = False,
    set_: Settings = None,
    model: ModelSettings = None,
    dry_run_ranks: Annotated[
        int,
        typer.Option(
            "--dry-run",
            help="Print the per-rank memory of this run on N ranks (bf16 activations, as on "
            "CUDA) and exit; no data is read.",
        ),
    ] = 0,
    quiet: Quiet = False,
) -> None:
    """Pretrain ARGUS (next-item + feedback prediction) or the SASRec baseline."""
    needs_extra("train", "torch")
    from model.config import apply_overrides
    from model.train import PretrainConfig
    from model.train import pretrain as run

    if not dry_run_ranks and (data is None or out is None):
        raise ValueError("--data and --out are required (unless --dry-run N)")
    config = PretrainConfig(
        data=str(data),
        out=str(out),
        preset=preset,
        objective=objective,
        max_len=max_len,
        batch_size=batch_size,
        max_steps=max_steps,
        epochs=epochs,
        min_steps=min_steps,
        lr=lr,
        test_days=test_days,
        test_fraction=test_fraction,
        seed=seed,
        device=device,
        model=tuple(model or ()),
    )
    if dry_run_ranks:
        dry_run(apply_overrides(config, set_ or []), dry_run_ranks)
        return
    _train(run, config, set_, quiet=quiet, resume=resume)


# fine-tuning's own options
Init = Annotated[
    Path | None,
    typer.Option(help="Pretrained run directory or checkpoint (default: from scratch)."),
]
Preset = Annotated[str, typer.Option(help="Size preset when training from scratch (no --init).")]
Lag = Annotated[
    str,
    typer.Option(
        help="The state the service would serve: 1d scores every impression of a UTC day "
        "with the user's state before 00:00 (the daily bundle); 0 scores every impression "
        "of a session with the state before its first impression (the real-time encoder)."
    ),
]
RuntimeLag = Annotated[
    str,
    typer.Option(
        help="A second user head for the service's runtime encoder (realtime and history "
        "sources), fine-tuned at this lag on the same impressions and item towers; '' for "
        "none (the runtime encoder then uses the --lag head)."
    ),
]
Group = Annotated[
    str,
    typer.Option(
        help="Comparison groups: auto (the lag bucket, or sessions at lag 0), lag, "
        "session, or a bucket width such as 6h; never wider than one shared state."
    ),
]
SnapshotDelay = Annotated[
    str, typer.Option(help="The daily snapshot is taken this long before 00:00 UTC.")
]
SessionGap = Annotated[str, typer.Option(help="Silence that starts a new session (lag 0 groups).")]
PairWeights = Annotated[
    str,
    typer.Option(
        help="Grade-pair weights over the default (grade distance), e.g. "
        "'like>skip=4,full>partial=0'. Grades: dislike skip partial full like."
    ),
]
MaxImpressions = Annotated[
    int, typer.Option(help="Impressions per chunk, step and user head (random subset; 0: all).")
]
MinHistory = Annotated[
    int, typer.Option(help="Events a state must have seen for its impressions to count.")
]
TowerDim = Annotated[int, typer.Option(help="Width of u and v (0: d_model).")]


@fails_cleanly
def finetune(
    data: Data,
    out: Out,
    init: Init = None,
    preset: Preset = "argus-3m",
    lag: Lag = DEFAULT_LAG,
    runtime_lag: RuntimeLag = "0",
    group: Group = "auto",
    snapshot_delay: SnapshotDelay = "0",
    session_gap: SessionGap = DEFAULT_SESSION_GAP,
    pair_weights: PairWeights = "",
    max_impressions: MaxImpressions = 256,
    min_history: MinHistory = 1,
    tower_dim: TowerDim = 0,
    max_len: MaxLen = 0,
    batch_size: BatchSize = 32,
    max_steps: MaxSteps = 0,
    epochs: Epochs = 2,
    min_steps: MinSteps = 600,
    lr: Lr = FINETUNE_LR,
    test_days: TestDays = 7.0,
    test_fraction: TestFraction = 0.0,
    seed: Seed = 0,
    device: Device = "auto",
    resume: Resume = False,
    set_: Settings = None,
    model: ModelSettings = None,
    quiet: Quiet = False,
) -> None:
    """Fine-tune two towers (u = P h, v = MLP(e_item)) with a pairwise loss on impressions."""
    needs_extra("train", "torch")
    from model.finetune import FinetuneConfig
    from model.finetune import finetune as run

    config = FinetuneConfig(
        data=str(data),
        out=str(out),
        init=str(init or ""),
        preset=preset,
        lag=lag,
        runtime_lag=runtime_lag,
        group=group,
        snapshot_delay=snapshot_delay,
        session_gap=session_gap,
        pair_weights=pair_weights,
        max_impressions=max_impressions,
        min_history=min_history,
        tower_dim=tower_dim,
        max_len=max_len,
        batch_size=batch_size,
        max_steps=max_steps,
        epochs=epochs,
        min_steps=min_steps,
        lr=lr,
        test_days=test_days,
        test_fraction=test_fraction,
        seed=seed,
        device=device,
        model=tuple(model or ()),
    )
    _train(run, config, set_, quiet=quiet, resume=resume)


@fails_cleanly
def export(
    checkpoint: Annotated[Path, typer.Option(help="Fine-tuned run directory or checkpoint.")],
    data: Data,
    out: Annotated[Path, typer.Option(help="New directory for the encoder and vector files.")],
    batch_size: Annotated[int, typer.Option(help="Histories per forward pass.")] = 64,
    until: Annotated[
        str,
        typer.Option(
            help="Use only events before this: 'all' (every event), 'trained' (the checkpoint's "
            "training cut-off: a bundle as of the start of its test window) or Unix seconds."
        ),
    ] = "all",
    device: Device = "auto",
    ray: Annotated[
        str | None,
        typer.Option(
            help="Encode the users on Ray Data: 'local' (a local instance), 'auto' (this "
            "machine's cluster) or a cluster address; the files are the same."
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """The ONNX user encoder, item vectors and every user's vector from their latest events."""
    needs_extra("train", "torch")
    if ray is not None:
        needs_extra("distributed", "ray")
    from model.export import export as run

    summary = run(
        checkpoint,
        data,
        out,
        batch_size=batch_size,
        until=until,
        device=device,
        progress=not quiet,
        ray_address=ray,
    )
    typer.echo(summary.line())


@fails_cleanly
def evaluate(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Run directories or checkpoint files (one or more).")
    ],
    data: Annotated[Path, typer.Option(help="Events directory or Parquet file.")],
    out: Annotated[Path, typer.Option(help="Directory for eval.json and eval.md.")],
    test_days: Annotated[
        float | None, typer.Option(help="Test window: last N days (default: as pretrained).")
    ] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="Test window: last fraction of the time range.")
    ] = None,
    exclude_seen: Annotated[
        bool, typer.Option(help="Drop each user's earlier items from the ranking (MovieLens).")
    ] = False,
    max_users: Annotated[
        int, typer.Option(help="Evaluate a seeded sample of this many test users (0: all).")
    ] = 0,
    lag: Annotated[
        str | None, typer.Option(help="PairAccuracy lag (default: as fine-tuned).")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="PairAccuracy groups (default: as fine-tuned).")
    ] = None,
    pair_weights: Annotated[
        str | None, typer.Option(help="PairAccuracy grade-pair weights (default: as fine-tuned).")
    ] = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Test-window losses, Recall/NDCG@10,100 with MostPop, PairAccuracy of fine-tuned models."""
    needs_extra("train", "torch")
    from model.evaluate import EvalConfig, markdown_table
    from model.evaluate import evaluate as run

    report = run(
        checkpoints,
        data,
        out,
        test_days=test_days,
        test_fraction=test_fraction,
        cfg=EvalConfig(
            exclude_seen=exclude_seen,
            max_users=max_users,
            lag=lag,
            group=group,
            pair_weights=pair_weights,
        ),
        device=device,
        progress=not quiet,
    )
    typer.echo(markdown_table(report), nl=False)
    typer.echo(f"-> {out / 'eval.json'}, {out / 'eval.md'}")


convert = typer.Typer(help="Convert a public data set to the event schema.", no_args_is_help=True)


@convert.command("ml100k")
@fails_cleanly
def convert_ml100k(
    src: Annotated[
        Path,
        typer.Argument(
            help="MovieLens-100K: u.data, ml-100k.inter or their directory (argus fetch ml100k)."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Output directory for events.parquet.")],
) -> None:
    """MovieLens-100K: every rating an organic event; liked = rating >= 4, disliked <= 2."""
    from model.data.convert import convert_ml100k as run

    typer.echo(run(src, out).line("ml-100k", out))


@convert.command("kuairand")
@fails_cleanly
def convert_kuairand(
    src: Annotated[
        Path,
        typer.Argument(
            help="A KuaiRand directory (log_standard_*.csv, log_random_*.csv) or one CSV/TSV "
            "file of its rows."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Output directory for events.parquet.")],
) -> None:
    """KuaiRand: every row a recommended impression with its like/hate and play ratio."""
    from model.data.convert import convert_kuairand as run

    typer.echo(run(src, out).line("kuairand", out))


@convert.command("table")
@fails_cleanly
def convert_table(
    src: Annotated[Path, typer.Argument(help="A CSV, TSV or Parquet log, or a directory of them.")],
    out: Annotated[Path, typer.Argument(help="Output directory for events.parquet.")],
    map_: Annotated[
        list[str],
        typer.Option(
            "--map",
            help="TARGET=EXPRESSION, repeatable: user_id=uid, item_id=track:str, "
            "timestamp=ts:ms (s, ms, us, iso), source=1 or a column, played_ratio=play/length, "
            "liked=is_like or rating>=4, disliked=…, artist_id=….",
        ),
    ],
) -> None:
    """Your own log: map its columns onto the event schema (ids hashed when they are text)."""
    from model.data.table import convert_table as run

    typer.echo(run(src, out, map_).line(out))


@convert.command("yambda")
@fails_cleanly
def convert_yambda(
    src: Annotated[
        Path,
        typer.Argument(
            help="A Yambda flat directory (listens/likes/dislikes) or multi_event.parquet."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Output directory for events.parquet.")],
    match_window: Annotated[
        int,
        typer.Option(help="Seconds after a listen's end within which a like still belongs to it."),
    ] = 300,
    artist_mapping: Annotated[
        Path | None,
        typer.Option(help="artist_item_mapping.parquet (default: the one in SRC, if any)."),
    ] = None,
) -> None:
    """Yandex Yambda: listens with likes/dislikes attached to their listen."""
    from model.data.convert import convert_yambda as run

    typer.echo(
        run(src, out, match_window=match_window, artist_mapping=artist_mapping).line("yambda", out)
    )


fetch = typer.Typer(help="Download a public data set into the cache.", no_args_is_help=True)


@fetch.command("ml100k")
@fails_cleanly
def fetch_ml100k(
    cache: Annotated[
        Path | None,
        typer.Option(help="Cache directory (default: $ARGUS_CACHE or ~/.cache/argus)."),
    ] = None,
) -> None:
    """MovieLens-100K from RecBole 1.2.1's wheel on PyPI (hash-checked); prints its directory."""
    from model.data.fetch import ml100k

    typer.echo(ml100k(cache))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the ``argus`` app."""
    app.command()(simulate)
    app.command()(validate)
    app.command()(presets)
    app.command()(pretrain)
    app.command()(finetune)
    app.command()(evaluate)
    app.command()(export)
    app.add_typer(convert, name="convert")
    app.add_typer(fetch, name="fetch")
