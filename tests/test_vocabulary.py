"""Issue 17 §4: one documented vocabulary of row statuses, errors and their exit codes."""
from __future__ import annotations

import re
from pathlib import Path

from ciebench.status import Status, VerdictStatus

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _documented_statuses() -> list[str]:
    start = README.index("Row statuses: the `status` column")
    table = README[start:README.index("\n\n", README.index("| status | meaning |", start))]
    return re.findall(r"^\| `([a-z_]+)` \|", table, re.M)


def test_every_row_status_is_documented_once_and_nothing_else():
    documented = _documented_statuses()
    assert len(documented) == len(set(documented))
    assert set(documented) == {s.value for s in Status}


def test_judged_metric_statuses_are_documented():
    start = README.index("A judged metric's own column")
    paragraph = README[start:README.index("\n\n", start)]
    assert set(re.findall(r"`([a-z_]+)`", paragraph)) >= {s.value for s in VerdictStatus}


def _groups(app):
    for group in app.registered_groups:
        yield group
        yield from _groups(group.typer_instance)


def test_every_command_group_maps_errors_through_the_one_table():
    from ciebench.cli import app
    from ciebench.cli.handling import CommandApp

    assert isinstance(app, CommandApp)
    assert {g.name for g in _groups(app)} >= {"data", "judge", "baselines"}
    for group in _groups(app):
        assert isinstance(group.typer_instance, CommandApp), group.name


def test_the_same_error_exits_with_the_same_code_on_stderr_in_every_command(tmp_path):
    from typer.testing import CliRunner

    from ciebench.cli import app
    from ciebench.errors import ExitCode

    (tmp_path / "empty").mkdir()
    not_a_run = str(tmp_path / "empty")
    commands = [["verify", not_a_run], ["export", not_a_run, "-o", str(tmp_path / "x")],
                ["judge", "freeze", not_a_run, "-o", str(tmp_path / "y")],
                ["judge", "agreement", not_a_run, not_a_run], ["leaderboard", not_a_run, "-o", str(tmp_path / "z")]]
    for args in commands:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == ExitCode.USAGE, (args, result.output)
        assert result.stdout == "" and result.stderr.startswith("error: ") and "Traceback" not in result.stderr, args
        assert "run folder" in result.stderr or "run directory" in result.stderr, args
    result = CliRunner().invoke(app, ["judge", "agreement", not_a_run])  # an odd number of runs
    assert result.exit_code == ExitCode.USAGE and result.stderr == "error: give pairs of runs: A B [A B ...]\n"
