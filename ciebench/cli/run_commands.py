"""`ciebench evaluate | score | editors | metrics`: running editors and scoring predictions."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .data import DATASET_HELP


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"--seeds takes comma-separated integers, not {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise typer.BadParameter("--seeds needs distinct integers, e.g. 0,1,2")
    return seeds


def _metrics(text: Optional[str]) -> Optional[tuple[str, ...]]:
    return tuple(m.strip() for m in text.split(",") if m.strip()) if text else None


def _load(dataset: str, ignore_checksums: bool):
    from ..datasets import DatasetError, read_dataset

    try:
        loaded = read_dataset(dataset, verify=not ignore_checksums)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    for problem in loaded.problems:
        typer.echo(str(problem), err=True)
    return loaded


def _print_summary(summary: dict, out: Path) -> None:
    typer.echo(f"\nresults in {out}/ (samples.csv, summary.json)")
    for name, m in summary["metrics"].items():
        ci = m["ci95"]
        typer.echo(f"  {name:<20} {_fmt(m['mean'])}  [{_fmt(ci[0])}, {_fmt(ci[1])}]  n={m['n']}  coverage={m['coverage']:.0%}")
    counts = ", ".join(f"{k}: {v}" for k, v in summary["status_counts"].items())
    typer.echo(f"  statuses: {counts}")


def _ray_backend(backend: str, ray_address: Optional[str], num_workers: Optional[int], gpus_per_worker: Optional[float],
                 cpus_per_worker: float, device: str):
    """None for the local backend, else a `RayBackend` (not yet connected)."""
    if backend == "local":
        if ray_address or num_workers is not None or gpus_per_worker is not None:
            raise typer.BadParameter("--ray-address, --num-workers and --gpus-per-worker need --backend ray")
        return None
    if backend != "ray":
        raise typer.BadParameter(f"unknown backend {backend!r}; available: local, ray")
    try:
        import ray  # noqa: F401
    except ImportError:
        typer.echo("error: --backend ray needs Ray: pip install 'ciebench[ray]'", err=True)
        raise typer.Exit(2)
    from ..distributed import RayBackend, RayOptions

    if num_workers is not None and num_workers < 1:
        raise typer.BadParameter("--num-workers must be at least 1")
    gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if device.startswith("cuda") else 0.0)
    return RayBackend(RayOptions(address=ray_address, num_workers=num_workers, gpus_per_worker=gpus,
                                 cpus_per_worker=cpus_per_worker))


BACKEND_HELP = "local | ray (shard samples to Ray workers; see docs/scale.md)."
RAY_ADDRESS_HELP = ("Ray cluster to join: auto (the cluster of `ray start` on this machine), HOST:PORT, or "
                    "ray://HOST:10001. Default: $RAY_ADDRESS, else a private local Ray for this run.")
NUM_WORKERS_HELP = "Ray workers (default: as many as the cluster's GPUs, or CPUs, allow)."
GPUS_HELP = "GPUs per Ray worker (default 1 with --device cuda, else 0; fractions share a GPU)."
CPUS_HELP = "CPUs per Ray worker."

# Options shared by `evaluate` and `score`, declared once.
ProtocolOpt = Annotated[Optional[str], typer.Option("--protocol", "-p", help="cielr | smartedit | exact | cielr-full | smartedit-full (default: the dataset's).")]
MetricsOpt = Annotated[Optional[str], typer.Option("--metrics", help="Comma-separated metrics (default: all region metrics, + idcs with --judge).")]
JudgeOpt = Annotated[Optional[str], typer.Option("--judge", help="IDCS judge preset (qwen, openai, local, lite) or config file; omit for no IDCS.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N")]
BackendOpt = Annotated[str, typer.Option("--backend", help=BACKEND_HELP)]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help=RAY_ADDRESS_HELP)]
NumWorkersOpt = Annotated[Optional[int], typer.Option("--num-workers", help=NUM_WORKERS_HELP)]
GpusPerWorkerOpt = Annotated[Optional[float], typer.Option("--gpus-per-worker", help=GPUS_HELP)]
CpusPerWorkerOpt = Annotated[float, typer.Option("--cpus-per-worker", help=CPUS_HELP)]
IgnoreChecksumsOpt = Annotated[bool, typer.Option("--ignore-checksums", help="Accept a CIEBench release that differs from the shipped sha256 manifest.")]


def _fmt(v) -> str:
    return f"{v:8.4f}" if isinstance(v, float) else f"{str(v):>8}"


@app.command("evaluate")
def evaluate_cmd(
    editor: str = typer.Option(..., "--editor", "-e", help="Registered editor name (see `ciebench editors`) or package.module:Class."),
    dataset: str = typer.Option("mini", "--dataset", "-d", help=DATASET_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (created; an existing one with the same spec is resumed)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N samples."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated run seeds, e.g. 0,1,2."),
    protocol: ProtocolOpt = None,
    metrics: MetricsOpt = None,
    judge: JudgeOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Editor batch size (scoring batches separately)."),
    editor_arg: list[str] = typer.Option([], "--editor-arg", help="Editor option key=value (repeatable), typed by the editor's config."),
    editor_config: Optional[Path] = typer.Option(None, "--editor-config", help="YAML file of editor options."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Named editor preset (e.g. lite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard an existing run with a different spec in --out."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo samples that failed in an earlier attempt."),
    backend: BackendOpt = "local",
    ray_address: RayAddressOpt = None,
    num_workers: NumWorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    ignore_checksums: IgnoreChecksumsOpt = False,
) -> None:
    """Run an editor on a dataset into a resumable run directory, then score it."""
    from ..editor_config import EditorConfigError, build_editor
    from ..registry import RegistryError
    from ..runner import RunError, RunOptions, run
    from ..scoring import ScoreOptions

    distributed = _ray_backend(backend, ray_address, num_workers, gpus_per_worker, cpus_per_worker, device)
    loaded = _load(dataset, ignore_checksums)
    try:
        ed = build_editor(editor, editor_arg, editor_config, preset)
    except (RegistryError, EditorConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    if distributed is not None:
        from ..distributed import EditorRecipe

        distributed.recipe = EditorRecipe.from_cli(editor, editor_arg, editor_config, preset)
    options = RunOptions(
        seeds=_seeds(seeds), limit=limit, batch_size=batch_size, device=device, overwrite=overwrite,
        retry_failed=retry_failed,
        score=ScoreOptions(protocol=protocol, metrics=_metrics(metrics), judge=judge, device=device),
    )
    try:
        if distributed is None:
            stats, result = run(ed, loaded, out, options)
        else:
            from ..distributed import DistributedError

            try:
                with distributed:
                    stats, result = run(ed, loaded, out, options, backend=distributed.generate,
                                        region=distributed.region_scoring())
            except DistributedError as exc:
                typer.echo(f"error: {exc}\nfinished samples are kept in {out}; rerun the same command to resume.", err=True)
                raise typer.Exit(1)
    except RunError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    except (OSError, RuntimeError) as exc:  # a model that cannot be loaded (offline, missing weights)
        typer.echo(f"error: {exc}\nfinished samples are kept in {out}; fix the cause and rerun the same command to "
                   "resume (use -v for details).", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: finished samples are kept in {out}; rerun the same command to resume.", err=True)
        raise typer.Exit(130)
    finally:
        ed.close()
    typer.echo(f"generated {stats.generated}, resumed {stats.skipped}, failed {stats.failed}")
    _print_summary(result.summary, out)


@app.command("score")
def score_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help=DATASET_HELP),
    predictions: Path = typer.Option(..., "--predictions", help="Folder of <id>.png|jpg|webp edited images."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for samples.csv and summary.json."),
    protocol: ProtocolOpt = None,
    metrics: MetricsOpt = None,
    judge: JudgeOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: int = typer.Option(8, "--batch-size", "-b"),
    limit: Optional[int] = typer.Option(None, "--limit"),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Exit 0 even when predictions are missing or unreadable."),
    backend: BackendOpt = "local",
    ray_address: RayAddressOpt = None,
    num_workers: NumWorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    ignore_checksums: IgnoreChecksumsOpt = False,
) -> None:
    """Score a folder of edited images against a dataset."""
    from ..io import atomic_write_json
    from ..scoring import ScoreOptions, find_predictions, score

    if not predictions.is_dir():
        typer.echo(f"error: --predictions {predictions} is not a folder", err=True)
        raise typer.Exit(2)
    distributed = _ray_backend(backend, ray_address, num_workers, gpus_per_worker, cpus_per_worker, device)
    loaded = _load(dataset, ignore_checksums)
    ids = loaded.dataset["id"][: limit if limit is not None else None]
    options = ScoreOptions(protocol=protocol, metrics=_metrics(metrics), judge=judge, device=device, batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "spec.json", {"editor": None, "predictions": str(predictions.resolve()),
                                          "dataset": {"spec": dataset, "revision": loaded.revision, "n": len(ids)},
                                          "score_options": options.__dict__})
    try:
        if distributed is None:
            result = score(loaded, find_predictions(predictions, ids), out, options)
        else:
            from ..distributed import DistributedError

            try:
                with distributed:
                    result = score(loaded, find_predictions(predictions, ids), out, options,
                                   region=distributed.region_scoring())
            except DistributedError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    except (OSError, RuntimeError) as exc:  # a model that cannot be loaded (offline, missing weights)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    _print_summary(result.summary, out)
    bad = [r for r in result.rows if r["status"] != "ok"]
    for row in bad:
        typer.echo(f"  {row['status']}: sample {row['sample_id']}: {row['error']}", err=True)
    if bad and not allow_missing:
        typer.echo(f"{len(bad)} prediction(s) missing or unusable (pass --allow-missing to accept)", err=True)
        raise typer.Exit(1)


@app.command("editors")
def editors_cmd() -> None:
    """List registered editors and what they need."""
    from ..registry import EDITORS, RegistryError, load_object

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
    """List metrics and protocols."""
    from ..metrics.protocols import get_protocol, list_protocols
    from ..metrics.region import METRIC_INFO

    typer.echo("metrics (column: higher is better):")
    for name, higher in METRIC_INFO.items():
        typer.echo(f"  {name:<20} {'higher' if higher else 'lower'} is better")
    typer.echo(f"  {'idcs':<20} higher is better (needs --judge)")
    typer.echo("protocols:")
    for name in list_protocols():
        proto = get_protocol(name)
        typer.echo(f"  {name:<15} hash {proto.hash}  {getattr(proto, 'description', '')}")


from .leaderboard import leaderboard_cmd  # noqa: E402  (cheap: the leaderboard package loads when it runs)

app.command("leaderboard")(leaderboard_cmd)

from . import baselines as _baselines  # noqa: E402,F401  (registers `ciebench baselines smartedit ...`)
