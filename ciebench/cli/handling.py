"""The one place where the command line turns errors into messages and exit codes.

Every command is registered through `CommandApp`, whose commands run inside `handle_errors`:

- a `ciebench.errors.CiebenchError` (every error a user can cause) prints one line on stderr,
  `error: <message> (<hint>)`, and exits with its `exit_code`;
- a full disk or quota (ENOSPC, EDQUOT) is an `EnvironmentProblem` (exit 4), whatever raised it;
- so is a path the machine will not let ciebench read or write: a `PermissionError`, or any other
  `OSError` that names its file (a read-only or immutable `--out`, a folder that vanished), one line
  naming the path;
- Ctrl-C exits 130;
- with `-v` the traceback follows the line. Anything else is a bug in ciebench and keeps its traceback.
"""
from __future__ import annotations

import functools
import sys
import traceback
from typing import Any, Callable

import click
import typer

from ciebench.errors import DISK_FULL_ERRNOS, CiebenchError, EnvironmentProblem, ExitCode

VERBOSE = False  # set by the root callback's -v


def disk_full(exc: OSError) -> EnvironmentProblem:
    where = f" while writing {exc.filename}" if exc.filename else ""
    problem = EnvironmentProblem(f"no space left on the device{where} ({exc.strerror or exc})",
                                 hint="free disk space, or choose an --out on another disk, then rerun the same "
                                      "command: finished work is kept")
    problem.__cause__ = exc
    return problem


def path_problem(exc: OSError) -> EnvironmentProblem | None:
    """An OSError the machine caused, as one line naming the path: a full disk, a permission refused,
    or any error that names its file; None for an OSError without a path (a bug, or an error the
    caller knows better)."""
    if exc.errno in DISK_FULL_ERRNOS:
        return disk_full(exc)
    if exc.filename is None and not isinstance(exc, PermissionError):
        return None
    where = "" if exc.filename is None else f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "") + ": "
    problem = EnvironmentProblem(f"{where}{(exc.strerror or str(exc)).lower()}",
                                 hint="check that the path exists and that you may read and write it (not a "
                                      "read-only or immutable folder), or choose another path")
    problem.__cause__ = exc
    return problem


def fail(exc: CiebenchError) -> None:
    """Print `exc` as one line on stderr (traceback under -v) and exit with its code."""
    if VERBOSE:
        traceback.print_exception(exc, file=sys.stderr)
    typer.echo(f"error: {exc.one_line()}", err=True)
    raise typer.Exit(int(exc.exit_code))


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except CiebenchError as exc:
            fail(exc)
        except OSError as exc:
            problem = path_problem(exc)
            if problem is None:
                raise
            fail(problem)
        except KeyboardInterrupt:
            typer.echo("\ninterrupted", err=True)
            raise typer.Exit(int(ExitCode.INTERRUPTED))

    return wrapper


class CommandApp(typer.Typer):
    """A `typer.Typer` whose every command, and its callback, runs inside `handle_errors`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return _handled(super().command(*args, **kwargs))

    def callback(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return _handled(super().callback(*args, **kwargs))


def _handled(register: Callable[[Callable[..., Any]], Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        register(handle_errors(fn))
        return fn

    return decorator
