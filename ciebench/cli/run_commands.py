"""`ciebench evaluate | score | editors | metrics`: running editors and scoring predictions."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from ciebench.errors import CiebenchError

from . import app
from . import benchmarks as _bench
from .judge import list_judge_protocols_lines
from .options import (
    DATASET_HELP,
    BackendOpt,
    BenchmarkOpt,
    BenchmarkRootOpt,
    CpusPerWorkerOpt,
    DeviceOpt,
    DryRunOpt,
    EditorArgOpt,
    EditorConfigOpt,
    EditorOpt,
    GpusPerWorkerOpt,
    IgnoreChecksumsOpt,
    JudgeBatchOpt,
    JudgeCanariesOpt,
    JudgeOpt,
    JudgePassesOpt,
    JudgePromptsOpt,
    JudgeProtocolOpt,
    LimitOpt,
    MaxCostOpt,
    MetricsOpt,
    MinCoverageOpt,
    NumWorkersOpt,
    PresetOpt,
    ProtocolOpt,
    RayAddressOpt,
    ScoreBatchSizeOpt,
    SeedsOpt,
    split_names,
)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"--seeds takes comma-separated integers, not {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise typer.BadParameter("--seeds needs distinct integers, e.g. 0,1,2")
    return seeds


def _print_problem(problem) -> None:
    typer.echo(str(problem), err=True)


def _check_result(summary: dict, requested: Optional[tuple[str, ...]], min_coverage: Optional[float]) -> None:
    """Exit non-zero (ExitCode.INCOMPLETE) when the result does not answer what was asked."""
    from ciebench.errors import IncompleteResult
    from ciebench.results import result_problems

    wanted = []
    if requested is not None:  # the columns the names given to --metrics stand for
        wanted = [m for m in summary["metrics"] if m in requested or (m.startswith("locality_") and "locality" in requested)]
        wanted += [m for m in requested if m not in summary["metrics"] and m != "locality"]
    elif summary.get("judge"):  # --judge asks for IDCS
        wanted = ["idcs"]
    problems = result_problems(summary, wanted, min_coverage)
    if problems:
        raise IncompleteResult("; ".join(problems))


def _coverage(value: Optional[float]) -> Optional[float]:
    if value is not None and not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"--min-coverage takes a fraction between 0 and 1, not {value}")
    return value


def _environment(exc: BaseException, out: Path, resumable: bool):
    """A model, file or endpoint this machine cannot provide, as a one-line EnvironmentProblem."""
    from ciebench.errors import EnvironmentProblem

    from .handling import path_problem

    problem = path_problem(exc) if isinstance(exc, OSError) else None
    if problem is not None:
        return problem
    hint = (f"finished samples are kept in {out}; fix the cause and rerun the same command to resume (-v for details)"
            if resumable and out.is_dir() else "-v for details")  # never point at a folder that was not created
    problem = EnvironmentProblem(f"{type(exc).__name__}: {exc}", hint=hint)
    problem.__cause__ = exc
    return problem


def _print_summary(summary: dict, out: Path) -> None:
    typer.echo(f"\nresults in {out}/ (samples.csv, summary.json)")
    protocol, dataset = summary.get("protocol") or {}, summary.get("dataset") or {}
    if protocol.get("name"):
        # the protocol decides every number below (size, CLIP model): a dataset's default is easy to miss
        typer.echo(f"  protocol {protocol['name']} ({protocol.get('hash', '?')}) on {dataset.get('spec', '?')} "
                   f"(revision {dataset.get('revision', '?')}, {summary.get('n_samples', '?')} samples)")
    for name, m in summary["metrics"].items():
        ci = m["ci95"]
        typer.echo(f"  {name:<20} {_fmt(m['mean'])}  [{_fmt(ci[0])}, {_fmt(ci[1])}]  n={m['n']}  coverage={m['coverage']:.0%}")
    counts = ", ".join(f"{k}: {v}" for k, v in summary["status_counts"].items())
    typer.echo(f"  statuses: {counts}")
    if summary.get("seeds"):
        seeds = ", ".join(map(str, summary["seeds"]["seeds"]))
        typer.echo(f"  seeds {seeds}: each sample's value is its mean over them; per-seed means in summary.json seeds")
    print_timing(summary)


def print_timing(summary: dict) -> None:
    """Where a run's scoring time went, in one line (every stage is in summary.json `timing`): for
    `ciebench score` its whole process, for `evaluate` the scoring after the edits."""
    if summary.get("timing"):
        from ciebench.metrics.timing import time_line

        typer.echo(f"  scoring time {time_line(summary['timing'])}; every stage in summary.json timing")




def _fmt(v) -> str:
    return f"{v:8.4f}" if isinstance(v, float) else f"{str(v):>8}"


@app.command("evaluate")
def evaluate_cmd(
    editor: EditorOpt,
    dataset: Annotated[str, typer.Option("--dataset", "-d", metavar="DATASET", help=DATASET_HELP)] = "mini",
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (created; an existing one with the same spec is resumed)."),
    limit: LimitOpt = None,
    seeds: SeedsOpt = "0",
    protocol: ProtocolOpt = None,
    metrics: MetricsOpt = None,
    judge: JudgeOpt = None,
    judge_protocol: JudgeProtocolOpt = None,
    judge_passes: JudgePassesOpt = 1,
    judge_prompts: JudgePromptsOpt = None,
    max_cost: MaxCostOpt = None,
    judge_canaries: JudgeCanariesOpt = "day",
    device: DeviceOpt = "cpu",
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Editor batch size (scoring batches separately)."),
    editor_arg: EditorArgOpt = [],
    editor_config: EditorConfigOpt = None,
    preset: PresetOpt = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard an existing run with a different spec in --out (only its own files)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo samples that failed in an earlier attempt."),
    min_coverage: MinCoverageOpt = None,
    backend: BackendOpt = "local",
    ray_address: RayAddressOpt = None,
    num_workers: NumWorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    ignore_checksums: IgnoreChecksumsOpt = False,
    benchmark: BenchmarkOpt = None,
    benchmark_root: BenchmarkRootOpt = None,
) -> None:
    """Run an editor on a dataset into a resumable run directory, then score it."""
    from ciebench import api
    from ciebench.errors import ExitCode

    _coverage(min_coverage)
    bench = _bench.resolve(benchmark) if benchmark else None
    from ciebench.prefetch import Configuration

    from .travel import refuse_what_the_bundle_lacks

    refuse_what_the_bundle_lacks(Configuration(
        editors=(editor,), preset=preset, editor_args=tuple(editor_arg), dataset=None if benchmark else dataset,
        protocol=protocol, metrics=split_names(metrics), judge=judge, benchmark=benchmark,
        judge_prompts=str(judge_prompts) if judge_prompts else None, judge_protocol=judge_protocol,
        editor_config=str(editor_config) if editor_config else None,
        benchmark_root=str(benchmark_root) if benchmark_root else None))
    run = functools.partial(
        api.evaluate, editor, dataset, out, seeds=_seeds(seeds), limit=limit, protocol=protocol,
        metrics=split_names(metrics), judge=judge, judge_protocol=judge_protocol, judge_passes=judge_passes,
        judge_prompts=judge_prompts, max_cost=max_cost, judge_canaries=judge_canaries, device=device,
        batch_size=batch_size, editor_args=editor_arg, editor_config=editor_config, preset=preset, overwrite=overwrite,
        retry_failed=retry_failed, backend=backend, ray_address=ray_address, num_workers=num_workers,
        gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, ignore_checksums=ignore_checksums,
        benchmark=benchmark, benchmark_root=benchmark_root, on_problem=_print_problem)
    if bench is not None and bench.pipeline != "dataset":  # a judge-scored benchmark (RISEBench, ...)
        return _bench.guard(lambda: run().summary, out)
    try:
        result = run()
    except CiebenchError as exc:
        if exc.hint is None and out.is_dir():
            exc.hint = f"finished samples are kept in {out}; rerun the same command to resume"
        raise
    except (OSError, RuntimeError) as exc:  # a model that cannot be loaded (offline, missing weights), a full disk
        raise _environment(exc, out, resumable=True) from exc
    except KeyboardInterrupt:
        kept = f": finished samples are kept in {out}; rerun the same command to resume." if out.is_dir() else ""
        typer.echo(f"\ninterrupted{kept}", err=True)
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    stats = result.stats
    typer.echo(f"generated {stats.generated}, resumed {stats.skipped}, failed {stats.failed}")
    _print_summary(result.summary, out)
    _check_result(result.summary, split_names(metrics), min_coverage)


@app.command("score")
def score_cmd(
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", metavar="DATASET",
                                                   help=DATASET_HELP + " Required unless --benchmark.")] = None,
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Folder of <id>.png|jpg|webp edited images "
                                               "(with --benchmark: the benchmark's official output layout), or "
                                               "hf:ORG/NAME[@rev] of a run exported with `ciebench export`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for samples.csv and summary.json."),
    protocol: ProtocolOpt = None,
    metrics: MetricsOpt = None,
    judge: JudgeOpt = None,
    judge_protocol: JudgeProtocolOpt = None,
    judge_passes: JudgePassesOpt = 1,
    judge_prompts: JudgePromptsOpt = None,
    max_cost: MaxCostOpt = None,
    judge_canaries: JudgeCanariesOpt = "day",
    judge_batch: JudgeBatchOpt = False,
    dry_run: DryRunOpt = False,
    device: DeviceOpt = "cpu",
    batch_size: ScoreBatchSizeOpt = 8,
    limit: LimitOpt = None,
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Exit 0 even when predictions are missing or unreadable "
                                                                      "(still non-zero when nothing scored, or below --min-coverage)."),
    min_coverage: MinCoverageOpt = None,
    backend: BackendOpt = "local",
    ray_address: RayAddressOpt = None,
    num_workers: NumWorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    ignore_checksums: IgnoreChecksumsOpt = False,
    benchmark: BenchmarkOpt = None,
    benchmark_root: BenchmarkRootOpt = None,
    verdicts: Optional[Path] = typer.Option(None, "--verdicts", help="With --benchmark: re-aggregate per-case verdicts (verdicts.jsonl, or the official judge .xlsx/.csv) without a judge."),
) -> None:
    """Score a folder of edited images against a dataset."""
    from ciebench import api
    from ciebench.errors import IncompleteResult, UsageError
    from ciebench.status import Status

    from . import command_started

    _coverage(min_coverage)
    bench = _bench.resolve(benchmark) if benchmark else None
    if bench is not None and bench.pipeline != "dataset":
        from ciebench.api import judge_options_set, refuse_unused_options
        from ciebench.benchmarks.region import region_options

        refuse_unused_options(bench, {
            "--dataset (the benchmark is its own data)": dataset is not None,
            **judge_options_set(judge_protocol, judge_passes, max_cost, judge_canaries),
            "--judge-batch": judge_batch, "--dry-run": dry_run, "--batch-size": batch_size != 8,
            "--allow-missing (a missing output is scored as the benchmark's rules say)": allow_missing,
            "--min-coverage": min_coverage is not None, "--backend ray": backend != "local",
            "--ignore-checksums": ignore_checksums})
        return _bench.score(bench, predictions, verdicts, out, benchmark_root, limit, judge, judge_prompts,
                            region=region_options(split_names(metrics), protocol, device))
    if (dataset is None and bench is None) or predictions is None:
        raise UsageError("score needs --dataset (or --benchmark) and --predictions")
    options = dict(limit=limit, protocol=protocol, metrics=split_names(metrics), judge=judge,
                   judge_protocol=judge_protocol, judge_passes=judge_passes, judge_prompts=judge_prompts,
                   max_cost=max_cost, judge_canaries=judge_canaries, judge_batch=judge_batch, device=device,
                   batch_size=batch_size, backend=backend, ray_address=ray_address, num_workers=num_workers,
                   gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                   ignore_checksums=ignore_checksums, benchmark=benchmark, benchmark_root=benchmark_root,
                   on_problem=_print_problem)
    if dry_run:
        for line in api.estimate_judging(dataset, predictions, **options):
            typer.echo(line)
        return
    from ciebench.prefetch import Configuration

    from .travel import refuse_what_the_bundle_lacks

    refuse_what_the_bundle_lacks(Configuration(
        dataset=None if benchmark else dataset, protocol=protocol, metrics=split_names(metrics), judge=judge,
        benchmark=benchmark, judge_prompts=str(judge_prompts) if judge_prompts else None,
        judge_protocol=judge_protocol, benchmark_root=str(benchmark_root) if benchmark_root else None))
    try:
        # summary.json's timing covers the command's whole process: its stage `startup` holds the
        # interpreter, the imports, reading the dataset and finding the predictions
        result = api.score(dataset, predictions, out, timing_since=command_started(), **options)
    except CiebenchError:
        raise
    except (OSError, RuntimeError) as exc:  # a model that cannot be loaded (offline, missing weights)
        raise _environment(exc, out, resumable=False) from exc
    _print_summary(result.summary, out)
    bad = [r for r in result.rows if r["status"] != Status.OK]
    for row in bad:
        typer.echo(f"  {row['status']}: sample {row['sample_id']}: {row['error']}", err=True)
    _check_result(result.summary, split_names(metrics), min_coverage)
    if bad and not allow_missing:
        raise IncompleteResult(f"{len(bad)} prediction(s) missing or unusable", hint="pass --allow-missing to accept")


@app.command("editors")
def editors_cmd() -> None:
    """List registered editors and what they need."""
    from ciebench.registry import EDITORS, RegistryError, load_object

    for name, target in EDITORS.names().items():
        try:
            cls = load_object(target, "editor")
            needs = ", ".join(cls.requires) or "-"
            extra = "  [oracle mask: not comparable with reasoning editors]" if cls.oracle_mask else ""
            presets = ", ".join(cls.presets) or "-"
            typer.echo(f"{name:<16} track: {cls.track:<8} needs: {needs:<28} presets: {presets:<14} {target}{extra}")
            for line in cls.catalog() if hasattr(cls, "catalog") else ():
                typer.echo(f"{'':<18}{line}")
        except RegistryError as exc:
            typer.echo(f"{name:<16} unavailable: {exc}")
    typer.echo("rewrite:EDITOR   track: rewrite  any editor above behind the reference instruction rewriter (an LLM)")


@app.command("metrics")
def metrics_cmd() -> None:
    """List metrics (from the metric catalogue) and protocols."""
    from ciebench.metrics import catalogue
    from ciebench.metrics.protocols import get_protocol, list_protocols

    typer.echo("metrics (column: direction, --metrics name, family, title):")
    for info in catalogue.CATALOGUE.values():
        if info.family != catalogue.BENCHMARK:
            needs = f" (needs {info.needs})" if info.needs else ""
            typer.echo(f"  {info.name:<20} {info.direction + ' is better':<17} {info.metric:<9} {info.family:<13} "
                       f"{info.title}{needs}")
    typer.echo("benchmark headlines (--benchmark):")
    for info in catalogue.CATALOGUE.values():
        if info.family == catalogue.BENCHMARK:
            typer.echo(f"  {info.name:<46} {info.direction + ' is better':<17} {info.description}")
    typer.echo("judge protocols (--judge-protocol):")
    for line in list_judge_protocols_lines():
        typer.echo(line)
    typer.echo("protocols:")
    for name in list_protocols():
        proto = get_protocol(name)
        typer.echo(f"  {name:<15} hash {proto.hash}  {getattr(proto, 'description', '')}")

