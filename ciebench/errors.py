"""The errors a user can cause, and the exit code each one means: the single place both are defined.

Every command maps a `CiebenchError` to its `exit_code` and prints one line (details under `-v`);
anything else is a bug in ciebench and keeps its traceback.
"""
from __future__ import annotations

import errno
from enum import IntEnum

# A full disk or quota: the machine's problem (exit 4) whichever code hit it, never a bad dataset.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class ExitCode(IntEnum):
    OK = 0
    # The command ran, but its result does not meet what was asked: no sample succeeded, a requested
    # metric has no value at all, coverage below --min-coverage, validation found errors.
    INCOMPLETE = 1
    # Bad command line or configuration: unknown editor/metric/protocol, malformed config file.
    USAGE = 2
    # The dataset or predictions cannot be used: unknown spec, unreadable annotations, empty dataset.
    DATA = 3
    # The machine cannot do it: disk full, model or asset missing offline, endpoint unreachable.
    ENVIRONMENT = 4
    # The output folder is not ciebench's own output, or another process is writing it.
    OUTPUT_CONFLICT = 5
    # A pinned asset (dataset release, prompt file, checkpoint) failed its sha256 check.
    INTEGRITY = 6
    INTERRUPTED = 130


def did_you_mean(name: object, choices) -> str:
    """" Did you mean 'x'?" for the closest of `choices`, or "" when none is close (for error messages
    about an unknown name)."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def lookup(table, name: str, what: str, error: type[Exception]):
    """`table[name]`, or `error` naming the unknown `what`, the known names and the closest one."""
    try:
        return table[name]
    except KeyError:
        raise error(f"unknown {what} {name!r}; known: {', '.join(table)}.{did_you_mean(name, table)}") from None


class CiebenchError(Exception):
    """Base of every user-caused error. `hint` says how to proceed; it is printed after the message."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"{text} ({self.hint})" if self.hint else text


class UsageError(CiebenchError):
    exit_code = ExitCode.USAGE


class DataError(CiebenchError):
    exit_code = ExitCode.DATA


class EnvironmentProblem(CiebenchError):
    exit_code = ExitCode.ENVIRONMENT


class OutputConflict(CiebenchError):
    exit_code = ExitCode.OUTPUT_CONFLICT


class IntegrityError(CiebenchError):
    exit_code = ExitCode.INTEGRITY


class IncompleteResult(CiebenchError):
    exit_code = ExitCode.INCOMPLETE
