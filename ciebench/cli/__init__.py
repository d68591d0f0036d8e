"""The `ciebench` command line. Each command group lives in its own module and is added here."""
from __future__ import annotations

import logging

import typer

from ciebench.allocator import reuse_freed_memory
from ciebench.collector import collect_less, skip_final_collections

from . import handling
from .handling import CommandApp

app = CommandApp(
    name="ciebench",
    help="Benchmark and evaluation toolkit for reasoning-driven image editing (CIEBench).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages; show tracebacks of errors."),
          bundle: str = typer.Option("", "--bundle", envvar="CIEBENCH_BUNDLE", help="Use an offline bundle (from `ciebench prefetch --bundle`) for everything; no network.")) -> None:
    handling.VERBOSE = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    reuse_freed_memory()  # this process is ours: large tensors reuse freed memory (ciebench.allocator)
    if bundle:
        from .travel import use_bundle

        use_bundle(bundle)


_OWN_PROCESS = False  # set by `main`: this process is the command's, not a program that calls `app`


def command_started() -> float | None:
    """The `time.perf_counter()` reading at which the command's process started, from which a command
    counts its summary.json timing; None when `app` runs inside another program (a notebook, a test's
    CliRunner), whose start says nothing about the command."""
    from ciebench.metrics.timing import process_started

    return process_started() if _OWN_PROCESS else None


def main() -> None:
    """The `ciebench` command's entry point: the process is the command's, so the garbage collector
    runs on the command's schedule (ciebench.collector) and timings count from the process's start."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    collect_less()
    try:
        app()
    finally:
        skip_final_collections()  # everything the command wrote is closed by now


# One way to register: each module below declares its commands with `@app.command` on this root app,
# or declares its own `CommandApp` group, added here. Heavy dependencies load only when a command runs.
from . import run_commands  # noqa: E402,F401  (evaluate, score, editors, metrics)
from . import leaderboard  # noqa: E402,F401
from . import benchmarks  # noqa: E402,F401
from . import travel  # noqa: E402,F401  (verify, prefetch, doctor, export)
from . import baselines, data, judge  # noqa: E402  (command groups)

app.add_typer(data.app, name="data")
app.add_typer(judge.app, name="judge")
app.add_typer(baselines.app, name="baselines")
