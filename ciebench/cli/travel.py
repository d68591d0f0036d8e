"""`ciebench verify | prefetch | doctor | export` and `ciebench data push`: runs and datasets that travel
(offline bundles, a preflight check, Hub-ready datasets and runs, provenance checks)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import CiebenchError, ExitCode
from . import app
from .handling import fail


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
    result = verify_run(run, dataset=dataset, subset=subset, all_samples=all_rows, rescore=not no_rescore,
                        seed=seed, device=device, batch_size=batch_size)
    for check in result.checks:
        typer.echo(check.line())
    if not no_write:
        write_verification(result)
    if result.verified:
        typer.echo(f"{run}: verified with ciebench {result.ciebench_version}")
    else:
        names = ", ".join(c.name for c in result.failed)
        typer.echo(f"{run}: NOT verified (failed: {names})")
        raise typer.Exit(int(ExitCode.INCOMPLETE))


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

    url = push_dataset(folder, repo_id, revision=revision, private=private)
    typer.echo(f"pushed {folder} to {repo_id}: {url}")


def use_bundle(folder: str) -> None:
    """`ciebench --bundle DIR ...` / CIEBENCH_BUNDLE=DIR: every cache points into the bundle, no network.
    (Runs in the root callback, outside the commands' error handling.)"""
    from ..bundle import activate_bundle

    try:
        activate_bundle(folder)
    except CiebenchError as exc:
        fail(exc)


@app.command("prefetch")
def prefetch_cmd(
    editor: list[str] = typer.Option([], "--editor", "-e", help="Editor to prefetch for (repeatable)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Editor preset (applied to every editor that has it)."),
    editor_arg: list[str] = typer.Option([], "--editor-arg", help="Editor option key=value (repeatable)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset spec (mini, ciebench, a local folder)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", "-p", help="Scoring protocol (default: the dataset's)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated metrics (default: all region metrics, + idcs with --judge)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="IDCS judge preset or config file."),
    no_score: bool = typer.Option(False, "--no-score", help="Generation only: skip the scoring models."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Write a self-contained offline bundle here."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Resolve and print sizes; download nothing."),
) -> None:
    """Resolve everything a configuration will load, download what is missing, print the total; with
    --bundle, write an offline bundle (use it with CIEBENCH_BUNDLE=DIR or `ciebench --bundle DIR`)."""
    from ..bundle import write_bundle
    from ..prefetch import Configuration, download, human_bytes, plan

    metric_names = tuple(m.strip() for m in metrics.split(",") if m.strip()) if metrics else None
    config = Configuration(editors=tuple(editor), preset=preset, editor_args=tuple(editor_arg), dataset=dataset,
                           protocol=protocol, metrics=metric_names, judge=judge, score=not no_score)
    result = plan(config)
    by_req: dict = {}
    for f in result.files:
        by_req.setdefault(f.requirement.key, (f.requirement, []))[1].append(f)
    for req, files in by_req.values():
        here = sum(f.local is not None for f in files)
        total = sum(f.size or 0 for f in files)
        typer.echo(f"{req.describe():<70} {len(files):>4} file(s) {human_bytes(total):>10}  "
                   f"{here}/{len(files)} here  [{req.used_by}]")
    for note in result.notes:
        typer.echo(f"note: {note}")
    for missing in result.missing:
        typer.echo(f"MISSING: {missing}", err=True)
    typer.echo(f"total: {len(result.files)} file(s), {human_bytes(result.total_bytes)}; "
               f"to download: {len(result.to_download)} file(s), "
               f"{human_bytes(sum(f.size or 0 for f in result.to_download))}")
    if result.missing:
        raise typer.Exit(int(ExitCode.ENVIRONMENT))
    if dry_run:
        return
    download(result)
    if bundle is not None:
        manifest = write_bundle(result, bundle)
        typer.echo(f"bundle: {bundle} ({len(manifest['files'])} file(s), {human_bytes(manifest['total_bytes'])}); "
                   f"use it with CIEBENCH_BUNDLE={bundle}")


@app.command("doctor")
def doctor_cmd(
    editor: list[str] = typer.Option([], "--editor", "-e", help="Editor of the planned `evaluate` (repeatable)."),
    preset: Optional[str] = typer.Option(None, "--preset"),
    editor_arg: list[str] = typer.Option([], "--editor-arg"),
    dataset: Optional[str] = typer.Option("mini", "--dataset", "-d"),
    protocol: Optional[str] = typer.Option(None, "--protocol", "-p"),
    metrics: Optional[str] = typer.Option(None, "--metrics"),
    judge: Optional[str] = typer.Option(None, "--judge"),
    device: str = typer.Option("cpu", "--device"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The run folder (for the disk-space check)."),
    seeds: str = typer.Option("0", "--seeds"),
    limit: Optional[int] = typer.Option(None, "--limit"),
    offline: bool = typer.Option(False, "--offline", help="Check the bundle alone (--bundle DIR or CIEBENCH_BUNDLE)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="The bundle to check with --offline."),
) -> None:
    """Preflight for an `evaluate` command line: files, endpoints, GPU memory per stage, disk, package
    versions. One line per check; exit 0 only when every check passes."""
    from ..doctor import DoctorOptions, run_doctor
    from ..prefetch import Configuration

    metric_names = tuple(m.strip() for m in metrics.split(",") if m.strip()) if metrics else None
    config = Configuration(editors=tuple(editor), preset=preset, editor_args=tuple(editor_arg), dataset=dataset,
                           protocol=protocol, metrics=metric_names, judge=judge)
    if offline and bundle is not None:
        use_bundle(str(bundle))
    checks = run_doctor(DoctorOptions(config, device=device, out=out, seeds=len([s for s in seeds.split(",") if s.strip()]),
                                      limit=limit, offline=offline, bundle=bundle))
    for check in checks:
        typer.echo(check.line())
    failed = [c for c in checks if not c.ok]
    typer.echo(f"{len(checks) - len(failed)}/{len(checks)} checks passed")
    if failed:
        raise typer.Exit(int(ExitCode.INCOMPLETE))


def exported_predictions(spec: str) -> Path:
    """`score --predictions hf:ORG/NAME`: the exported run's images as a local folder."""
    from ..export import materialize_predictions

    return materialize_predictions(spec)


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="Run folder to export."),
    fmt: str = typer.Option("hub", "--format", help="hub: a Hub dataset repository (card + data/test-*.parquet + run/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (new or empty)."),
    push: Optional[str] = typer.Option(None, "--push", help="Also upload it to this Hub dataset repository (ORG/NAME)."),
    private: bool = typer.Option(False, "--private", help="With --push: create the repository as private."),
) -> None:
    """Export a run as a Hub dataset others can re-score (`ciebench score --predictions hf:ORG/NAME`)."""
    from ..datasets.hub_layout import push_dataset
    from ..export import export_run

    if fmt != "hub":
        raise typer.BadParameter("--format: only 'hub' is supported")
    metadata = export_run(run, out)
    typer.echo(f"exported {metadata['dataset_info']['splits'][0]['num_examples']} row(s) of {run} to {out}")
    if push:
        typer.echo(f"pushed to {push}: {push_dataset(out, push, private=private)}")

