"""What every ``argus`` subcommand shares: clean failures, the missing-extra message and the
``--quiet`` option. It imports typer only, so every layer (model, index, service) may use it
without depending on another."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

Quiet = Annotated[bool, typer.Option(help="No progress bar.")]


def fails_cleanly(command: F) -> F:
    """Turn the errors a user can fix (bad input, missing files) into one red line and exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError, LookupError, ConnectionError) as error:
            typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def needs_extra(extra: str, module: str) -> None:
    """Exit with the exact install command when ``module`` (from ``extra``) is missing."""
    if importlib.util.find_spec(module) is None:
        typer.secho(
            f"this command needs the {extra} extra: pip install '.[{extra}]'", err=True, fg="red"
        )
        raise typer.Exit(2)
