"""`--backend ray`: the same runs, sharded to Ray actors across GPUs and machines.

Generation: each worker actor rebuilds the editor once from its recipe (registered name, editor args,
config text and preset; or, from Python, the editor's class and config) and keeps it. The driver streams batches of raw
dataset rows (encoded image bytes, never decoded images) to the workers, at most `window` batches in
flight per worker, and gets back plain data: PNG bytes, trace and record fields
(`runner.PreparedResult`). The driver alone writes them (`runner.commit_result`, atomic, record last),
so a run directory is the same whichever backend wrote it, and either backend resumes the other's.

Scoring: region metrics run on actors that each load the metric models once (`RegionScorer`), fed
chunks of (dataset row, prediction bytes); the driver merges the values into the same samples.csv
through `scoring.score`.

Fault tolerance is explicit: actors never restart by themselves (`max_restarts=0`). When a worker
dies, every task it had finished is kept, the task it was running is charged one attempt and
resubmitted (a batch split into single samples, so a sample that kills its worker fails alone), the
tasks queued behind it are resubmitted free, and a new worker replaces it (at most `max_restarts` in
a run). A sample whose worker died more than `max_retries` times is recorded as an edit error, which
`--retry-failed` redoes later. Nothing finished is redone; nothing is written twice.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm.auto import tqdm

from .editor import EditResult, Editor
from .errors import EnvironmentProblem
from .runner import PendingSamples, RunOptions, RunStats, commit_result, prepare_result
from .scoring import ScoreEntry, ScoreOptions

log = logging.getLogger(__name__)


class DistributedError(EnvironmentProblem, RuntimeError):
    pass


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    `address`: None connects to $RAY_ADDRESS when set, or else starts a private local Ray for this run
    (shut down at the end); "auto" joins the cluster this machine belongs to (`ray start`); a
    "host:port" GCS address or "ray://host:10001" (Ray client) joins that cluster. An already
    initialised Ray (e.g. `ray.init()` in a notebook) is used as is and left running.
    `num_workers`: None fills the cluster (GPUs / gpus_per_worker, else CPUs / cpus_per_worker)."""

    address: str | None = None
    num_workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    window: int = 2  # tasks queued per worker: one running, the next one's input already shipped
    max_retries: int = 2  # resubmissions of a sample after a worker died while working on it
    max_restarts: int | None = None  # replacement workers in a run; None: 2 per worker, at least 4
    score_chunk: int = 2  # scoring batches per task
    start_timeout: float = 600.0  # seconds for a worker to be placed and to build its models
    runtime_env: dict[str, Any] | None = None  # passed to ray.init (e.g. {"working_dir": "."} for a cluster)
    # CPU workers use the driver's torch thread count: float32 reductions (the parity metrics, CPU editors)
    # depend on it, so this is what makes the numbers equal to a local run's to the last digit. False
    # keeps Ray's default (threads = CPUs of the worker): faster on a shared CPU node, last digits may differ.
    match_driver_threads: bool = True

    def restarts_allowed(self, workers: int) -> int:
        return self.max_restarts if self.max_restarts is not None else max(4, 2 * workers)


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


# --- connecting -----------------------------------------------------------------------------------

class RaySession:
    """Connects to (or starts) Ray once; `close()` shuts down only what it started."""

    def __init__(self, options: RayOptions):
        self.options = options
        self._started = False

    def connect(self):
        ray = _ray()
        if ray.is_initialized():
            return ray
        address = self.options.address or os.environ.get("RAY_ADDRESS") or "local"
        kwargs: dict[str, Any] = {"address": address, "runtime_env": self.options.runtime_env,
                                  "log_to_driver": True}
        if address == "local":
            kwargs["include_dashboard"] = False
        log.info("connecting to Ray at %s", address)
        ray.init(**kwargs)
        self._started = True
        return ray

    def close(self) -> None:
        if self._started:
            _ray().shutdown()
            self._started = False

    def worker_count(self, wanted_tasks: int | None = None) -> int:
        ray = self.connect()
        opts = self.options
        resources = ray.cluster_resources()
        fit = int(resources.get("CPU", 0) // opts.cpus_per_worker) if opts.cpus_per_worker > 0 else 1 << 30
        if opts.gpus_per_worker > 0:
            fit = min(fit, int(resources.get("GPU", 0) // opts.gpus_per_worker))
        if opts.num_workers is not None:
            n = opts.num_workers
            if n > fit:
                log.warning("%d Ray workers of %g CPU / %g GPU asked, but the cluster (%s) holds %d now: the others "
                            "wait until resources appear (an autoscaler), at most %gs", n, opts.cpus_per_worker,
                            opts.gpus_per_worker, _describe_resources(resources), fit, opts.start_timeout)
        else:
            n = fit
            if n < 1:
                raise DistributedError(
                    f"the Ray cluster ({_describe_resources(resources)}) cannot hold one worker of "
                    f"{opts.cpus_per_worker:g} CPU / {opts.gpus_per_worker:g} GPU")
        if n < 1:
            raise DistributedError("--num-workers must be at least 1")
        return max(1, min(n, wanted_tasks)) if wanted_tasks is not None else n


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DistributedError("the ray backend needs Ray: pip install 'ciebench[ray]'") from exc
    return ray


def _describe_resources(resources: dict[str, float]) -> str:
    return f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


def _death_errors():
    ex = _ray().exceptions
    return (ex.RayActorError, ex.WorkerCrashedError, ex.ObjectLostError, ex.NodeDiedError, ex.OutOfMemoryError,
            ex.LocalRayletDiedError)


# --- the worker pool ------------------------------------------------------------------------------

@dataclass
class Task:
    """One unit of work: `payload` goes to the actor method, `keys` name its samples (one per item)."""

    payload: list[Any]
    keys: list[Any]
    attempts: int = 0

    def split(self) -> list["Task"]:
        return [Task([p], [k], self.attempts) for p, k in zip(self.payload, self.keys)]


@dataclass
class GaveUp:
    """The result of a task whose workers kept dying: `error` says so, for every key of the task."""

    error: str


@dataclass
class _Worker:
    wid: int
    actor: Any
    queue: deque = field(default_factory=deque)  # refs in submission order (actor tasks run in this order)


class WorkerPool:
    """Actors built by `factory`, fed `Task`s with at most `window` in flight each; yields (task, result)
    as results arrive, and replaces dead actors as described in the module docstring.

    The first workers are started before any task is sent, and a failure there stops the run with its
    reason (a missing package, a bad editor option). Replacements start in the background while the
    other workers go on; one that fails to start counts as another death."""

    def __init__(self, factory: Callable[[], Any], method: str, size: int, options: RayOptions,
                 check: Callable[[Any], None] | None = None, label: str = "worker"):
        self.factory, self.method, self.size, self.options = factory, method, size, options
        self.check = check or (lambda info: None)
        self.label = label
        self.workers: dict[int, _Worker] = {}
        self.starting: dict[Any, tuple[_Worker, float]] = {}  # ready() ref -> replacement, start time
        self.info: Any = None  # what the first worker's ready() returned
        self.restarts = 0
        self.deaths: list[str] = []
        self._next_id = 0

    # actors
    def _new(self) -> _Worker:
        worker = _Worker(self._next_id, self.factory())
        self._next_id += 1
        return worker

    def _start(self, count: int) -> None:
        """Start `count` workers and wait until each has built its models."""
        ray = _ray()
        fresh = [self._new() for _ in range(count)]
        refs = [w.actor.ready.remote() for w in fresh]
        try:
            _, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.options.start_timeout)
            if waiting:
                raise DistributedError(
                    f"{len(waiting)} Ray {self.label}(s) did not start within {self.options.start_timeout:g}s: the "
                    f"cluster ({_describe_resources(ray.cluster_resources())}) may lack the "
                    f"{self.options.cpus_per_worker:g} CPU / {self.options.gpus_per_worker:g} GPU each worker asks for")
            for ref in refs:
                try:
                    info = ray.get(ref)
                except Exception as exc:
                    raise DistributedError(f"a Ray {self.label} failed to start: {_cause(exc)}") from exc
                self.check(info)
                if self.info is None:
                    self.info = info
        except BaseException:
            for w in fresh:
                _kill(w.actor)
            raise
        for w in fresh:
            self.workers[w.wid] = w

    def _replace(self, reason: str) -> None:
        """After a death: start a replacement in the background, or stop when none may start and none is left."""
        if self.restarts < self.options.restarts_allowed(self.size):
            self.restarts += 1
            worker = self._new()
            self.starting[worker.actor.ready.remote()] = (worker, time.monotonic())
        elif not self.workers and not self.starting:
            raise DistributedError(f"every Ray {self.label} died and the limit of {self.restarts} replacements is "
                                   f"reached; last error: {reason}")

    def _started(self, ref: Any) -> None:
        ray = _ray()
        worker, _ = self.starting.pop(ref)
        try:
            info = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - it died while loading: one more death
            _kill(worker.actor)
            self._died(f"a replacement {self.label} failed to start: {_cause(exc)}")
            return
        self.check(info)
        self.workers[worker.wid] = worker

    def _expire_starts(self) -> None:
        now = time.monotonic()
        for ref, (worker, since) in list(self.starting.items()):
            if now - since > self.options.start_timeout:
                del self.starting[ref]
                _kill(worker.actor)
                self._died(f"a replacement {self.label} did not start within {self.options.start_timeout:g}s")

    def _died(self, reason: str) -> None:
        self.deaths.append(reason)
        log.warning("%s", reason)
        self._replace(reason)

    def close(self) -> None:
        for w in list(self.workers.values()) + [w for w, _ in self.starting.values()]:
            _kill(w.actor)
        self.workers.clear()
        self.starting.clear()

    # the loop
    def map(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, Any]]:
        ray = _ray()
        deaths = _death_errors()
        window = max(1, self.options.window)
        retry: deque[Task] = deque()  # tasks to send before new ones: the first few, then resubmissions
        source = iter(tasks)
        retry.extend(t for t in (next(source, None) for _ in range(self.size)) if t is not None)
        if not retry:
            return
        inflight: dict[Any, tuple[_Worker, Task]] = {}
        try:
            self._start(min(self.size, len(retry)))
            while True:
                for w in list(self.workers.values()):
                    while len(w.queue) < window:
                        task = retry.popleft() if retry else next(source, None)
                        if task is None:
                            break
                        ref = getattr(w.actor, self.method).remote(task.payload)
                        inflight[ref] = (w, task)
                        w.queue.append(ref)
                if not inflight and not self.starting:
                    if retry or next(source, None) is not None:
                        raise DistributedError(f"every Ray {self.label} died; last error: {self.deaths[-1]}")
                    return
                timeout = None
                if self.starting:
                    oldest = min(since for _, since in self.starting.values())
                    timeout = max(0.1, self.options.start_timeout - (time.monotonic() - oldest))
                ready, _ = ray.wait(list(inflight) + list(self.starting), num_returns=1, timeout=timeout)
                if not ready:
                    self._expire_starts()
                    continue
                ref = ready[0]
                if ref in self.starting:
                    self._started(ref)
                    continue
                w, task = inflight[ref]
                try:
                    result = ray.get(ref)
                except deaths as exc:
                    yield from self._buried(w, inflight, retry, exc)
                    continue
                del inflight[ref]
                w.queue.remove(ref)
                yield task, result
        finally:
            self.close()

    def _buried(self, dead: _Worker, inflight: dict, retry: deque, exc: BaseException) -> Iterator[tuple[Task, Any]]:
        """`dead` died: keep what it finished, charge the task it was running, resubmit the rest, replace it."""
        ray = _ray()
        deaths = _death_errors() + (ray.exceptions.GetTimeoutError,)
        self.workers.pop(dead.wid, None)
        _kill(dead.actor)  # make sure: nothing it still runs can land later
        refs = list(dead.queue)
        ray.wait(refs, num_returns=len(refs), timeout=60)  # they resolve at once: finished, or failed with it
        message = _cause(exc)
        log.warning("a Ray %s died (%s); %d task(s) of it are checked and resubmitted", self.label, message, len(refs))
        blamed = False
        resubmit: list[Task] = []
        for ref in refs:  # submission order: the first failed task is the one the actor was running
            _, task = inflight.pop(ref)
            try:
                result = ray.get(ref, timeout=0)
            except deaths:
                if blamed:
                    resubmit.append(task)
                    continue
                blamed = True
                task.attempts += 1
                if task.attempts > self.options.max_retries:
                    yield task, GaveUp(f"the Ray {self.label} died {task.attempts} times while working on this "
                                       f"sample (last: {message})")
                else:
                    resubmit.extend(task.split() if len(task.payload) > 1 else [task])
                continue
            yield task, result
        retry.extendleft(reversed(resubmit))
        self._died(f"a Ray {self.label} died: {message}")


def _kill(actor: Any) -> None:
    try:
        _ray().kill(actor)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _cause(exc: BaseException) -> str:
    """A one-line reason: the error's first line and, for a remote traceback, its last (the real error)."""
    import re

    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    text = lines[0][:200] if lines else ""
    if len(lines) > 1 and lines[-1] != lines[0]:
        text = f"{text} ... {lines[-1][:200]}"
    return f"{type(exc).__name__}: {text}"


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


def _use_threads(threads: int | None, device: str) -> None:
    # Set explicitly: whether Ray's OMP_NUM_THREADS reaches torch depends on when torch was imported.
    if threads and device == "cpu":
        import torch

        torch.set_num_threads(threads)


class EditWorker:
    """A Ray actor: the editor, built once; edits batches of raw rows into `PreparedResult`s."""

    def __init__(self, recipe: EditorRecipe, features: Any, device: str, threads: int | None = None):
        _use_threads(threads, device)
        self.editor = recipe.build()
        self.editor.to(device)
        self.features = features

    def ready(self) -> dict[str, Any]:
        return {"editor": self.editor.describe(), "pid": os.getpid(), "node": _node()}

    def edit(self, batch: list[tuple[dict[str, Any], int]]) -> tuple[list[Any], int]:
        from .runner import edit_isolated, make_request

        samples = [(decode_row(self.features, row), seed) for row, seed in batch]
        stats = RunStats()
        requests = [make_request(self.editor, sample, seed) for sample, seed in samples]
        results = edit_isolated(self.editor, requests, stats)
        prepared = [prepare_result(sample.id, seed, sample.image.size, result)
                    for (sample, seed), result in zip(samples, results)]
        return prepared, stats.editor_calls


def _node() -> str:
    import socket

    return socket.gethostname()


class RayBackend:
    """The Ray backend of `runner.run`: `generate` has `generate_local`'s signature, `region_scoring()`
    is the `region` hook of `scoring.score`. Use as a context manager (or call `close()`)."""

    def __init__(self, options: RayOptions | None = None, recipe: EditorRecipe | None = None):
        self.options = options or RayOptions()
        self.recipe = recipe
        self.session = RaySession(self.options)
        self.last_pool: WorkerPool | None = None

    def __enter__(self) -> "RayBackend":
        self.session.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def region_scoring(self) -> "RayRegionScoring":
        return RayRegionScoring(self)

    def _actor_options(self) -> dict[str, Any]:
        return {"num_cpus": self.options.cpus_per_worker, "num_gpus": self.options.gpus_per_worker,
                "max_restarts": 0, "max_task_retries": 0}

    def _device(self, device: str) -> str:
        # Ray gives each GPU worker its own CUDA_VISIBLE_DEVICES, so "cuda:3" on the driver is "cuda" there
        return "cuda" if device.startswith("cuda") else device

    def generate(self, editor: Editor, pending: Any, out: Path, options: RunOptions, stats: RunStats) -> None:
        if not len(pending):
            return
        ray = self.session.connect()
        recipe = self.recipe or EditorRecipe.from_editor(editor)
        expected = editor.describe()
        batch = max(1, options.batch_size)
        size = self.session.worker_count(math.ceil(len(pending) / batch))
        if isinstance(pending, PendingSamples):
            reader = RowReader(pending.dataset)
            features = reader.features
            keys = pending.keys

            def payload(key):
                index, seed = key
                return reader(index), seed
        else:  # a plain list of (EditSample, seed): re-encode each sample into a row
            from .schema import FEATURES, make_row

            features = FEATURES
            keys = list(range(len(pending)))

            def payload(key):
                sample, seed = pending[key]
                return FEATURES.encode_example(make_row(
                    id=sample.id, image=sample.image, mask=sample.mask, instruction=sample.instruction,
                    clip_text=sample.clip_text, edit_type=sample.edit_type, notes=sample.notes, meta=sample.meta)), seed

        def check(info):
            if info["editor"] != expected:
                raise DistributedError(
                    "a Ray worker built a different editor than the driver (is the same ciebench and editor "
                    f"package installed on every node?): worker {info['editor']} != driver {expected}")

        remote = ray.remote(EditWorker).options(**self._actor_options())
        device = self._device(options.device)
        threads = driver_threads(self.options)
        pool = WorkerPool(lambda: remote.remote(recipe, features, device, threads), "edit", size, self.options, check,
                          label="editing worker")
        self.last_pool = pool

        def tasks() -> Iterator[Task]:
            for start in range(0, len(keys), batch):
                items = [payload(k) for k in keys[start:start + batch]]
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
                    prepared, calls = result
                stats.editor_calls += calls
                for item in prepared:
                    ok = commit_result(out, item)
                    stats.generated += ok
                    stats.failed += not ok
                    bar.update(1)
        finally:
            results.close()  # stops the workers now, also when writing failed
            bar.close()

    __call__ = generate


# --- region scoring --------------------------------------------------------------------------------

class RegionWorker:
    """A Ray actor: one RegionScorer (metric models loaded once) scoring chunks of raw rows + predictions."""

    def __init__(self, protocol: Any, metrics: list[str], device: str, batch_size: int, features: Any,
                 threads: int | None = None):
        _use_threads(threads, device)
        from .metrics.region import RegionScorer

        self.scorer = RegionScorer(protocol, metrics=metrics, device=device, batch_size=batch_size)
        self.features = features

    def ready(self) -> dict[str, Any]:
        return {"models": dict(self.scorer.model_ids()), "pid": os.getpid(), "node": _node()}

    def score(self, chunk: list[tuple[Any, dict[str, Any], str, bytes]]) -> list[tuple[Any, dict[str, Any]]]:
        from .scoring import score_entries

        entries = ((tuple(key), decode_row(self.features, row), name, data) for key, row, name, data in chunk)
        return list(score_entries(self.scorer, entries))


class RayRegionScoring:
    """The `region` hook of `scoring.score` on Ray: chunks of `ScoreEntry`s to `RegionWorker`s."""

    def __init__(self, backend: RayBackend):
        self.backend = backend
        self._models: dict[str, str] = {}

    def model_ids(self) -> dict[str, str]:
        return dict(self._models)

    def score(self, loaded: Any, protocol: Any, metrics: list[str], options: ScoreOptions,
              entries: Iterable[ScoreEntry]) -> Iterator[tuple[tuple[str, int], dict[str, Any]]]:
        backend = self.backend
        ray = backend.session.connect()
        reader = RowReader(loaded.dataset)
        # chunks are whole scoring batches, in order, so each batch holds the same predictions as locally
        chunk = max(1, options.batch_size) * max(1, backend.options.score_chunk)

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

        remote = ray.remote(RegionWorker).options(**backend._actor_options())
        device = backend._device(options.device)
        size = backend.session.worker_count()
        threads = driver_threads(backend.options)
        pool = WorkerPool(lambda: remote.remote(protocol, metrics, device, options.batch_size, reader.features, threads),
                          "score", size, backend.options, label="scoring worker")
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
