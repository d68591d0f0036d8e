"""`--backend ray`: the same runs, sharded to Ray actors across GPUs and machines (`RayBackend`).

Generation: each worker actor rebuilds the editor once from its recipe (registered name, editor args,
config text and preset; or, from Python, the editor's class and config) and keeps it. The driver streams batches of raw
dataset rows (encoded image bytes, never decoded images) to the workers, at most `window` batches in
flight per worker, and gets back plain data: PNG bytes, trace and record fields
(`runner.PreparedResult`). The driver alone writes them (`runner.commit_result`, atomic, record last),
so a run directory is the same whichever backend wrote it, and either backend resumes the other's.

Scoring: region metrics run on actors that each load the metric models once (`RegionScorer`), fed
chunks of (dataset row, prediction bytes); the driver merges the values into the same samples.csv
through `scoring.score`.

The actors run on `ciebench.ray_pool.WorkerPool`, which replaces a worker that dies: what it finished
is kept, and a sample whose worker died more than `max_retries` times is recorded as an edit error,
which `--retry-failed` redoes later. Nothing finished is redone; nothing is written twice.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

from .backend import Backend, Key
from .editor import Editor, EditResult
from .ray_pool import DistributedError, GaveUp, RayOptions, RaySession, Task, WorkerPool
from .runner import PendingSamples, RunOptions, RunStats, commit_result, prepare_result
from .scoring import ScoreEntry, ScoreOptions

log = logging.getLogger(__name__)

__all__ = ["DistributedError", "EditorRecipe", "RayBackend", "RayOptions"]


@dataclass(frozen=True)
class EditorRecipe:
    """How a worker rebuilds the editor: the command-line recipe (name, --editor-arg, the config file's
    text, since workers may not share the driver's disk, and the preset), or a class path and a config
    object for editors built in Python. Never a model."""

    name: str | None = None
    args: tuple[str, ...] = ()
    config_text: str | None = None
    preset: str | None = None
    cls: type | None = None  # pickled by reference (by value only for classes defined in __main__)
    config: Any = None

    @classmethod
    def from_cli(cls, name: str, args: Iterable[str] = (), config_file: str | Path | None = None,
                 preset: str | None = None) -> "EditorRecipe":
        text = Path(config_file).read_text(encoding="utf-8") if config_file else None
        return cls(name=name, args=tuple(args), config_text=text, preset=preset)

    @classmethod
    def from_editor(cls, editor: Editor) -> "EditorRecipe":
        return cls(cls=type(editor), config=editor.config)

    def build(self) -> Editor:
        if self.name is None:
            return self.cls(config=self.config)
        from .editor_config import build_editor

        if self.config_text is None:
            return build_editor(self.name, list(self.args), None, self.preset)
        with tempfile.TemporaryDirectory(prefix="ciebench-editor-config-") as tmp:
            path = Path(tmp) / "editor.yaml"
            path.write_text(self.config_text, encoding="utf-8")
            return build_editor(self.name, list(self.args), path, self.preset)


# --- rows on the wire ------------------------------------------------------------------------------

class RowReader:
    """Raw dataset rows (encoded image bytes, not decoded images), read one at a time."""

    def __init__(self, dataset: Any):
        self.arrow = dataset.with_format("arrow")
        self.features = dataset.features

    def __call__(self, index: int) -> dict[str, Any]:
        row = self.arrow[index].to_pylist()[0]
        for key, value in row.items():
            if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
                # workers may be on other machines: ship the file's bytes, not the driver's path
                row[key] = {"bytes": Path(value["path"]).read_bytes(), "path": value["path"]}
        return row


def decode_row(features: Any, row: dict[str, Any]):
    """An `EditSample` decoded exactly as `dataset[i]` decodes it (the dataset's own features)."""
    from .schema import EditSample

    return EditSample.from_row(features.decode_example(row))


# --- generation ------------------------------------------------------------------------------------

def driver_threads(options: RayOptions) -> int | None:
    """The torch intra-op thread count a local run would use here, for CPU workers to copy."""
    if not options.match_driver_threads:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def _set_up_worker(threads: int | None, device: str) -> None:
    """A worker process computes as the driver's would: same allocator settings, same threads; and,
    being ciebench's own process like the command's, the command's garbage-collector schedule."""
    from .allocator import reuse_freed_memory
    from .collector import collect_less

    reuse_freed_memory()
    collect_less()
    # Set explicitly: whether Ray's OMP_NUM_THREADS reaches torch depends on when torch was imported.
    if threads and device == "cpu":
        import torch

        torch.set_num_threads(threads)


class EditWorker:
    """A Ray actor: the editor, built once; edits batches of raw rows into `PreparedResult`s."""

    def __init__(self, recipe: EditorRecipe, features: Any, device: str, threads: int | None = None):
        _set_up_worker(threads, device)
        self.editor = recipe.build()
        self.editor.to(device)
        self.features = features

    def ready(self) -> dict[str, Any]:
        return {"editor": self.editor.describe(), "pid": os.getpid(), "node": _node()}

    def edit(self, batch: list[tuple[dict[str, Any], int]]) -> tuple[list[Any], int, tuple[str, dict[str, str] | None]]:
        """The batch's results, the editor calls made, and (this machine, the commits its hub cache
        resolves the editor's models to), read after the models loaded."""
        from .runner import edit_isolated, editor_models, make_request

        samples = [(decode_row(self.features, row), seed) for row, seed in batch]
        stats = RunStats()
        requests = [make_request(self.editor, sample, seed) for sample, seed in samples]
        results = edit_isolated(self.editor, requests, stats)
        prepared = [prepare_result(sample.id, seed, sample.image.size, result)
                    for (sample, seed), result in zip(samples, results)]
        return prepared, stats.editor_calls, (_node(), editor_models(self.editor))


def _node() -> str:
    import socket

    return socket.gethostname()


# --- region scoring --------------------------------------------------------------------------------

class RegionWorker:
    """A Ray actor: one RegionScorer (metric models loaded once) scoring chunks of raw rows + predictions."""

    def __init__(self, protocol: Any, metrics: list[str], device: str, batch_size: int, features: Any,
                 threads: int | None = None):
        _set_up_worker(threads, device)
        from ciebench.metrics.region import RegionScorer

        self.scorer = RegionScorer(protocol, metrics=metrics, device=device, batch_size=batch_size)
        self.features = features

    def ready(self) -> dict[str, Any]:
        return {"models": dict(self.scorer.model_ids()), "pid": os.getpid(), "node": _node()}

    def score(self, chunk: list[tuple[Any, dict[str, Any], str, bytes]]) -> list[tuple[Any, dict[str, Any]]]:
        from .scoring import score_entries

        entries = ((tuple(key), decode_row(self.features, row), name, data) for key, row, name, data in chunk)
        return list(score_entries(self.scorer, entries))


class RayBackend(Backend):
    """Generation and region scoring on Ray workers. Connects on first use (or on `__enter__`) and,
    on `close()`, shuts down only a Ray it started itself.

    `recipe` tells the workers how to rebuild the editor; without one they rebuild it from its class
    and config (`EditorRecipe.from_editor`), which needs the class to be importable on every worker."""

    name = "ray"

    def __init__(self, options: RayOptions | None = None, recipe: EditorRecipe | None = None):
        self.options = options or RayOptions()
        self.recipe = recipe
        self.session = RaySession(self.options)
        self._models: dict[str, str] = {}
        self._editor_reports: dict[tuple[str, str], tuple[str, dict[str, str] | None]] = {}

    def __enter__(self) -> "RayBackend":
        self.session.connect()
        return self

    def close(self) -> None:
        self.session.close()

    def _actor_options(self) -> dict[str, Any]:
        return {"num_cpus": self.options.cpus_per_worker, "num_gpus": self.options.gpus_per_worker,
                "max_restarts": 0, "max_task_retries": 0}

    def _device(self, device: str) -> str:
        # Ray gives each GPU worker its own CUDA_VISIBLE_DEVICES, so "cuda:3" on the driver is "cuda" there
        return "cuda" if device.startswith("cuda") else device

    def generate(self, editor: Editor, pending: PendingSamples, out: Path, options: RunOptions,
                 stats: RunStats) -> None:
        self._editor_reports = {}
        if not len(pending):
            return
        ray = self.session.connect()
        recipe = self.recipe or EditorRecipe.from_editor(editor)
        expected = editor.describe()
        batch = max(1, options.batch_size)
        size = self.session.worker_count(math.ceil(len(pending) / batch))
        reader = RowReader(pending.dataset)

        def check(info):
            if info["editor"] != expected:
                raise DistributedError(
                    "a Ray worker built a different editor than the driver (is the same ciebench and editor "
                    f"package installed on every node?): worker {info['editor']} != driver {expected}")

        remote = ray.remote(EditWorker).options(**self._actor_options())
        device = self._device(options.device)
        threads = driver_threads(self.options)
        pool = WorkerPool(lambda: remote.remote(recipe, reader.features, device, threads), "edit", size, self.options,
                          check, label="editing worker")

        def tasks() -> Iterator[Task]:
            for start in range(0, len(pending.keys), batch):
                items = [(reader(index), seed) for index, seed in pending.keys[start:start + batch]]
                yield Task(items, [(str(row["id"]), seed) for row, seed in items])

        bar = tqdm(total=len(pending), desc=f"editing ({editor.display_name()}, ray x{size})", unit="img",
                   disable=not options.progress)
        results = pool.map(tasks())
        try:
            for task, result in results:
                if isinstance(result, GaveUp):
                    prepared = [prepare_result(sample_id, seed, (0, 0), EditResult.failure(result.error))
                                for sample_id, seed in task.keys]
                    calls = 0
                else:
                    prepared, calls, report = result
                    self._editor_reports[(report[0], json.dumps(report[1], sort_keys=True))] = report
                stats.editor_calls += calls
                for item in prepared:
                    ok = commit_result(out, item, stats.invocation)
                    stats.generated += ok
                    stats.failed += not ok
                    bar.update(1)
        finally:
            results.close()  # stops the workers now, also when writing failed
            bar.close()

    def score_regions(self, loaded: Any, protocol: Any, metrics: list[str], options: ScoreOptions,
                      entries: Iterable[ScoreEntry], timer: Any) -> Iterator[tuple[Key, dict[str, Any]]]:
        # the workers report no stages of their own: the driver's waiting time is "region_remote"
        return _timed_iter(self._score_regions(loaded, protocol, metrics, options, entries), timer, "region_remote")

    def _score_regions(self, loaded: Any, protocol: Any, metrics: list[str], options: ScoreOptions,
                       entries: Iterable[ScoreEntry]) -> Iterator[tuple[Key, dict[str, Any]]]:
        ray = self.session.connect()
        self._models = {}
        reader = RowReader(loaded.dataset)
        # chunks are whole scoring batches, in order, so each batch holds the same predictions as locally
        chunk = max(1, options.batch_size) * max(1, self.options.score_chunk)

        def tasks() -> Iterator[Task]:
            payload, keys = [], []
            for entry in entries:
                payload.append((entry.key, reader(entry.index), entry.name, entry.data))
                keys.append(entry.key)
                if len(payload) == chunk:
                    yield Task(payload, keys)
                    payload, keys = [], []
            if payload:
                yield Task(payload, keys)

        remote = ray.remote(RegionWorker).options(**self._actor_options())
        device = self._device(options.device)
        size = self.session.worker_count()
        threads = driver_threads(self.options)
        pool = WorkerPool(lambda: remote.remote(protocol, metrics, device, options.batch_size, reader.features, threads),
                          "score", size, self.options, label="scoring worker")
        results = pool.map(tasks())
        try:
            for task, result in results:
                if not self._models and pool.info is not None:
                    self._models = dict(pool.info["models"])
                if isinstance(result, GaveUp):
                    for key in task.keys:
                        yield key, {"error": result.error}
                else:
                    for key, values in result:
                        yield tuple(key), values
        finally:
            results.close()

    def model_ids(self) -> dict[str, str]:
        return dict(self._models)

    def editor_models(self, editor: Editor) -> dict[str, str] | None:
        """As the workers that made the last `generate`'s images resolved them, each in its own
        machine's hub cache; the driver's cache when no worker made any."""
        if not self._editor_reports:
            return super().editor_models(editor)
        from .runner import merge_editor_models

        merged = merge_editor_models(self._editor_reports.values())
        mixed = sorted(k for k, v in (merged or {}).items() if v.startswith("differs"))
        if mixed:
            log.warning("the Ray workers loaded different commits of %s (their machines' hub caches differ); "
                        "invocations.json names each commit and machine", ", ".join(mixed))
        return merged


def _timed_iter(iterator: Iterable, timer: Any, name: str) -> Iterator:
    """`iterator`, with the time spent waiting for each item counted as stage `name`."""
    iterator = iter(iterator)
    while True:
        with timer.stage(name):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item
