"""`ciebench data ...`: prepare, validate and describe datasets."""
from __future__ import annotations

import collections
from pathlib import Path

import typer

from ..errors import ExitCode
from .handling import CommandApp

app = CommandApp(help="Prepare, validate and describe datasets.", no_args_is_help=True)

DATASET_HELP = ("'mini' (embedded), 'ciebench' (official release, downloaded and verified), a folder in the "
                "authors' or Reason-Edit layout, a JSONL manifest, a saved HF dataset, parquet, or hf:ORG/NAME[@rev].")


@app.command("prepare")
def prepare_cmd(
    source: str = typer.Argument(..., help="Authors' folder, archive (.zip/.tar.gz), URL, or any dataset spec: " + DATASET_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: new, empty, or an earlier `data prepare` output "
                                                       "(replaced). Never a folder with other files."),
    fmt: str = typer.Option("arrow", "--format", help="arrow (save_to_disk), parquet, or hub (the Hub's dataset repository layout: README.md card + data/test-*.parquet)."),
    ignore_checksums: bool = typer.Option(False, "--ignore-checksums", help="Accept a CIEBench release whose files differ from the shipped sha256 manifest."),
) -> None:
    """Convert a dataset source into an HF dataset on disk."""
    from ..datasets.prepare import prepare

    # the whole folder is replaced, so it may hold nothing but an earlier prepared dataset (prepare checks)
    loaded = prepare(source, out, fmt=fmt, verify=not ignore_checksums)
    for problem in loaded.problems:
        typer.echo(str(problem), err=True)
    typer.echo(f"wrote {len(loaded.dataset)} samples to {out} ({fmt}, revision {loaded.revision})")


@app.command("validate")
def validate_cmd(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    ignore_checksums: bool = typer.Option(False, "--ignore-checksums"),
) -> None:
    """Check every sample; print one line per problem; exit 1 when any error is found."""
    from ..datasets import read_dataset

    loaded = read_dataset(dataset, verify=not ignore_checksums)
    for problem in loaded.problems:
        typer.echo(str(problem))
    n_err = sum(p.severity == "error" for p in loaded.problems)
    n_warn = len(loaded.problems) - n_err
    typer.echo(f"{dataset}: {len(loaded.dataset)} usable samples, {n_err} error(s), {n_warn} warning(s)")
    if n_err:
        raise typer.Exit(int(ExitCode.INCOMPLETE))


@app.command("info")
def info_cmd(dataset: str = typer.Argument(..., help=DATASET_HELP)) -> None:
    """Counts per edit type, image sizes and notes."""
    from ..datasets import read_dataset

    loaded = read_dataset(dataset)
    ds = loaded.dataset
    typer.echo(f"dataset:   {dataset} ({loaded.kind}, revision {loaded.revision})")
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
