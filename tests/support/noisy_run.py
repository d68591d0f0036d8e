"""A finished `ciebench evaluate` run of the test NoisyEditor on the embedded `mini` set, for the tests
of what is done with a run afterwards (verify, export), and a fresh copy of it per test to tamper with."""
from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

NOISY = "tests.support.editors_for_tests:NoisyEditor"


def evaluate_noisy(out: Path, limit: int, metrics: str, *extra: str, env: dict[str, str] | None = None) -> Path:
    from ciebench.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--editor", NOISY, "--dataset", "mini", "--out", str(out),
                                      "--limit", str(limit), "--metrics", metrics, *extra], env=env)
    assert result.exit_code == 0, result.output
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target
