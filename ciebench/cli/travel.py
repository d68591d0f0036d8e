"""`ciebench verify | prefetch | doctor | export`: runs that travel (offline bundles, a preflight check,
Hub-ready runs, provenance checks)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ciebench.errors import CiebenchError, ExitCode

from . import app
from .options import (
    BenchmarkOpt,
    DatasetOpt,
    DeviceOpt,
    EditorArgOpt,
    EditorConfigOpt,
    EditorsOpt,
    JudgeOpt,
    JudgePromptsOpt,
    JudgeProtocolOpt,
    LimitOpt,
    MetricsOpt,
    PresetOpt,
    ProtocolOpt,
    RunDirArg,
    ScoreBatchSizeOpt,
    SeedsOpt,
    split_names,
)


@app.command("verify")
def verify_cmd(
    run: RunDirArg,
    dataset: DatasetOpt = None,
    subset: int = typer.Option(8, "--subset", help="Rows re-scored, drawn at random."),
    all_rows: bool = typer.Option(False, "--all", help="Re-score every row."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the random subset (default: random, printed)."),
    no_rescore: bool = typer.Option(False, "--no-rescore", help="Skip re-scoring (no dataset or models needed)."),
    device: DeviceOpt = "cpu",
    batch_size: ScoreBatchSizeOpt = 8,
    no_write: bool = typer.Option(False, "--no-write", help="Do not record the verdict in RUN/verify.json."),
) -> None:
    """Check a run after the fact: image and trace hashes, spec and protocol hashes, a re-score of the
    deterministic metrics, the summary re-aggregated. One verdict per check; exit 0 only when none fails."""
    from ciebench.verify import verify_run, write_verification

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


def use_bundle(folder: str, verify: bool = True) -> None:
    """`ciebench --bundle DIR ...` / CIEBENCH_BUNDLE=DIR: the bundle checked against its manifest, then
    every cache points into it, no network. (Runs in the root callback, outside the commands' error
    handling.)"""
    from ciebench.bundle import activate_bundle

    from .handling import fail

    try:
        activate_bundle(folder, verify=verify)
    except CiebenchError as exc:  # called from the root callback, before any command's own error handling
        fail(exc)


def refuse_what_the_bundle_lacks(config) -> None:
    """With a bundle in use (`--bundle`, CIEBENCH_BUNDLE), a command whose models or files the bundle does
    not hold is refused before any work, naming them and what the bundle was made for; otherwise every
    sample would fail offline with a network error that never names the bundle."""
    import json
    import os

    from ciebench.bundle import BUNDLE_ENV, read_manifest
    from ciebench.errors import EnvironmentProblem
    from ciebench.prefetch import plan

    folder = os.environ.get(BUNDLE_ENV)
    if not folder:
        return
    missing = plan(config, offline=True).missing
    if not missing:
        return
    made_for = (read_manifest(folder) or {}).get("configuration")
    shown = "; ".join(missing[:5]) + (f"; ... {len(missing) - 5} more" if len(missing) > 5 else "")
    raise EnvironmentProblem(
        f"bundle {folder} does not hold what this command loads: {shown}",
        hint=f"the bundle was made for {json.dumps(made_for, sort_keys=True)}; make one for this command with "
             "`ciebench prefetch ... --bundle DIR` (the same --editor, --preset, --editor-arg, --editor-config, "
             "--dataset, --protocol, --metrics and --judge) on a machine with network")


@app.command("prefetch")
def prefetch_cmd(
    editor: EditorsOpt = [],
    preset: PresetOpt = None,
    editor_arg: EditorArgOpt = [],
    editor_config: EditorConfigOpt = None,
    dataset: DatasetOpt = None,
    protocol: ProtocolOpt = None,
    metrics: MetricsOpt = None,
    judge: JudgeOpt = None,
    benchmark: BenchmarkOpt = None,
    judge_prompts: JudgePromptsOpt = None,
    judge_protocol: JudgeProtocolOpt = None,
    no_score: bool = typer.Option(False, "--no-score", help="Generation only: skip the scoring models."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Write a self-contained offline bundle here."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Resolve and print sizes; download nothing."),
) -> None:
    """Resolve everything a configuration will load, download what is missing, print the total; with
    --bundle, write an offline bundle (use it with CIEBENCH_BUNDLE=DIR or `ciebench --bundle DIR`)."""
    from ciebench.bundle import write_bundle
    from ciebench.prefetch import Configuration, download, human_bytes, plan

    metric_names = split_names(metrics)
    config = Configuration(editors=tuple(editor), preset=preset, editor_args=tuple(editor_arg), dataset=dataset,
                           protocol=protocol, metrics=metric_names, judge=judge, score=not no_score,
                           benchmark=benchmark, judge_prompts=judge_prompts, judge_protocol=judge_protocol,
                           editor_config=str(editor_config) if editor_config else None)
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
    editor: EditorsOpt = [],
    preset: PresetOpt = None,
    editor_arg: EditorArgOpt = [],
    editor_config: EditorConfigOpt = None,
    dataset: DatasetOpt = "mini",
    protocol: ProtocolOpt = None,
    metrics: MetricsOpt = None,
    judge: JudgeOpt = None,
    benchmark: BenchmarkOpt = None,
    judge_prompts: JudgePromptsOpt = None,
    judge_protocol: JudgeProtocolOpt = None,
    device: DeviceOpt = "cpu",
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The run folder (for the disk-space check)."),
    seeds: SeedsOpt = "0",
    limit: LimitOpt = None,
    offline: bool = typer.Option(False, "--offline", help="Check the bundle alone (--bundle DIR or CIEBENCH_BUNDLE)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="The bundle to check with --offline."),
) -> None:
    """Preflight for an `evaluate` command line: files, endpoints, GPU memory per stage, disk, package
    versions. One line per check; exit 0 only when every check passes."""
    from ciebench.doctor import DoctorOptions, run_doctor
    from ciebench.prefetch import Configuration

    metric_names = split_names(metrics)
    config = Configuration(editors=tuple(editor), preset=preset, editor_args=tuple(editor_arg),
                           dataset=None if benchmark else dataset, protocol=protocol, metrics=metric_names,
                           judge=judge, benchmark=benchmark, judge_prompts=judge_prompts,
                           judge_protocol=judge_protocol, editor_config=str(editor_config) if editor_config else None)
    if offline and bundle is not None:
        use_bundle(str(bundle), verify=False)  # its first check lists every problem of the bundle
    checks = run_doctor(DoctorOptions(config, device=device, out=out, seeds=len([s for s in seeds.split(",") if s.strip()]),
                                      limit=limit, offline=offline, bundle=bundle))
    for check in checks:
        typer.echo(check.line())
    failed = [c for c in checks if not c.ok]
    typer.echo(f"{len(checks) - len(failed)}/{len(checks)} checks passed")
    if failed:
        raise typer.Exit(int(ExitCode.INCOMPLETE))


@app.command("export")
def export_cmd(
    run: RunDirArg,
    fmt: str = typer.Option("hub", "--format", help="hub: a Hub dataset repository (card + data/test-*.parquet + run/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (new or empty)."),
    push: Optional[str] = typer.Option(None, "--push", help="Also upload it to this Hub dataset repository (ORG/NAME)."),
    private: bool = typer.Option(False, "--private", help="With --push: create the repository as private."),
) -> None:
    """Export a run as a Hub dataset others can re-score (`ciebench score --predictions hf:ORG/NAME`)."""
    from ciebench.datasets.hub_layout import push_dataset
    from ciebench.export import export_run

    if fmt != "hub":
        raise typer.BadParameter("--format: only 'hub' is supported")
    metadata = export_run(run, out)
    typer.echo(f"exported {metadata['dataset_info']['splits'][0]['num_examples']} row(s) of {run} to {out}")
    if push:
        typer.echo(f"pushed to {push}: {push_dataset(out, push, private=private)}")
