"""The `ciebench` command line. Each command group lives in its own module and is added here."""
from __future__ import annotations

import logging

import typer

from .data import app as data_app

app = typer.Typer(
    name="ciebench",
    help="Benchmark and evaluation toolkit for reasoning-driven image editing (CIEBench).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    app()


# Command modules register on `app`; each imports its heavy dependencies only when its command runs.
from . import run_commands  # noqa: E402,F401
from . import judge  # noqa: E402,F401  (`ciebench judge ...`)
