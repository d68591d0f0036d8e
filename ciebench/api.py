"""The Python front door: `ciebench.evaluate` and `ciebench.score`.

They are the `ciebench evaluate` and `ciebench score` commands as functions (the commands call them),
with every option named as on the command line (`--batch-size` is `batch_size=`), and return a
`RunResult` instead of printing. The dataset is any spec the command line takes ("mini", "ciebench",
a folder, a saved Hugging Face dataset, "hf:ORG/NAME[@rev]"), or a dataset already loaded with
`ciebench.read_dataset` / `ciebench.load_dataset`.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Union

from .allocator import reuse_freed_memory
from .errors import DataError, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from ciebench.datasets import LoadedDataset
    from ciebench.datasets.problems import Problem

    from .backend import Backend
    from .editor import Editor
    from .runner import RunStats
    from .scoring import ScoreOptions

log = logging.getLogger(__name__)

DatasetArg = Union[str, Path, "LoadedDataset", Any]  # a spec, a LoadedDataset or a datasets.Dataset
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class RunResult:
    """What `evaluate` and `score` leave in `run_dir` (samples.csv, samples.jsonl, summary.json,
    spec.json), as returned to Python. `stats` counts generation (None for `score`); `rows` are the
    samples.csv rows as dicts (empty for a judge-scored benchmark, whose cases are in `run_dir`)."""

    run_dir: Path
    summary: dict[str, Any]
    stats: RunStats | None = None
    rows: tuple[dict[str, Any], ...] = ()

    @property
    def metrics(self) -> dict[str, float]:
        """Each metric's mean over samples, as a float (NaN when no sample has a value)."""
        from .stats import from_json_number

        return {name: from_json_number(m["mean"]) for name, m in self.summary.get("metrics", {}).items()}

    def samples(self) -> pd.DataFrame:
        """samples.csv as a DataFrame, read back as the leaderboard reads it."""
        from .results import read_samples

        return read_samples(self.run_dir)


def evaluate(editor: str | Editor, dataset: DatasetArg, out: str | Path, *,
             seeds: Iterable[int] = (0,), limit: int | None = None, protocol: str | None = None,
             metrics: Iterable[str] | None = None, judge: str | None = None, judge_protocol: str | None = None,
             judge_passes: int = 1, judge_prompts: str | None = None, max_cost: float | None = None,
             judge_canaries: str = "day", device: str = "cpu", batch_size: int = 1,
             editor_args: Iterable[str] = (), editor_config: str | Path | None = None, preset: str | None = None,
             overwrite: bool = False, retry_failed: bool = False, backend: str | Backend = "local",
             ray_address: str | None = None, num_workers: int | None = None, gpus_per_worker: float | None = None,
             cpus_per_worker: float = 1.0, ignore_checksums: bool = False, progress: bool = True,
             benchmark: str | None = None, benchmark_root: str | None = None,
             on_problem: Callable[[Problem], None] | None = None) -> RunResult:
    """Run `editor` on `dataset` into the resumable run folder `out`, then score it.

    `editor`: a registered name (see `ciebench editors`), "package.module:Class", "rewrite:NAME", or an
    `Editor` instance (then `editor_args`, `editor_config` and `preset` must be left out). `backend`:
    "local", "ray" (with `ray_address`, `num_workers`, `gpus_per_worker`, `cpus_per_worker`) or a
    `Backend` instance, used as is and left open. An existing `out` with the same spec is resumed:
    finished samples are not redone. `benchmark` (see `ciebench benchmarks`) replaces `dataset`; a
    judge-scored benchmark runs its own generation and official scoring. Dataset problems (skipped
    samples) go to `on_problem`, or to the log. Like the `ciebench` command, it sets this process's
    allocator to reuse freed memory (`ciebench.allocator`; CIEBENCH_ALLOCATOR=system leaves it)."""
    from .runner import RunOptions, run

    reuse_freed_memory()
    out = Path(out)
    seeds = _seeds(seeds)
    bench = _benchmark(benchmark)
    if bench is not None and bench.pipeline != "dataset":
        refuse_unused_options(bench, {
            "--seeds (a benchmark run uses the run seed 0, as the official protocols do)": seeds != (0,),
            "--backend ray": backend != "local", "--batch-size": batch_size != 1,
            **judge_options_set(judge_protocol, judge_passes, max_cost, judge_canaries),
            "--ignore-checksums": ignore_checksums})
        return _evaluate_benchmark(bench, editor, out, benchmark_root, limit, judge, judge_prompts, overwrite,
                                   retry_failed, seeds=seeds, backend=backend, protocol=protocol, metrics=metrics,
                                   device=device, editor_args=editor_args, editor_config=editor_config, preset=preset,
                                   progress=progress)
    dataset = _benchmark_dataset(bench, benchmark_root) if bench is not None else dataset
    score_options = _score_options(protocol, metrics, judge, device, None, judge_protocol, judge_passes,
                                   judge_prompts, max_cost, judge_canaries)
    built = _backend(backend, ray_address, num_workers, gpus_per_worker)
    loaded = _load(dataset, ignore_checksums, on_problem)
    ed = _editor(editor, editor_args, editor_config, preset)
    options = RunOptions(seeds=seeds, limit=limit, batch_size=batch_size, device=device, overwrite=overwrite,
                         retry_failed=retry_failed, progress=progress, score=score_options)
    try:
        if built is not None:  # the caller's backend: used as is, left open
            stats, result = run(ed, loaded, out, options, backend=built)
        else:
            recipe = None
            if backend == "ray" and isinstance(editor, str):
                from .distributed import EditorRecipe

                # the recipe carries the config file's text: Ray workers may not share this machine's disk
                recipe = EditorRecipe.from_cli(editor, list(editor_args), editor_config, preset)
            with _named_backend(backend, ray_address, num_workers, gpus_per_worker, cpus_per_worker, device,
                                recipe) as owned:
                stats, result = run(ed, loaded, out, options, backend=owned)
    finally:
        if isinstance(editor, str):  # built here: its models go now, also after an error
            ed.close()
    return RunResult(out, result.summary, stats, tuple(result.rows))


def score(dataset: DatasetArg, predictions: str | Path, out: str | Path, *,
          limit: int | None = None, protocol: str | None = None, metrics: Iterable[str] | None = None,
          judge: str | None = None, judge_protocol: str | None = None, judge_passes: int = 1,
          judge_prompts: str | None = None, max_cost: float | None = None, judge_canaries: str = "day",
          judge_batch: bool = False, device: str = "cpu", batch_size: int = 8, backend: str | Backend = "local",
          ray_address: str | None = None, num_workers: int | None = None, gpus_per_worker: float | None = None,
          cpus_per_worker: float = 1.0, ignore_checksums: bool = False, progress: bool = True,
          benchmark: str | None = None, benchmark_root: str | None = None,
          on_problem: Callable[[Problem], None] | None = None, timing_since: float | None = None) -> RunResult:
    """Score a folder of edited images (`<id>.png|jpg|jpeg|webp`, or a run's `images/`: at every seed its
    `<id>__s<seed>` files name, see `scoring.find_predictions`), or `hf:ORG/NAME[@rev]` of a run
    exported with `ciebench export`, against `dataset` into `out` (samples.csv, samples.jsonl,
    summary.json, and a spec.json of the same shape as a run's, with `editor` null, the seeds scored
    and `predictions` recorded; for an export also `predictions_source`: the `hf:` spec, the hub commit
    it resolved to and the dataset's fingerprint). A prediction that is missing or
    unreadable is a row with that status, not an error: see `RunResult.rows`. `benchmark` replaces
    `dataset` for a benchmark scored through the dataset pipeline (a judge-scored one has its own
    `ciebench score --benchmark`). Sets the allocator as `evaluate` does. `timing_since`: a
    `time.perf_counter()` reading from which summary.json's `timing` counts, the time before scoring
    began being its stage `startup` (the `ciebench score` command passes its process's start,
    `ciebench.metrics.timing.process_started()`; default: from when scoring begins)."""
    reuse_freed_memory()
    loaded, predictions, found, options, built, source = _score_inputs(
        dataset, predictions, limit, protocol, metrics, judge, judge_protocol, judge_passes, judge_prompts, max_cost,
        judge_canaries, judge_batch, device, batch_size, backend, ray_address, num_workers, gpus_per_worker,
        ignore_checksums, benchmark, benchmark_root, on_problem)
    out = Path(out)
    if built is not None:
        return _score(loaded, predictions, source, found, out, options, limit, progress, built, timing_since)
    with _named_backend(backend, ray_address, num_workers, gpus_per_worker, cpus_per_worker, device, None) as owned:
        return _score(loaded, predictions, source, found, out, options, limit, progress, owned, timing_since)


def estimate_judging(dataset: DatasetArg, predictions: str | Path, **options: Any) -> list[str]:
    """`ciebench score --dry-run`: what judging the predictions with `score(..., judge=...)` and the same
    options would send and cost (cached calls are free), as printable lines. Nothing is sent or written."""
    import inspect

    from ciebench.judge.run import dry_run_report

    given = inspect.signature(score).bind(dataset, predictions, None, **options)  # score's own option names and defaults
    given.apply_defaults()
    args = {k: v for k, v in given.arguments.items() if k not in ("out", "progress", "cpus_per_worker", "timing_since")}
    loaded, _, found, score_options, _, _ = _score_inputs(**args)
    return dry_run_report(loaded, found, score_options)


def _score_inputs(dataset, predictions, limit, protocol, metrics, judge, judge_protocol, judge_passes, judge_prompts,
                  max_cost, judge_canaries, judge_batch, device, batch_size, backend, ray_address, num_workers,
                  gpus_per_worker, ignore_checksums, benchmark, benchmark_root, on_problem):
    """(dataset, predictions folder, the predictions found in it, score options, the caller's backend or
    None, the exported run the folder was made from or None), every option checked before the dataset
    loads."""
    from .scoring import find_predictions

    bench = _benchmark(benchmark)
    if bench is not None:
        if bench.pipeline != "dataset":
            raise UsageError(f"benchmark {bench.name} is judge-scored: use `ciebench score --benchmark {bench.name}`")
        dataset = _benchmark_dataset(bench, benchmark_root)
    exported = str(predictions).startswith("hf:")  # a run exported with `ciebench export --format hub`
    if not exported and not Path(predictions).is_dir():
        raise UsageError(f"--predictions {predictions} is not a folder")
    options = _score_options(protocol, metrics, judge, device, batch_size, judge_protocol, judge_passes,
                             judge_prompts, max_cost, judge_canaries, judge_batch)
    built = _backend(backend, ray_address, num_workers, gpus_per_worker)
    source = None
    if exported:  # downloaded only once every option is known to be good
        from .export import materialize_predictions

        predictions, source = materialize_predictions(str(predictions))
    predictions = Path(predictions)
    loaded = _load(dataset, ignore_checksums, on_problem)
    ids = loaded.dataset["id"][: limit if limit is not None else None]
    return loaded, predictions, find_predictions(predictions, ids), options, built, source


def _score(loaded: LoadedDataset, predictions: Path, source: dict | None, found: list, out: Path,
           options: ScoreOptions, limit: int | None, progress: bool, backend: Backend,
           timing_since: float | None = None) -> RunResult:
    from . import outdir
    from .io import atomic_write_json
    from .runner import RunOptions, build_spec
    from .scoring import score as score_predictions

    # the seeds scored are those the predictions' file names give (`find_predictions`)
    seeds = tuple(dict.fromkeys(p.seed for p in found)) or (0,)
    spec = build_spec(None, loaded, RunOptions(seeds=seeds, limit=limit, batch_size=options.batch_size,
                                               device=options.device, progress=progress, score=options),
                      predictions=str(predictions.resolve()), predictions_source=source)
    outdir.claim(out, "score")
    with outdir.lock(out):
        outdir.clean_stale_temp(out)
        result = score_predictions(loaded, found, out, options, progress=progress, backend=backend,
                                   timing_since=timing_since)
        # spec.json describes the results beside it, so it is written once they are: a score that fails
        # (a model that cannot load, Ctrl-C) leaves an earlier score's spec.json with that score's results
        atomic_write_json(out / "spec.json", spec.to_dict())
    return RunResult(out, result.summary, None, tuple(result.rows))


# --- options ----------------------------------------------------------------------------------------

def _seeds(seeds: Iterable[int]) -> tuple[int, ...]:
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise UsageError(f"seeds must be distinct integers, e.g. (0, 1, 2), not {seeds!r}")
    return seeds


def _score_options(protocol, metrics, judge, device, batch_size, judge_protocol, judge_passes, judge_prompts,
                   max_cost, judge_canaries, judge_batch=False) -> ScoreOptions:
    """The scoring options, checked now: an unknown metric or a device this machine lacks fails before
    any model loads (and before any sample is edited)."""
    from ciebench.judge.run import JudgeRunOptions

    from .devices import resolve_device
    from .scoring import ScoreOptions, resolve_metrics

    resolve_device(device)
    if isinstance(metrics, str):
        raise UsageError(f"metrics takes a list of names, e.g. ['psnr', 'ssim'], not the string {metrics!r}")
    judge_options = JudgeRunOptions(protocol=judge_protocol, passes=judge_passes, prompts_dir=judge_prompts,
                                    max_cost=max_cost, canaries=judge_canaries, batch=judge_batch)
    options = ScoreOptions(protocol=protocol, metrics=tuple(metrics) if metrics is not None else None, judge=judge,
                           device=device, judge_options=judge_options,
                           **({"batch_size": batch_size} if batch_size is not None else {}))
    resolve_metrics(options)
    return options


def _backend(backend: Any, ray_address, num_workers, gpus_per_worker) -> Backend | None:
    """The caller's `Backend`, or None after checking the options of a named one (built later, once the
    editor's recipe is known)."""
    from .backend import Backend

    ray_options = ray_address is not None or num_workers is not None or gpus_per_worker is not None
    if isinstance(backend, Backend):
        if ray_options:
            raise UsageError("ray_address, num_workers and gpus_per_worker configure backend='ray'; a Backend "
                             "instance carries its own options")
        return backend
    if backend == "local":
        if ray_options:
            raise UsageError("--ray-address, --num-workers and --gpus-per-worker need --backend ray")
        return None
    if backend != "ray":
        raise UsageError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}, or a Backend instance")
    try:
        import ray  # noqa: F401
    except ImportError:
        from .errors import EnvironmentProblem

        raise EnvironmentProblem("--backend ray needs Ray", hint="pip install 'ciebench[ray]'") from None
    if num_workers is not None and num_workers < 1:
        raise UsageError("--num-workers must be at least 1")
    return None


def _named_backend(backend: str, ray_address, num_workers, gpus_per_worker, cpus_per_worker, device,
                   recipe) -> Backend:
    """A fresh backend of the name `backend` ("local" or "ray", already checked by `_backend`)."""
    if backend == "local":
        from .backend import LocalBackend

        return LocalBackend()
    from .distributed import RayBackend, RayOptions

    gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if device.startswith("cuda") else 0.0)
    return RayBackend(RayOptions(address=ray_address, num_workers=num_workers, gpus_per_worker=gpus,
                                 cpus_per_worker=cpus_per_worker), recipe)


def _editor(editor: Any, args: Iterable[str], config: str | Path | None, preset: str | None) -> Editor:
    from .editor import Editor

    if isinstance(editor, Editor):
        if tuple(args) or config is not None or preset is not None:
            raise UsageError("editor_args, editor_config and preset configure an editor given by name; "
                             "an Editor instance is used as built")
        return editor
    if not isinstance(editor, str):
        raise UsageError(f"editor must be a registered name, 'package.module:Class' or an Editor, not {editor!r}")
    from .editor_config import build_editor

    return build_editor(editor, list(args), config, preset)


def _load(dataset: Any, ignore_checksums: bool, on_problem: Callable[[Problem], None] | None) -> LoadedDataset:
    from ciebench.datasets import LoadedDataset, read_dataset, wrap_dataset

    if isinstance(dataset, LoadedDataset):
        loaded = dataset
    elif isinstance(dataset, (str, Path)):
        loaded = read_dataset(str(dataset), verify=not ignore_checksums)
    elif hasattr(dataset, "features") and hasattr(dataset, "column_names"):  # a datasets.Dataset
        loaded = wrap_dataset(dataset)
    else:
        raise UsageError(f"dataset must be a spec (mini, ciebench, a folder, hf:ORG/NAME) or a loaded dataset, "
                         f"not {type(dataset).__name__}")
    for problem in loaded.problems:
        (on_problem or (lambda p: log.warning("%s", p)))(problem)
    if len(loaded.dataset) == 0:
        raise DataError(f"dataset {loaded.spec} has no usable samples", hint=f"see `ciebench data validate {loaded.spec}`")
    return loaded


# --- benchmarks -------------------------------------------------------------------------------------

def _benchmark(name: str | None) -> Any:
    if name is None:
        return None
    from ciebench.benchmarks import get_benchmark

    return get_benchmark(name)  # an unknown name: RegistryError, with a did-you-mean


def _benchmark_dataset(bench: Any, root: str | None) -> str:
    try:
        return bench.dataset_for(root)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _evaluate_benchmark(bench: Any, editor: Any, out: Path, root, limit, judge, judge_prompts, overwrite,
                        retry_failed, *, seeds, backend, protocol, metrics, device, editor_args, editor_config,
                        preset, progress) -> RunResult:
    """A judge-scored benchmark (RISEBench, ...): its own generation and official scoring; `metrics`,
    `protocol` and `device` choose ciebench's region metrics on cases with a ground-truth image."""
    from ciebench.benchmarks import session
    from ciebench.benchmarks.region import region_options

    region = region_options(tuple(metrics) if metrics is not None else None, protocol, device)  # before any model loads
    ed = _editor(editor, editor_args, editor_config, preset)
    options = session.BenchOptions(root=root, limit=limit, judge=judge, judge_prompts=judge_prompts,
                                   overwrite=overwrite, retry_failed=retry_failed, progress=progress, region=region)
    try:
        with benchmark_errors():
            summary = session.evaluate(bench, ed, out, options)
    finally:
        if isinstance(editor, str):
            ed.close()
    return RunResult(out, summary)


def refuse_unused_options(bench: Any, given: dict[str, bool]) -> None:
    """Raise a UsageError naming every option in `given` that was set (True) but that a judge-scored
    benchmark does not use: ignoring one silently would let a user believe it applied (a cost cap
    that caps nothing)."""
    unused = [flag for flag, is_set in given.items() if is_set]
    if unused:
        raise UsageError(f"not available with the judge-scored --benchmark {bench.name}: {'; '.join(unused)}",
                         hint="its official judging decides these; leave them out")


def judge_options_set(judge_protocol, judge_passes, max_cost, judge_canaries) -> dict[str, bool]:
    """The IDCS judge's options (for `refuse_unused_options`): a benchmark's judge follows its own protocol."""
    return {"--judge-protocol": judge_protocol is not None, "--judge-passes": judge_passes != 1,
            "--max-cost (its judge calls are not capped: try a --limit run first to see their number)":
                max_cost is not None,
            "--judge-canaries": judge_canaries != "day"}


@contextlib.contextmanager
def benchmark_errors() -> Iterator[None]:
    """A benchmark's malformed annotation, verdict file or case, or its missing data, as a `DataError`."""
    try:
        yield
    except (ValueError, KeyError) as exc:
        raise DataError(str(exc)) from exc
    except FileNotFoundError as exc:  # the benchmark's data or a published file is not here
        raise DataError(str(exc), hint="pass the benchmark's folder with --benchmark-root") from exc
