"""A pool of Ray actors with explicit fault tolerance, generic over what the actors do.

`WorkerPool` starts actors from a factory, feeds them `Task`s (at most `RayOptions.window` in flight
per actor) and yields (task, result) as results arrive. Actors never restart by themselves
(`max_restarts=0`). When one dies, every task whose result reached the driver is kept. If one task
lacks its result, it is charged one attempt; if several do (the first was running, or had finished
and the death cut off its reply while the next ran: Ray cannot tell them apart), none is charged, so
an innocent sample never uses up the retries. Either way they are resubmitted as single items that
each run alone on a worker, so the next death is attributable, and a new actor replaces the dead one
(at most `RayOptions.restarts_allowed` in a run). An item whose worker died more than `max_retries`
times comes back as `GaveUp`. `RaySession` connects to (or starts) Ray. The editing and scoring actors that
run on this pool live in `ciebench.distributed`.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from .errors import EnvironmentProblem

log = logging.getLogger(__name__)


class DistributedError(EnvironmentProblem, RuntimeError):
    """Ray cannot run the work: no cluster, no room for a worker, a worker that fails to start, every worker dead."""


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
    solo: bool = False  # a suspect of a worker's death: runs with nothing queued beside it

    def suspect(self) -> list["Task"]:
        """This task as single items that each run alone, so that a death they cause is theirs alone."""
        return [Task([p], [k], self.attempts, solo=True) for p, k in zip(self.payload, self.keys)]


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
            log.info("starting replacement %s %d (at most %d in this run)", self.label, self.restarts,
                     self.options.restarts_allowed(self.size))
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
                        if w.queue and (inflight[w.queue[-1]][1].solo or (retry and retry[0].solo)):
                            break  # a suspect runs alone, and waits for a worker with nothing queued
                        task = retry.popleft() if retry else next(source, None)
                        if task is None:
                            break
                        ref = getattr(w.actor, self.method).remote(task.payload)
                        inflight[ref] = (w, task)
                        w.queue.append(ref)
                # every worker was filled above, and a pool left with no worker raises in `_replace`
                if not inflight and not self.starting:
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
        failed: list[Task] = []
        for ref in refs:
            _, task = inflight.pop(ref)
            try:
                result = ray.get(ref, timeout=0)
            except deaths:
                failed.append(task)
                continue
            yield task, result
        resubmit: list[Task] = []
        if len(failed) == 1:
            # The only task without a result: it was running (or had just finished and its reply was
            # cut off, when it ran alone: still the only candidate). Charge it.
            task = failed[0]
            task.attempts += 1
            if task.attempts > self.options.max_retries:
                yield task, GaveUp(f"the Ray {self.label} died {task.attempts} times while working on this "
                                   f"sample (last: {message})")
            else:
                resubmit.extend(task.suspect())
        else:
            # Several: the first was running, or had finished with its reply cut off while the second
            # ran; Ray cannot tell which. Charge none (an innocent sample must never use up the retries),
            # and run each alone, so that the next death, if any, is attributable.
            for task in failed:
                resubmit.extend(task.suspect())
        retry.extendleft(reversed(resubmit))
        self._died(f"a Ray {self.label} died: {message}")


def _kill(actor: Any) -> None:
    try:
        _ray().kill(actor)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _cause(exc: BaseException) -> str:
    """A one-line reason: the error's first line and, for a remote traceback, its last (the real error)."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    text = lines[0][:200] if lines else ""
    if len(lines) > 1 and lines[-1] != lines[0]:
        text = f"{text} ... {lines[-1][:200]}"
    return f"{type(exc).__name__}: {text}"
