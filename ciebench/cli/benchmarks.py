"""`ciebench benchmarks`, and the judge-scored `--benchmark` paths of `evaluate` and `score` (the
benchmark itself runs in `ciebench.api.evaluate` and `ciebench.benchmarks.session`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ciebench.errors import DataError, EnvironmentProblem, ExitCode, IncompleteResult, UsageError
from ciebench.status import Status

from . import app


@app.command("benchmarks")
def benchmarks_cmd() -> None:
    """List registered benchmarks: size, languages, categories, licence and what they need."""
    from ciebench.benchmarks import BENCHMARKS, get_benchmark
    from ciebench.registry import RegistryError

    for name in BENCHMARKS.names():
        try:
            b = get_benchmark(name)
        except RegistryError as exc:
            typer.echo(f"{name:<16} unavailable: {exc}")
            continue
        typer.echo(f"{name:<16} {b.size:>5} cases  languages: {', '.join(b.languages)}  licence: {b.licence}"
                   f"  headline: {b.headline}")
        typer.echo(f"{'':<16} categories: {', '.join(b.categories) or 'read from the data'}")
        typer.echo(f"{'':<16} needs: {'; '.join(b.needs) or '-'}   source: {b.hub_id or b.dataset_spec or '-'}")


def resolve(name: str):
    from ciebench.benchmarks import get_benchmark

    return get_benchmark(name)  # an unknown name: RegistryError, exit 2, with a did-you-mean


def score(bench: Any, predictions: Optional[Path], verdicts: Optional[Path], out: Path, root, limit, judge,
          judge_prompts, region: Any = None) -> None:
    """`ciebench score --benchmark`: re-aggregate published verdicts, or judge an official output folder
    (with ciebench's region metrics `region` on cases with a ground-truth image)."""
    from ciebench.api import benchmark_errors
    from ciebench.benchmarks import session

    from . import command_started

    since = command_started()  # summary.json's timing covers the command's whole process, as `ciebench score`'s
    if verdicts is not None:
        run = lambda: session.reaggregate(bench, verdicts, out, timing_since=since)  # noqa: E731
    elif predictions is not None:
        options = session.BenchOptions(root=root, limit=limit, judge=judge, judge_prompts=judge_prompts, region=region,
                                       timing_since=since)
        run = lambda: session.score(bench, predictions, out, options)  # noqa: E731
    else:
        raise UsageError("--benchmark needs --predictions DIR (official output layout) or --verdicts FILE")

    def translated():
        with benchmark_errors():
            return run()

    guard(translated, out)


def guard(fn, out: Path) -> None:
    """Run one benchmark command (`fn` returns its summary), print the summary, and let the exit code
    tell whether anything was scored."""
    try:
        summary = fn()
    except KeyboardInterrupt:
        kept = f": finished cases are kept in {out}; rerun the same command to resume." if out.is_dir() else ""
        typer.echo(f"\ninterrupted{kept}", err=True)
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    print_summary(summary, out)
    ours = summary.get("ours") or {}
    if not ours.get("cases"):
        raise DataError("the benchmark has no cases here", hint="check --benchmark-root and --limit")
    if not (ours.get("status_counts") or {}).get(Status.OK):
        raise IncompleteResult(f"no case of {summary['benchmark']['name']} was scored; see {out}/summary.json")
    region = ours.get("region") or {}
    if region.get("status") == "error":  # the official numbers are written; ciebench's region metrics are not
        raise EnvironmentProblem(region["reason"], hint=f"the official numbers are in {out}/summary.json; make the "
                                 "model available (`ciebench prefetch`) and rerun to resume, or choose other --metrics")


def print_summary(summary: dict, out: Path) -> None:
    head = summary["headline"]
    ci = head.get("ci95")
    ci_text = f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
    value = head["value"]
    typer.echo(f"\n{summary['benchmark']['title']}: results in {out}/ (summary.json, official_scores.csv)")
    typer.echo(f"  {head['name']}: {'-' if value is None else f'{value:.4f}'}{ci_text}")
    if head.get("incomplete"):
        typer.echo(f"  warning: incomplete headline, {head['incomplete']}", err=True)
    table = summary["official"]
    labels = [k for k in (table[0] if table else {}) if isinstance(table[0][k], str)]
    numbers = [k for k in (table[0] if table else {}) if k not in labels and not k.endswith("(1-5)")]
    if table:
        typer.echo(f"  {'':<34} " + "  ".join(f"{k[:14]:>14}" for k in numbers))
    for row in table:
        label = " / ".join(str(row[k]) for k in labels)
        if label.startswith(("subcategory/", "task_type/")):
            continue
        cells = "  ".join("-".rjust(14) if row.get(k) is None else
                          f"{row[k]:14d}" if isinstance(row[k], int) else f"{row[k]:14.4f}" for k in numbers)
        typer.echo(f"  {label:<34} {cells}")
    counts = ", ".join(f"{k}: {v}" for k, v in summary["ours"]["status_counts"].items())
    typer.echo(f"  cases: {summary['ours']['cases']} ({counts})")
    from .run_commands import print_timing  # run_commands imports this module

    print_timing(summary)
    region = summary["ours"].get("region")
    if region and "overall" in region:
        means = ", ".join(f"{k} {v['mean']:.4f}" for k, v in region["overall"].items() if v["mean"] is not None)
        rc = ", ".join(f"{k}: {v}" for k, v in region["status_counts"].items())
        typer.echo(f"  ours, region metrics (not official; {region['protocol']['name']} protocol): {means or '-'}")
        typer.echo(f"    cases: {region['cases']} ({rc}); rows in {out}/{region['files']['rows']}")
    elif region:
        typer.echo(f"  ours, region metrics: {region['status']}: {region['reason']}")
