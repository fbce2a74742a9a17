"""``argus`` subcommands of the offline data stage: simulate, convert, validate."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def fails_cleanly(command: F) -> F:
    """Turn the errors a user can fix (bad input, missing files) into one red line and exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError) as error:
            typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


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
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
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
    """List the model size presets with transformer (embeddings excluded) and total parameters."""
    try:
        import torch

        from model.argus import PRESETS, Argus, count_parameters, preset
    except ImportError:
        typer.secho(
            "this command needs the train extra: pip install '.[train]'", err=True, fg="red"
        )
        raise typer.Exit(2) from None

    typer.echo(f"{'preset':<12} {'transformer':>14} {'total':>14}")
    for name in PRESETS:
        with torch.device("meta"):  # no memory is allocated, even for argus-1b
            model = Argus(preset(name))
        transformer, total = count_parameters(model, transformer_only=True), count_parameters(model)
        typer.echo(f"{name:<12} {transformer:>14,} {total:>14,}")


convert = typer.Typer(help="Convert a public data set to the event schema.", no_args_is_help=True)


@convert.command("ml100k")
@fails_cleanly
def convert_ml100k(
    src: Annotated[Path, typer.Argument(help="The MovieLens-100K directory (holding u.data).")],
    out: Annotated[Path, typer.Argument(help="Output directory for events.parquet.")],
) -> None:
    """MovieLens-100K: every rating an organic event; liked = rating >= 4, disliked <= 2."""
    from model.data.convert import convert_ml100k as run

    typer.echo(run(src, out).line("ml-100k", out))


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


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the ``argus`` app."""
    app.command()(simulate)
    app.command()(validate)
    app.command()(presets)
    app.add_typer(convert, name="convert")
