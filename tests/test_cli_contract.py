"""The command line's shape: every command and option explains itself, the shared options are spelled
one way everywhere, and every command runs inside the one error handler."""
from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.cli.handling import handle_errors
from ciebench.cli.options import DATASET_HELP


def _commands(command=None, path=("ciebench",)):
    command = command or typer.main.get_command(app)
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, path + (name,))
    else:
        yield " ".join(path), command


COMMANDS = dict(_commands())


def test_the_command_tree_is_complete():
    expected = {"evaluate", "score", "editors", "metrics", "leaderboard", "benchmarks", "verify", "prefetch", "doctor",
                "export", "data prepare", "data validate", "data info", "data push", "judge protocols",
                "judge agreement", "judge calibrate", "judge freeze", "baselines smartedit prepare",
                "baselines smartedit check"}
    assert {name.removeprefix("ciebench ") for name in COMMANDS} == expected


def test_every_command_and_parameter_has_help():
    missing = [f"{name}: {param.name}" for name, command in COMMANDS.items() for param in command.params
               if not (getattr(param, "help", None) or "").strip()]
    assert missing == []
    assert [name for name, command in COMMANDS.items() if not (command.help or "").strip()] == []


def test_out_is_spelled_the_same_everywhere():
    for name, command in COMMANDS.items():
        for param in command.params:
            if "--out" in getattr(param, "opts", ()):
                assert "-o" in param.opts, f"{name}: --out without -o"


def test_the_dataset_is_spelled_the_same_everywhere():
    seen = 0
    for name, command in COMMANDS.items():
        for param in command.params:
            if param.name != "dataset":
                continue
            seen += 1
            assert param.metavar == "DATASET", name
            assert DATASET_HELP in param.help, name
            if param.param_type_name == "option":
                assert param.opts == ["--dataset", "-d"], name
    assert seen >= 9  # evaluate, score, leaderboard, verify, prefetch, doctor, data validate/info, judge freeze


def test_every_command_runs_inside_the_error_handler():
    """A user error in any group (here `judge agreement`, once a plain typer group) prints one line on
    stderr and exits with the table's code, never a traceback."""
    handler = handle_errors(lambda: None).__code__
    for name, command in COMMANDS.items():
        chain, fn = [], command.callback
        while fn is not None:  # typer wraps callbacks too: look through every layer
            chain.append(fn.__code__)
            fn = getattr(fn, "__wrapped__", None)
        assert handler in chain, f"{name} is not registered through CommandApp"
    result = CliRunner().invoke(app, ["judge", "agreement", "only-one-run"])
    assert result.exit_code == 2
    assert "error: give pairs of runs" in result.stderr and "Traceback" not in result.output
