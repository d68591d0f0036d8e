"""Generate with an editor into a resumable run directory, then score.

Layout: `spec.json` (written first), `images/<stem>.png`, `traces/<stem>.json` (+ files an editor
returns as trace artifacts, under `traces/<stem>/`), `records/<stem>.json` (the done-marker: status,
error, image sha256, timings), then `samples.csv`, `samples.jsonl`, `summary.json`; `<stem>` is
`results.file_stem(id, seed)`. Every file is written atomically; a record is written last, so a sample
counts as done only when its record exists and its image still has the recorded hash.

The folder is claimed and locked through `ciebench.outdir` (marker file, one writer at a time), and
resume is keyed by the spec hash, which depends on the dataset's content revision, not on how its path
was spelled.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

from ciebench.datasets import LoadedDataset

from . import __version__, outdir
from .backend import Backend, LocalBackend
from .editor import Editor, EditRequest, EditResult
from .errors import DataError, OutputConflict, UsageError
from .images import check_image
from .io import (atomic_write_bytes, atomic_write_json, json_safe, json_text, png_bytes, read_json_object,
                 sha256_bytes, sha256_file, stable_hash)
from .isolate import run_isolated
from .results import file_stem
from .schema import EditSample
from .scoring import Prediction, ScoreOptions, ScoreResult, resolve_metrics, score
from .spec import RunSpec, decided_fields, derive_seed, legacy_release_revision, spec_differences
from .stats import from_json_number
from .status import Status
from .versions import package_versions

log = logging.getLogger(__name__)

RUN_SUBDIRS = ("images", "traces", "records")
# Errors that no retry of the same write can fix and that would hit every sample alike: they end the
# run (finished samples stay), instead of being recorded against one sample.
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})


@dataclass
class RunOptions:
    seeds: tuple[int, ...] = (0,)
    limit: int | None = None
    batch_size: int = 1
    device: str = "cpu"
    overwrite: bool = False
    retry_failed: bool = False
    progress: bool = True
    score: ScoreOptions = field(default_factory=ScoreOptions)


@dataclass
class RunStats:
    """Counts of one generation pass (the dataset runner's and a benchmark's), and the number of the
    invocation doing it (`record_invocation`), which every record it writes names."""

    generated: int = 0
    skipped: int = 0
    failed: int = 0
    unsupported: int = 0  # cases the editor does not take (several images or turns): not failures
    editor_calls: int = 0  # calls of Editor.edit (a batch counts once)
    invocation: int | None = None


def build_spec(editor: Editor | None, loaded: LoadedDataset, options: RunOptions,
               predictions: str | None = None, predictions_source: dict[str, Any] | None = None) -> RunSpec:
    """The spec of a run of `editor`, or with `editor` None of scoring the folder `predictions` (made from
    the exported run `predictions_source`, when it was one)."""
    from ciebench.metrics.protocols import get_protocol

    protocol = get_protocol(options.score.protocol or loaded.default_protocol)
    region, use_idcs = resolve_metrics(options.score)
    judge = None
    if use_idcs:
        from ciebench.judge.run import judge_spec

        judge = judge_spec(options.score)
    n = len(loaded.dataset) if options.limit is None else min(options.limit, len(loaded.dataset))
    notes = {"device": options.device, "batch_size": options.batch_size}
    if editor is not None:
        notes["track"] = editor.track
    return RunSpec(
        editor=editor.describe() if editor is not None else None,
        dataset={**loaded.describe(), "n": n},
        seeds=tuple(options.seeds),
        protocol={**protocol.to_dict(), "hash": protocol.hash},
        metrics=tuple(region + (["idcs"] if use_idcs else [])),
        judge=judge,
        # a limit at or past the dataset's size selects every sample: the same run as none
        limit=options.limit if options.limit is not None and options.limit < len(loaded.dataset) else None,
        ciebench_version=__version__,
        notes=notes,
        predictions=predictions,
        predictions_source=predictions_source,
    )


def prepare_run_dir(out: Path, spec: RunSpec, overwrite: bool) -> None:
    """Write spec.json, or check that an existing run has the same spec (resume). `out` must be claimed
    (`outdir.claim(out, "run")`); --overwrite deletes only the run's own files."""
    spec_path = out / "spec.json"
    if spec_path.exists():
        try:
            existing = read_json_object(spec_path)  # {} for another JSON value
        except ValueError:
            existing = {}  # unreadable: said so in the refusal
        if existing.get("spec_hash") == spec.spec_hash:
            if existing.get("editor_config_hash") != spec.editor_config_hash:
                # the same run; the config hash is now computed over more (a wrapped editor's resolved
                # settings): record it as now, so one configuration never shows two config hashes
                atomic_write_json(spec_path, spec.to_dict())
            return
        recorded_as = _recorded_as_before(existing, spec)
        if recorded_as:
            # the same run as an earlier ciebench recorded it: it resumes, and spec.json (summary.json once
            # rescored) records it as now
            log.warning("%s: the recorded spec is this run as an earlier ciebench wrote it (%s); resuming, and "
                        "recording it as now", out, "; ".join(recorded_as))
            atomic_write_json(spec_path, spec.to_dict())
            return
        if not overwrite:
            changed = spec_differences(decided_fields(existing), decided_fields(spec.to_dict())) if existing else []
            raise OutputConflict(
                f"{out} holds a run with a different spec (spec_hash {existing.get('spec_hash')} != {spec.spec_hash}); "
                f"recorded -> now: " + ("; ".join(changed) if changed else
                                        "spec.json is unreadable" if not existing else "no setting differs as JSON"),
                hint="rerun with the recorded options (and the recorded ciebench_version) to resume it; to score its "
                     f"images differently without editing again, `ciebench score --predictions {out}/images --out NEW`; "
                     "or use another --out; --overwrite discards that run, its images included")
        outdir.clear(out, "run")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_path, spec.to_dict())


def _recorded_as_before(existing: dict[str, Any], spec: RunSpec) -> list[str]:
    """How a recorded spec is `spec` as an earlier ciebench wrote it (empty: it is not): the official
    release named by its manifest revision (`legacy_release_revision`, now the content revision), a
    --limit at or past the dataset's size (now none), metrics in the order they were asked (now the
    catalogue's), an editor option as YAML typed it (`2` for a float option, now `2.0`)."""
    if not existing.get("spec_hash") or not isinstance(existing.get("metrics"), list):
        return []
    recorded, how = dict(existing), []
    dataset = recorded.get("dataset") if isinstance(recorded.get("dataset"), dict) else {}
    legacy = legacy_release_revision(spec.dataset)
    if legacy is not None and dataset.get("revision") == legacy:
        recorded["dataset"] = {**dataset, "revision": spec.dataset["revision"]}
        how.append(f"dataset revision {legacy}, the release {spec.dataset.get('release')}: now its content "
                   f"revision {spec.dataset['revision']}")
    if isinstance(recorded.get("editor"), dict) and spec.editor is not None:
        recorded["editor"] = _as_typed_now(recorded["editor"], spec.editor)
        how.append("editor options as typed now")
    limit = recorded.get("limit")
    if spec.limit is None and isinstance(limit, int) and limit >= spec.dataset["n"]:
        recorded["limit"] = None
        how.append(f"--limit {limit} past the dataset's {spec.dataset['n']} samples: no limit")
    if set(recorded["metrics"]) == set(spec.metrics):
        recorded["metrics"] = list(spec.metrics)
        how.append("metrics in the catalogue's order")
    return how if stable_hash(decided_fields(recorded)) == spec.spec_hash else []


def _as_typed_now(recorded: Any, now: Any) -> Any:
    """`recorded` with each integer that `now` holds as the equal float (an option YAML typed as an int
    before ciebench typed it by its field), walking dicts and lists alike; everything else as recorded."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        return {k: _as_typed_now(v, now.get(k)) for k, v in recorded.items()}
    if isinstance(recorded, list) and isinstance(now, (list, tuple)) and len(recorded) == len(now):
        return [_as_typed_now(a, b) for a, b in zip(recorded, now)]
    if type(recorded) is int and type(now) is float and recorded == now:
        return now
    return recorded


def is_done(out: Path, stem: str, retry_failed: bool) -> bool:
    record_path = out / "records" / f"{stem}.json"
    if not record_path.exists():
        return False
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("status") != Status.OK:
        return not retry_failed
    image = out / "images" / f"{stem}.png"
    return image.is_file() and sha256_file(image) == record.get("image_sha256")


def run(editor: Editor, loaded: LoadedDataset, out: Path, options: RunOptions,
        backend: Backend | None = None) -> tuple[RunStats, ScoreResult]:
    """Generate every missing (sample, seed), then score the whole run, both through `backend`
    (default `LocalBackend`: this process; `ciebench.distributed.RayBackend`: Ray workers). Samples are
    decoded only when they are used, so memory does not grow with the dataset."""
    out = Path(out)
    if options.limit is not None and options.limit < 0:
        raise UsageError(f"--limit must be 0 or more, not {options.limit}")
    if len(loaded.dataset) == 0:
        raise DataError(f"dataset {loaded.spec} has no usable samples", hint="run `ciebench data validate` on it")
    spec = build_spec(editor, loaded, options)
    outdir.claim(out, "run")
    with outdir.lock(out):
        removed = outdir.clean_stale_temp(out, RUN_SUBDIRS)
        if removed:
            log.info("%s: removed %d temporary file(s) left by an interrupted run", out, removed)
        prepare_run_dir(out, spec, options.overwrite)
        return _run_locked(editor, loaded, out, options, spec, backend if backend is not None else LocalBackend())


INVOCATIONS = "invocations.json"
# What may differ between the invocations of one resumed run without changing its spec, and is worth
# saying when it does: where and how the editor ran, and the packages it ran with.
_PROVENANCE = ("device", "batch_size", "backend", "ciebench", "versions", "editor_models")


def record_invocation(out: Path, options: RunOptions, backend: Backend, editor: Editor) -> int:
    """Append this invocation's provenance to `out/invocations.json` and return its number. The spec
    decides what a run computes; a resumed run's images may still come from several invocations on
    another device, batch size or package versions, so each record names its invocation."""
    path = out / INVOCATIONS
    previous: list[dict[str, Any]] = []
    number = 0
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(previous, list):
                raise ValueError("not a list")
            number = 1 + max((int(e["number"]) for e in previous), default=-1)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # kept aside, and numbered past every record's, so no record is taken for this invocation's
            aside = path.with_name(f"{INVOCATIONS}.unreadable")
            os.replace(path, aside)
            previous = []
            number = 1 + max((_invocation_of(p) for p in (out / "records").glob("*.json")), default=-1)
            log.warning("%s: unreadable (%s), moved to %s; the earlier invocations' provenance is lost", path, exc, aside)
    entry = {"number": number, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "ciebench": __version__, "device": options.device, "batch_size": options.batch_size,
             "backend": type(backend).__name__, "versions": package_versions(), "editor_models": editor_models(editor)}
    atomic_write_json(path, previous + [entry])
    return entry["number"]


def _invocation_of(record: Path) -> int:
    try:
        return int(json.loads(record.read_text(encoding="utf-8")).get("invocation") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def editor_models(editor: Editor) -> dict[str, str] | None:
    """The hub commit of each model `editor` loads, as this machine's hub cache resolves it. The editors
    load `revision=None` by default (the repository's main, which moves), so the spec alone cannot say
    which snapshot made the images. None when the editor cannot list its files."""
    from .prefetch import cached_commit
    from .requirements import HUB

    try:
        hub = [r for r in editor.required_assets() if r.kind == HUB]
    except Exception as exc:  # noqa: BLE001 - a user's editor that cannot list its files: say so, go on
        log.warning("editor %s: required_assets() failed (%s); its model commits are not recorded", editor.name, exc)
        return None
    return {f"{r.ref}@{r.revision or 'main'}": cached_commit(r) or "not in this machine's hub cache" for r in hub}


def merge_editor_models(reports: Iterable[tuple[str, dict[str, str] | None]]) -> dict[str, str] | None:
    """One map from the (machine, commits) reports of the processes that made a run's images (Ray
    workers, each reading its own machine's hub cache): a model's commit where they all agree; where
    they do not, every commit with the machines that used it, so that no single commit is recorded
    for images made from several. None when no process could list its editor's models."""
    reports = list(reports)
    seen: dict[str, dict[str, set[str]]] = {}
    for machine, models in reports:
        for key, commit in (models or {}).items():
            seen.setdefault(key, {}).setdefault(commit, set()).add(machine)
    if not seen:
        return None if all(models is None for _, models in reports) else {}
    return {key: next(iter(by_commit)) if len(by_commit) == 1 else
            "differs between machines: " + "; ".join(f"{commit} on {', '.join(sorted(machines))}"
                                                     for commit, machines in sorted(by_commit.items()))
            for key, by_commit in seen.items()}


def update_editor_models(out: Path, invocation: int, models: dict[str, str] | None) -> None:
    """After generation, the commits again, as the backend saw them where the images were made:
    online, loading may have fetched a newer main than the cache held when the invocation started,
    and Ray workers on other machines read their own caches."""
    path = out / INVOCATIONS
    entries = json.loads(path.read_text(encoding="utf-8"))
    for entry in entries:
        if entry.get("number") == invocation:
            entry["editor_models"] = models
    atomic_write_json(path, entries)


def invocation_provenance(out: Path, numbers: set[int | None]) -> dict[str, Any]:
    """The invocations whose records the run's rows come from, and what differs between them (a mixed
    resume: say so rather than publish one device or version for all)."""
    try:
        entries = {e.get("number"): e for e in json.loads((out / INVOCATIONS).read_text(encoding="utf-8"))}
    except (OSError, ValueError, AttributeError, TypeError):
        entries = {}
    used = [entries[n] for n in sorted(n for n in numbers if n is not None) if n in entries]
    differs = _differences(used)
    out_: dict[str, Any] = {"invocations": used, "differs": differs}
    if None in numbers or any(n not in entries for n in numbers if n is not None):
        out_["unrecorded"] = True  # records from before invocations were kept, or a lost invocations file
    return out_


def _differences(entries: list[dict[str, Any]]) -> list[str]:
    """The provenance fields (each package's version on its own) that are not the same in every entry."""
    flat = [{**{f: e.get(f) for f in _PROVENANCE if f not in ("versions", "editor_models")},
             **{f"versions.{k}": v for k, v in (e.get("versions") or {}).items()},
             **{f"editor_models.{k}": v for k, v in (e.get("editor_models") or {}).items()}} for e in entries]
    keys = sorted({k for f in flat for k in f})
    # a field an entry lacks (an older ciebench, an editor that could not list its models) is unknown,
    # not different
    return [k for k in keys if len({json.dumps(f[k], sort_keys=True) for f in flat if f.get(k) is not None}) > 1]


def _run_locked(editor: Editor, loaded: LoadedDataset, out: Path, options: RunOptions, spec: RunSpec,
                backend: Backend) -> tuple[RunStats, ScoreResult]:
    stats = RunStats(invocation=record_invocation(out, options, backend, editor))
    n = len(loaded.dataset) if options.limit is None else min(options.limit, len(loaded.dataset))
    ids = [str(i) for i in loaded.dataset["id"][:n]] if n else []
    todo = [(sample_id, seed) for sample_id in ids for seed in options.seeds]
    pending_keys = []
    for index, sample_id in enumerate(ids):
        for seed in options.seeds:
            if is_done(out, file_stem(sample_id, seed), options.retry_failed):
                stats.skipped += 1
            else:
                pending_keys.append((index, seed))
    backend.generate(editor, PendingSamples(loaded.dataset, pending_keys), out, options, stats)
    update_editor_models(out, stats.invocation, backend.editor_models(editor))
    # The editor's models are done: free them before the scoring models load (a local LLM the judge
    # shares stays loaded while the judge holds it).
    editor.close()
    _free_memory()
    predictions = collect_predictions(out, todo)
    provenance = invocation_provenance(out, {p.invocation for p in predictions if p.path is not None})
    if provenance["differs"]:
        log.warning("%s: the images come from %d invocations that differ in %s (resumed elsewhere or after an "
                    "upgrade); summary.json run.provenance lists them", out, len(provenance["invocations"]),
                    ", ".join(provenance["differs"]))
    result = score(loaded, predictions, out, options.score,
                   header={"run": {"spec_hash": spec.spec_hash, "editor": spec.editor, "seeds": list(options.seeds),
                                   "editor_config_hash": spec.editor_config_hash,
                                   "generation": {"generated": stats.generated, "skipped": stats.skipped,
                                                  "failed": stats.failed, "editor_calls": stats.editor_calls},
                                   "provenance": provenance}},
                   progress=options.progress, backend=backend)
    return stats, result


class PendingSamples(Sequence):
    """The (sample, seed) pairs still to generate, as a sequence that decodes a sample only when it is
    read (an item or a slice), so a run never holds every image. `keys` are (dataset row, seed)."""

    def __init__(self, dataset: Any, keys: list[tuple[int, int]]):
        self.dataset = dataset
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self._load(key) for key in self.keys[item]]
        return self._load(self.keys[item])

    def _load(self, key: tuple[int, int]) -> tuple[EditSample, int]:
        index, seed = key
        return EditSample.from_row(self.dataset[index]), seed


def generate_local(editor: Editor, pending: Sequence[tuple[EditSample, int]], out: Path, options: RunOptions,
                   stats: RunStats) -> None:
    """`LocalBackend.generate`: the editor in this process, in batches of `options.batch_size`."""
    editor.to(options.device)
    bar = tqdm(total=len(pending), desc=f"editing ({editor.display_name()})", unit="img", disable=not options.progress)
    try:
        for batch in _batches(pending, options.batch_size):
            requests = [make_request(editor, sample, seed) for sample, seed in batch]
            for (sample, seed), result in zip(batch, edit_isolated(editor, requests, stats)):
                ok = write_result(out, sample, seed, result, stats.invocation)
                stats.generated += ok
                stats.failed += not ok
                bar.update(1)
    finally:
        bar.close()


def make_request(editor: Editor, sample: EditSample, seed: int) -> EditRequest:
    return EditRequest(sample_id=sample.id, image=sample.image.convert("RGB"), instruction=sample.instruction,
                       seed=derive_seed(sample.id, seed), mask=sample.aligned_mask() if editor.oracle_mask else None,
                       meta={"run_seed": seed, "edit_type": sample.edit_type})


def check_results(editor: Editor, results: Any, n: int) -> None:
    """`Editor.edit`'s contract, said in its own words when broken (a list of `EditResult`, one per
    request), not as the AttributeError or TypeError it would cause further on."""
    name = getattr(editor, "name", type(editor).__name__)
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"editor {name!r}: edit() must return a list of ciebench.EditResult, one per request; "
                        f"it returned {type(results).__module__}.{type(results).__qualname__}")
    if len(results) != n:
        raise RuntimeError(f"editor {name!r} returned {len(results)} results for {n} requests")
    for position, result in enumerate(results):
        if not isinstance(result, EditResult):
            raise TypeError(f"editor {name!r}: edit() must return ciebench.EditResult items (EditResult(image=...) or "
                            f"EditResult.failure(reason)); item {position} is {type(result).__module__}."
                            f"{type(result).__qualname__}")


def edit_isolated(editor: Editor, requests: list[EditRequest], stats: RunStats) -> list[EditResult]:
    """Call the editor on a batch; if the batch fails, call it per request so one bad sample fails alone."""
    def call(batch: list[EditRequest]) -> list[EditResult]:
        started = time.perf_counter()
        stats.editor_calls += 1
        results = editor.edit(batch)
        check_results(editor, results, len(batch))
        elapsed = (time.perf_counter() - started) / max(1, len(batch))
        for r in results:
            r.timings.setdefault("edit_seconds", elapsed)
        return results

    def retry_alone(exc: BaseException, n: int) -> None:
        log.warning("batch of %d failed (%s); retrying one by one", n, exc)
        _free_memory()

    # BaseException: OOM and library errors must not end the run
    return run_isolated(call, requests, lambda _, exc: EditResult.failure(f"{type(exc).__name__}: {exc}"),
                        catch=BaseException, on_batch_failure=retry_alone)


@dataclass
class PreparedResult:
    """One result validated and encoded, ready to be written: plain data (PNG bytes, JSON-able trace and
    record), so a remote worker can prepare it and the driver, the one writer, commits it."""

    stem: str
    record: dict[str, Any]
    png: bytes | None = None
    trace: dict[str, Any] | None = None  # artifacts, if any, already PNG-encoded: {name: bytes}


def write_result(out: Path, sample: EditSample, seed: int, result: EditResult, invocation: int | None = None) -> bool:
    """Validate and persist one result; the record is written last. Returns True when usable."""
    return commit_result(out, prepare_result(sample.id, seed, sample.image.size, result), invocation)


def prepare_result(sample_id: str, seed: int, size: tuple[int, int], result: EditResult) -> PreparedResult:
    """The validation and encoding half of `write_result` (no I/O). Whatever is wrong with the result
    (an unusable image, a trace JSON cannot hold) becomes this sample's recorded status and error."""
    record: dict[str, Any] = {"sample_id": sample_id, "seed": seed, "file_stem": file_stem(sample_id, seed),
                              "timings": _plain_timings(result.timings), "status": result.status,
                              "error": result.error, "image_sha256": None}
    png = None
    if result.status == Status.OK:
        image, status, problem = check_image(result.image, size)
        if problem:
            record.update(status=status, error=problem)
        else:
            png = png_bytes(image)
            record["image_sha256"] = sha256_bytes(png)
    elif not record["error"]:
        record["error"] = "editor reported failure without a message"
    trace = None
    if result.trace is not None:
        trace, problem = _prepare_trace(result.trace)
        if problem:
            record.update(status=Status.RECORD_ERROR, error=problem, image_sha256=None)
            png = None
    return PreparedResult(file_stem(sample_id, seed), record, png, trace)


def _plain_timings(timings: Any) -> dict[str, Any]:
    try:
        return json_safe(dict(timings or {}))
    except (TypeError, ValueError):
        return {"unrecorded": repr(timings)[:1000]}


def _prepare_trace(trace: Any) -> tuple[dict[str, Any], str | None]:
    """(trace ready to write, problem). Artifact images are PNG-encoded; the rest must be JSON (NaN
    and inf become "nan"/"inf" strings). A trace that is not (a non-dict, an object JSON cannot hold,
    an artifact that is not an image) is kept as text and reported as the problem."""
    try:
        if not isinstance(trace, dict):
            raise TypeError(f"a trace must be a dict, not {type(trace).__name__}")
        trace = dict(trace)
        artifacts = trace.pop("artifacts", None) or {}
        plain = json_safe(trace)
        json_text(plain, indent=None)
        if artifacts:
            plain["artifacts"] = {str(name): png_bytes(image) for name, image in dict(artifacts).items()}
        return plain, None
    except Exception as exc:  # noqa: BLE001 - any bad trace fails this sample only
        text = repr(trace)
        limit = 100_000
        kept = {"unrecorded_trace": text[:limit] + ("..." if len(text) > limit else ""), "error": str(exc)}
        return kept, f"the editor's trace could not be recorded ({type(exc).__name__}: {exc}); kept as text in the trace file"


def commit_result(out: Path, prepared: PreparedResult, invocation: int | None = None) -> bool:
    """The writing half of `write_result`: image, trace, then the record (the done-marker), each atomic.
    The record names the invocation that wrote it (`record_invocation`). A write that fails for this
    sample only is recorded as its error; a full or read-only disk ends the run (every later sample
    would fail alike)."""
    prepared.record["invocation"] = invocation
    try:
        if prepared.png is not None:
            atomic_write_bytes(out / "images" / f"{prepared.stem}.png", prepared.png)
        if prepared.trace is not None:
            # hashed once written, so `ciebench verify` can tell a trace edited after the run
            prepared.record["trace_files"] = {rel: sha256_file(out / rel)
                                              for rel in write_trace(out, prepared.stem, prepared.trace)}
        atomic_write_json(out / "records" / f"{prepared.stem}.json", prepared.record)
    except OSError as exc:
        if exc.errno in FATAL_WRITE_ERRNOS:
            raise
        return _record_failure(out, prepared, exc)
    except (TypeError, ValueError) as exc:
        return _record_failure(out, prepared, exc)
    return prepared.record["status"] == Status.OK


def _record_failure(out: Path, prepared: PreparedResult, exc: BaseException) -> bool:
    log.warning("sample %s: could not record the result (%s)", prepared.record.get("sample_id"), exc)
    record = {k: prepared.record.get(k) for k in ("sample_id", "seed", "file_stem", "invocation")}
    record.update(status=Status.RECORD_ERROR, image_sha256=None, timings={},
                  error=f"the result could not be recorded ({type(exc).__name__}: {exc})")
    atomic_write_json(out / "records" / f"{prepared.stem}.json", record)
    return False


def write_trace(out: Path, stem: str, trace: dict[str, Any]) -> list[str]:
    """The trace as JSON; images under trace["artifacts"] (name -> PIL image, or PNG bytes from
    `prepare_result`) go to traces/<stem>/. Returns the written files, relative to `out`."""
    trace = dict(trace)
    artifacts = trace.pop("artifacts", None) or {}
    names = {}
    for name, image in artifacts.items():
        safe = urllib.parse.quote(str(name), safe="-_.")
        atomic_write_bytes(out / "traces" / stem / safe, image if isinstance(image, bytes) else png_bytes(image))
        names[name] = f"{stem}/{safe}"
    if names:
        trace["artifacts"] = names
    atomic_write_json(out / "traces" / f"{stem}.json", trace)
    return [f"traces/{stem}.json"] + [f"traces/{rel}" for rel in names.values()]


def collect_predictions(out: Path, todo: list[tuple[EditSample | str, int]]) -> list[Prediction]:
    """One prediction per (sample or sample id, seed), from the records on disk."""
    preds = []
    for sample, seed in todo:
        sample_id = sample if isinstance(sample, str) else sample.id
        stem = file_stem(sample_id, seed)
        record_path = out / "records" / f"{stem}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        if record is None:
            preds.append(Prediction(sample_id, seed, None, Status.MISSING, "not generated (interrupted run?)"))
            continue
        timings = record.get("timings") if isinstance(record.get("timings"), dict) else {}
        try:
            seconds = from_json_number(timings.get("edit_seconds"))
        except (TypeError, ValueError):
            seconds = math.nan
        extra = {"edit_seconds": seconds}
        if record["status"] == Status.OK:
            preds.append(Prediction(sample_id, seed, out / "images" / f"{stem}.png", extra=extra,
                                    invocation=record.get("invocation")))
        else:
            # records keep the editor's "error" for its own failures; the row calls that edit_error.
            # "refused" (an API's content filter declined the edit) stays apart from errors.
            known = {s.value for s in Status}
            status = Status(record["status"]) if record["status"] in known else Status.EDIT_ERROR
            preds.append(Prediction(sample_id, seed, None, status, record.get("error"), extra=extra))
    return preds


def _batches(items: list, size: int) -> Iterator[list]:
    size = max(1, size)
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _free_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
