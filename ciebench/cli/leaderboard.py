"""`ciebench leaderboard RUN [RUN ...] --out DIR`: tables, significance, plots and the HTML gallery."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import app
from .options import DatasetOpt


@app.command("leaderboard")
def leaderboard_cmd(
    runs: List[Path] = typer.Argument(..., help="Run directories (each with samples.csv; spec.json and summary.json when present)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: new, empty, or an earlier leaderboard (its files are replaced)."),
    primary: Optional[str] = typer.Option(None, "--primary", help="Sort metric (default: idcs, else the first of clip, locality_f1, psnr, ssim, lpips, mse with values)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level for the Holm-adjusted paired tests."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG and SVG plots."),
    gallery: bool = typer.Option(True, "--gallery/--no-gallery", help="Write gallery/index.html."),
    dataset: DatasetOpt = None,
    full_images: bool = typer.Option(True, "--full-images/--thumbnails-only", help="Copy full-size PNGs into the gallery (thumbnails link to them)."),
    page_size: int = typer.Option(20, "--page-size", help="Gallery samples per page."),
    by_track: bool = typer.Option(False, "--by-track", help="Separate tables by editor track (direct, rewrite, agentic)."),
) -> None:
    """Compare runs: tables with 95% CIs, paired significance, plots and an HTML gallery.

    Writes leaderboard.csv/.md, by_edit_type.csv, significance.csv, plots/ and gallery/index.html
    into --out. Runs under different protocols or datasets go to separate tables (see
    docs/leaderboard.md). --dataset gives the gallery's source images and masks (default: each
    run's dataset spec)."""
    from ciebench.errors import UsageError

    if not 0 < alpha < 1:
        raise typer.BadParameter("--alpha must lie between 0 and 1")
    if page_size < 1:
        raise typer.BadParameter("--page-size must be at least 1")
    for run in runs:
        if not run.is_dir():
            raise UsageError(f"{run} is not a folder")
    from ciebench.leaderboard.benchmark_board import is_benchmark_run
    from ciebench.leaderboard.report import write_board

    bench_runs = [r for r in runs if is_benchmark_run(r)]  # judge-scored benchmarks: own tables, never mixed
    runs = [r for r in runs if r not in bench_runs]
    # one replacement of --out: the tables and the benchmark boards given, an earlier leaderboard's others gone
    result = write_board(runs, bench_runs, out, primary=primary, alpha=alpha, plots=plots, gallery=gallery,
                         dataset=dataset, full_images=full_images, page_size=page_size, by_track=by_track)
    if bench_runs:
        typer.echo(f"wrote {out}/benchmarks.md and benchmark__<table>.csv for {len(bench_runs)} benchmark run(s)")
    if result is None:
        return
    for table in result.tables:
        lb = table.leaderboard
        typer.echo(f"\n{table.title}: {len(lb)} run(s), sorted by {table.primary or '-'}")
        for _, row in lb.iterrows():
            rank = "-" if row["rank"] is None or str(row["rank"]) == "<NA>" else str(row["rank"])
            value = row[table.primary] if table.primary else float("nan")
            tied = row["tied_with_best"]
            mark = " (≈ best)" if str(tied) == "True" and rank != "1" else ""
            typer.echo(f"  {rank:>3}  {row['run']:<32} {table.primary or ''} {value:.4g}{mark}")
    typer.echo(f"\nwrote {out}/leaderboard.md, leaderboard.csv, by_edit_type.csv, significance.csv"
               + (", plots/" if plots else "") + (", gallery/index.html" if gallery else ""))
