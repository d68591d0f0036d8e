"""`ciebench data ...`: prepare, validate, describe and push datasets."""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Optional

import typer

from ciebench.errors import ExitCode

from .handling import CommandApp
from .options import DATASET_HELP, DatasetArg, IgnoreChecksumsOpt

app = CommandApp(help="Prepare, validate and describe datasets.", no_args_is_help=True)



@app.command("prepare")
def prepare_cmd(
    source: str = typer.Argument(..., help="Authors' folder, archive (.zip/.tar.gz), URL, or any dataset spec: " + DATASET_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: new, empty, or an earlier `data prepare` output "
                                                       "(replaced). Never a folder with other files."),
    fmt: str = typer.Option("arrow", "--format", help="arrow (save_to_disk), parquet, or hub (the Hub's dataset repository layout: README.md card + data/test-*.parquet)."),
    ignore_checksums: IgnoreChecksumsOpt = False,
) -> None:
    """Convert a dataset source into an HF dataset on disk."""
    from ciebench.datasets.prepare import prepare

    # the whole folder is replaced, so it may hold nothing but an earlier prepared dataset (prepare checks)
    loaded = prepare(source, out, fmt=fmt, verify=not ignore_checksums)
    for problem in loaded.problems:
        typer.echo(str(problem), err=True)
    typer.echo(f"wrote {len(loaded.dataset)} samples to {out} ({fmt}, revision {loaded.revision})")


@app.command("validate")
def validate_cmd(
    dataset: DatasetArg,
    ignore_checksums: IgnoreChecksumsOpt = False,
) -> None:
    """Check every sample; print one line per problem; exit 1 when any error is found, 3 when no
    sample is usable (as `evaluate` exits on it)."""
    from ciebench.datasets import read_dataset
    from ciebench.errors import DataError

    loaded = read_dataset(dataset, verify=not ignore_checksums)
    for problem in loaded.problems:
        typer.echo(str(problem))
    n_err = sum(p.severity == "error" for p in loaded.problems)
    n_warn = len(loaded.problems) - n_err
    typer.echo(f"{dataset}: {len(loaded.dataset)} usable samples, {n_err} error(s), {n_warn} warning(s)")
    if len(loaded.dataset) == 0:  # nothing to evaluate: the same error, and exit code, evaluate gives
        raise DataError(f"dataset {dataset} has no usable samples",
                        hint="fix the errors above" if n_err else "it holds no samples")
    if n_err:
        raise typer.Exit(int(ExitCode.INCOMPLETE))


@app.command("info")
def info_cmd(dataset: DatasetArg) -> None:
    """Counts per edit type, image sizes and notes."""
    from ciebench.datasets import read_dataset

    loaded = read_dataset(dataset)
    ds = loaded.dataset
    release = f", release {loaded.release}" if loaded.release else ""
    typer.echo(f"dataset:   {dataset} ({loaded.kind}, revision {loaded.revision}{release})")
    typer.echo(f"samples:   {len(ds)}")
    typer.echo(f"protocol:  {loaded.default_protocol} (default for this dataset)")
    typer.echo("edit types:")
    for name, count in sorted(collections.Counter(ds["edit_type"]).items(), key=lambda kv: (-kv[1], kv[0])):
        typer.echo(f"  {name:<18} {count}")
    widths, heights = [], []
    for row in ds.select_columns(["image"]):
        widths.append(row["image"].size[0])
        heights.append(row["image"].size[1])
    if widths:
        typer.echo(f"width:     {min(widths)}-{max(widths)} px   height: {min(heights)}-{max(heights)} px")
    notes = [(i, n) for i, n in zip(ds["id"], ds["notes"]) if n]
    if notes:
        typer.echo("notes:")
        for sample_id, note in notes:
            typer.echo(f"  {sample_id}: {note}")
    if loaded.problems:
        typer.echo(f"problems:  {len(loaded.problems)} (run `ciebench data validate {dataset}`)")


@app.command("push")
def push_cmd(
    folder: Path = typer.Argument(..., help="A folder written by `ciebench data prepare SRC --format hub` (or `ciebench export`)."),
    repo_id: str = typer.Argument(..., help="ORG/NAME of the Hub dataset repository (created if absent)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to push to (default: main)."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
) -> None:
    """Upload a Hub-layout dataset folder with huggingface_hub (token from HF_TOKEN or `hf auth login`)."""
    from ciebench.datasets.hub_layout import push_dataset

    url = push_dataset(folder, repo_id, revision=revision, private=private)
    typer.echo(f"pushed {folder} to {repo_id}: {url}")
