"""The allocator setting (`ciebench.allocator`): freed large blocks stay in the process for reuse
(measured on the process's own anonymous memory), `CIEBENCH_ALLOCATOR=system` leaves glibc's
defaults, and a wrong value is a usage error of every command."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ciebench.allocator import ENV, reuse_freed_memory
from ciebench.cli import app
from ciebench.errors import UsageError

# A child process fills and frees a 96 MiB block, then prints how much anonymous memory it still
# holds beyond what it held before. glibc's default maps such a block on its own and unmaps it on
# free (nothing kept); reused memory stays in the heap for the next block.
_CHILD = """
import sys
from ciebench.allocator import reuse_freed_memory

def anon():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("RssAnon:"))

applied = reuse_freed_memory()
before = anon()
block = b"x" * (96 * 2**20)
del block
print(int(applied), (anon() - before) // 2**20)
"""


def _freed_block_kept(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_value is not None:
        env[ENV] = env_value
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True).stdout
    applied, kept_mib = out.split()
    return applied == "1", int(kept_mib)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc are Linux's")
def test_freed_large_blocks_are_kept_for_reuse_unless_opted_out():
    applied, kept = _freed_block_kept(None)
    assert applied and kept >= 90, kept  # the 96 MiB stay in the heap
    applied, kept = _freed_block_kept("system")
    assert not applied and kept < 16, kept  # unmapped on free, as glibc does by default


def test_a_wrong_setting_is_a_usage_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(UsageError, match="CIEBENCH_ALLOCATOR='fast'"):
        reuse_freed_memory()
    result = CliRunner().invoke(app, ["metrics"])  # the root callback applies it for every command
    assert result.exit_code == 2
    assert "CIEBENCH_ALLOCATOR='fast'" in result.output


def test_the_python_api_applies_the_setting_too(monkeypatch, tmp_path):
    import ciebench

    monkeypatch.setenv(ENV, "fast")  # read first: a wrong value stops before any dataset is touched
    with pytest.raises(UsageError, match="CIEBENCH_ALLOCATOR='fast'"):
        ciebench.evaluate("identity", "mini", tmp_path / "run")
    with pytest.raises(UsageError, match="CIEBENCH_ALLOCATOR='fast'"):
        ciebench.score("mini", tmp_path / "predictions", tmp_path / "scored")
    assert not (tmp_path / "run").exists() and not (tmp_path / "scored").exists()
