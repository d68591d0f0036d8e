"""`ciebench verify | prefetch | doctor | export` and `ciebench data push`: runs and datasets that travel
(offline bundles, a preflight check, Hub-ready datasets and runs, provenance checks)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from ..errors import CiebenchError


def _fail(exc: CiebenchError) -> None:
    typer.echo(f"error: {exc.one_line()}", err=True)
    raise typer.Exit(int(exc.exit_code))


@app.command("verify")
def verify_cmd(
    run: Path = typer.Argument(..., help="Run folder (from `ciebench evaluate` or `ciebench score`)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset to re-score against (default: the one recorded in spec.json)."),
    subset: int = typer.Option(8, "--subset", help="Rows re-scored, drawn at random."),
    all_rows: bool = typer.Option(False, "--all", help="Re-score every row."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the random subset (default: random, printed)."),
    no_rescore: bool = typer.Option(False, "--no-rescore", help="Skip re-scoring (no dataset or models needed)."),
    device: str = typer.Option("cpu", "--device"),
    batch_size: int = typer.Option(8, "--batch-size", "-b"),
    no_write: bool = typer.Option(False, "--no-write", help="Do not record the verdict in RUN/verify.json."),
) -> None:
    """Check a run after the fact: image and trace hashes, spec and protocol hashes, a re-score of the
    deterministic metrics, the summary re-aggregated. One verdict per check; exit 0 only when none fails."""
    from ..verify import verify_run, write_verification

    if subset < 1:
        raise typer.BadParameter("--subset must be at least 1")
    try:
        result = verify_run(run, dataset=dataset, subset=subset, all_samples=all_rows, rescore=not no_rescore,
                            seed=seed, device=device, batch_size=batch_size)
    except CiebenchError as exc:
        _fail(exc)
    for check in result.checks:
        typer.echo(check.line())
    if not no_write:
        write_verification(result)
    if result.verified:
        typer.echo(f"{run}: verified with ciebench {result.ciebench_version}")
    else:
        names = ", ".join(c.name for c in result.failed)
        typer.echo(f"{run}: NOT verified (failed: {names})")
        raise typer.Exit(1)


from .data import app as _data_app  # noqa: E402


@_data_app.command("push")
def push_cmd(
    folder: Path = typer.Argument(..., help="A folder written by `ciebench data prepare SRC --format hub` (or `ciebench export`)."),
    repo_id: str = typer.Argument(..., help="ORG/NAME of the Hub dataset repository (created if absent)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to push to (default: main)."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
) -> None:
    """Upload a Hub-layout dataset folder with huggingface_hub (token from HF_TOKEN or `hf auth login`)."""
    from ..datasets.hub_layout import push_dataset

    try:
        url = push_dataset(folder, repo_id, revision=revision, private=private)
    except CiebenchError as exc:
        _fail(exc)
    typer.echo(f"pushed {folder} to {repo_id}: {url}")
