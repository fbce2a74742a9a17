"""The ``argus`` console script: one subcommand per stage, each defined in its stage's package."""

from __future__ import annotations

import typer

import argus.demo
import index.cli
import model.cli
import service.cli

app = typer.Typer(
    name="argus",
    help="ARGUS recommender: simulate or convert events, train, export, build, publish, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model.cli.register(app)
index.cli.register(app)
service.cli.register(app)
argus.demo.register(app)
