"""Scoring: predictions + dataset -> samples.csv, samples.jsonl, summary.json.

Used by `ciebench score` (a folder of predictions) and by the runner after generation. Region
metrics run through `ciebench.metrics.region.RegionScorer` (models loaded once, batched), IDCS
through `ciebench.metrics.idcs.IDCSJudge` (cached verdicts: re-scoring costs no model calls).
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from tqdm.auto import tqdm

from ciebench.datasets import LoadedDataset
from ciebench.datasets.files import decode_image
from ciebench.datasets.problems import Problem

from .backend import Backend, LocalBackend
from .cache import cache_root
from .errors import UsageError, did_you_mean
from .io import atomic_write_json, sha256_bytes, stable_hash
from .results import OK, file_stem, id_stem, summarize, write_samples
from .schema import EditSample
from .status import Status
from .versions import package_versions

if TYPE_CHECKING:
    from ciebench.metrics.region import RegionScorer

log = logging.getLogger(__name__)

PREDICTION_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # matched case-insensitively, preferred in this order


class MetricNameError(UsageError, ValueError):
    """An unknown metric name, or a metric that needs an option that was not given."""


def default_cache() -> Path:
    return cache_root()


@dataclass(frozen=True)
class ScoreOptions:
    """Everything that decides a score. `judge` is a preset name or config path, or None for no IDCS."""

    protocol: str | None = None  # None: the dataset's default protocol
    metrics: tuple[str, ...] | None = None  # None: every region metric (+ idcs when a judge is given)
    judge: str | None = None
    device: str = "cpu"
    batch_size: int = 8
    cache_dir: str | None = None  # judge cache; default $CIEBENCH_CACHE or ~/.cache/ciebench
    judge_options: Any = None  # `ciebench.judge.run.JudgeRunOptions`: protocol, passes, prompts, budget


@dataclass
class Prediction:
    """One (sample, seed) to score. `path` is None when nothing was produced; `status`/`error` carry an
    upstream failure (an editor error) that scoring keeps as is."""

    sample_id: str
    seed: int = 0
    path: Path | None = None
    status: str = OK
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. edit_seconds, kept in the row
    invocation: int | None = None  # the run's invocation that wrote it (`runner.record_invocation`); not a column


@dataclass
class ScoreResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    n_missing: int


def find_predictions(directory: Path, sample_ids: Iterable[str], seeds: Iterable[int] | None = None) -> list[Prediction]:
    """`<id>.<ext>` (or `<id>__s<seed>.<ext>`, or a run's `images/<file_stem>.png`) for each sample,
    ext one of PREDICTION_SUFFIXES in any letter case.

    `seeds` None (what `ciebench score` does): the seeds the folder's file names give. A folder with
    `<stem>__s<seed>` files (a run's or an export's images) is scored at every seed any sample has a file
    for, each sample expected at each of them (one it lacks is missing), as the run scored itself; plain
    `<id>.<ext>` files are then not used, with a warning counting them. A folder of plain files is seed 0.
    Given `seeds`, those are looked for (plain `<id>.<ext>` too when there is one).

    Every prediction is resolved strictly inside `directory`: an id such as `../outside/secret`, an
    absolute id, or a symlink pointing out of the folder finds nothing (the sample is missing). When
    several files match one (sample, seed), the first by stem form then extension order is used and a
    warning names it and the ones ignored."""
    directory = Path(directory)
    root = directory.resolve()
    listings: dict[Path, _Folder] = {}
    sample_ids = [str(s) for s in sample_ids]
    if seeds is None:
        named = _seeds_named(root, sample_ids, listings)
        seeds, plain = (named, False) if named else ([0], True)
        if named:
            unused = sum(1 for sid in sample_ids if _matches(root, sid, listings))
            if unused:
                log.warning("%s holds predictions for seed(s) %s (<id>__s<seed>.<ext>): scoring those; %d file(s) "
                            "named <id>.<ext> without a seed are not scored", directory,
                            ", ".join(map(str, named)), unused)
    else:
        seeds = list(seeds)
        plain = len(seeds) == 1
    found = []
    for sample_id in sample_ids:
        for seed in seeds:
            # a run's images/ folder (file stems) scores as is; plain <id>.<ext> for a single seed
            stems = list(dict.fromkeys([file_stem(sample_id, seed), f"{sample_id}__s{seed}"]
                                       + ([sample_id] if plain else [])))
            matches = [m for stem in stems for m in _matches(root, stem, listings)]
            if not matches:
                wanted = (f"{sample_id}.png|jpg|jpeg|webp" if plain and seeds == [0]
                          else f"{file_stem(sample_id, seed)}.png|jpg|jpeg|webp for seed {seed} (of {', '.join(map(str, seeds))})")
                found.append(Prediction(sample_id, seed, None, Status.MISSING, f"no prediction {wanted} in {directory}"))
                continue
            if len(matches) > 1:
                log.warning("sample %s (seed %d): %d predictions in %s; using %s, ignoring %s", sample_id, seed,
                            len(matches), directory, matches[0].relative_to(root),
                            ", ".join(str(m.relative_to(root)) for m in matches[1:]))
            found.append(Prediction(sample_id, seed, matches[0]))
    return found


_SEEDED = re.compile(r"(.*)__s(-?[0-9]+)")


@dataclass
class _Folder:
    """One listed folder of predictions: file names by stem (allowed suffixes only), and, built when first
    asked for, the seeds each base stem has files for (`<base>__s<seed>`)."""

    path: Path  # resolved
    by_stem: dict[str, list[str]]
    _seeds: dict[str, set[int]] | None = None

    def seeds(self, base: str) -> set[int]:
        if self._seeds is None:
            self._seeds = {}
            for stem in self.by_stem:
                m = _SEEDED.fullmatch(stem)
                if m:
                    self._seeds.setdefault(m.group(1), set()).add(int(m.group(2)))
        return self._seeds.get(base, set())


def _seeds_named(root: Path, sample_ids: list[str], listings: dict[Path, _Folder]) -> list[int]:
    """The seeds that `<file_stem>` or `<id>__s<seed>` files in `root` give for any of `sample_ids`, sorted."""
    seeds: set[int] = set()
    for sample_id in sample_ids:
        for base in dict.fromkeys([id_stem(sample_id), sample_id]):  # file_stem's base, or the id as is
            listed = _listing(root, f"{base}__s0", listings)  # the folder the base's files would lie in
            if listed is not None:
                folder, name = listed
                seeds |= folder.seeds(name[:-len("__s0")])
    return sorted(seeds)


def _listing(root: Path, stem: str, listings: dict[Path, _Folder]) -> tuple[_Folder, str] | None:
    """The folder inside `root` that `<stem>.<ext>` would lie in (listed once) and the file's stem in it;
    None when `stem` leaves `root`. `stem` may name a subfolder ("cat/1")."""
    if not stem or "\x00" in stem or Path(stem).is_absolute():
        return None
    candidate = root / stem
    parent, name = candidate.parent, candidate.name
    try:
        real_parent = parent.resolve()
    except (OSError, RuntimeError):
        return None
    if not real_parent.is_relative_to(root) or name in ("", ".", ".."):
        return None
    if real_parent not in listings:
        by_stem: dict[str, list[str]] = {}
        try:
            for entry in os.scandir(real_parent):
                base, dot, ext = entry.name.rpartition(".")
                if dot and f".{ext.lower()}" in PREDICTION_SUFFIXES:
                    by_stem.setdefault(base, []).append(entry.name)
        except OSError:
            pass
        listings[real_parent] = _Folder(real_parent, by_stem)
    return listings[real_parent], name


def _matches(root: Path, stem: str, listings: dict[Path, _Folder]) -> list[Path]:
    """Regular files `<stem>.<ext>` inside `root` (ext case-insensitive), in PREDICTION_SUFFIXES order.
    `stem` may name a subfolder ("cat/1"); nothing outside `root` is ever returned."""
    listed = _listing(root, stem, listings)
    if listed is None:
        return []
    folder, name = listed
    names = sorted(folder.by_stem.get(name, []),
                   key=lambda n: (PREDICTION_SUFFIXES.index("." + n.rpartition(".")[2].lower()), n))
    out = []
    for file_name in names:
        path = folder.path / file_name
        try:
            real = path.resolve()
        except (OSError, RuntimeError):
            continue
        if real.is_relative_to(root) and real.is_file():  # is_file: regular files only, no FIFOs or devices
            out.append(path)
    return out


def resolve_metrics(options: ScoreOptions) -> tuple[list[str], bool]:
    """(region metric columns, whether IDCS is scored) for the metric or column names `options` asks
    for; the names, their columns and their order come from the metric catalogue."""
    from ciebench.metrics import catalogue

    region_all = catalogue.columns(catalogue.REGION_FAMILIES)
    groups = catalogue.metric_columns(catalogue.REGION_FAMILIES)
    if options.metrics is None:
        return region_all, options.judge is not None
    wanted = list(options.metrics)
    use_idcs = "idcs" in wanted
    known = region_all + [g for g in groups if g not in region_all] + ["idcs"]
    region = []
    for name in wanted:
        if name == "idcs":
            continue
        if name in region_all:
            region.append(name)
        elif name in groups:
            region += list(groups[name])
        else:
            raise MetricNameError(f"unknown metric {name!r}." + did_you_mean(name, known) + f" Known: {', '.join(known)}")
    if use_idcs and options.judge is None:
        raise MetricNameError("metric 'idcs' needs a judge: pass --judge (e.g. qwen, openai, local, or a config file)")
    # catalogue order, each once: `psnr,mse` and `mse,psnr,psnr` are one spec (and one column each)
    asked = set(region)
    return [c for c in region_all if c in asked] + [c for c in dict.fromkeys(region) if c not in region_all], use_idcs


@dataclass
class ScoreEntry:
    """One readable-so-far prediction for the region metrics: its (sample id, seed), the dataset row
    of its sample and the file's bytes (decoded where it is scored)."""

    key: tuple[str, int]
    index: int
    name: str
    data: bytes


def score(loaded: LoadedDataset, predictions: list[Prediction], out: Path, options: ScoreOptions,
          header: dict[str, Any] | None = None, progress: bool = True, backend: Backend | None = None,
          timing_since: float | None = None) -> ScoreResult:
    """Score `predictions` against `loaded` and write samples.csv/jsonl and summary.json into `out`.

    Images stream through: a sample and its prediction are decoded when they are scored. `backend`
    computes the region metrics (default `LocalBackend`, in this process; `RayBackend` on Ray).
    `timing_since`: a `time.perf_counter()` reading from which summary.json's `timing` counts, the
    time before this call being its stage `startup` (default: from this call)."""
    from ciebench.metrics import catalogue
    from ciebench.metrics.protocols import get_protocol
    from ciebench.metrics.timing import StageTimer

    timer = StageTimer(timing_since)  # per-stage seconds, into summary.json "timing"
    started = time.perf_counter()
    out = Path(out)
    protocol = get_protocol(options.protocol or loaded.default_protocol)
    region_metrics, use_idcs = resolve_metrics(options)
    with timer.stage("index"):
        index, edit_types = _index_by_id(loaded, {p.sample_id for p in predictions})
    judge_session = None
    if use_idcs:  # fail fast: a bad judge config or unverifiable prompts stop before any region scoring
        from ciebench.judge.run import JudgeSession

        judge_session = JudgeSession.open(options)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    paths: dict[tuple[str, int], Path] = {}

    def entries() -> Iterator[ScoreEntry]:
        for pred in predictions:
            i = index.get(pred.sample_id)
            row = {"sample_id": pred.sample_id, "seed": pred.seed, "edit_type": edit_types[i] if i is not None else "",
                   "status": pred.status, "error": pred.error, "prediction": None, "prediction_sha256": None,
                   "file_stem": file_stem(pred.sample_id, pred.seed)}
            row.update(pred.extra)
            key = (pred.sample_id, pred.seed)
            rows[key] = row
            if i is None:
                row.update(status=Status.UNKNOWN_SAMPLE, error=f"prediction for {pred.sample_id!r}, which is not in the dataset")
                continue
            if pred.path is None or pred.status != OK:
                continue
            with timer.stage("read"):
                data = pred.path.read_bytes()
                row["prediction"] = _relative(pred.path, out)
                row["prediction_sha256"] = sha256_bytes(data)
            paths[key] = pred.path
            yield ScoreEntry(key, i, str(pred.path), data)

    backend = backend if backend is not None else LocalBackend()
    expected = sum(p.path is not None and p.status == OK and p.sample_id in index for p in predictions)
    bar = tqdm(total=expected, desc="scoring", unit="img", disable=not progress)
    readable = set()
    pending = entries()
    for key, values in backend.score_regions(loaded, protocol, region_metrics, options, pending, timer):
        bar.update(1)
        unreadable = values.pop(UNREADABLE, None)
        if unreadable is not None:
            rows[key].update(status=Status.CORRUPT, error=unreadable)
            continue
        readable.add(key)
        error = values.pop("error", None)
        note = values.pop("note", None)  # why a metric is undefined (e.g. no background left)
        rows[key].update({m: values.get(m, math.nan) for m in region_metrics})
        if note:
            rows[key]["note"] = note
        if error:
            rows[key].update(status=Status.METRIC_ERROR, error=error)
    for _ in pending:  # every prediction gets its row, even where a scorer stopped early
        pass
    bar.close()
    models = dict(backend.model_ids())

    judge_info = None
    if use_idcs:
        keys = [k for k in rows if k in readable]
        with timer.stage("judge"):
            judge_info, judge_models = judge_session.run(keys, loaded, index, paths, rows, out, progress)
        models.update(judge_models)
    for row in rows.values():
        for m in region_metrics + (["idcs"] if use_idcs else []):
            row.setdefault(m, math.nan)

    metric_dirs = catalogue.directions(region_metrics + (["idcs"] if use_idcs else []))
    columns = region_metrics + (["idcs", "idcs_status", "idcs_error", "idcs_sentence", "idcs_failure", "idcs_passes",
                                 "idcs_protocol"] if use_idcs else [])
    ordered = list(rows.values())
    with timer.stage("writing"):
        tables = write_samples(out, ordered, columns)
    from .results import read_samples

    # n and coverage count against the dataset's samples asked for, not against what parses back
    expected_ids = [sid for sid in dict.fromkeys(p.sample_id for p in predictions) if sid in index]
    with timer.stage("summary"):
        summary = summarize(read_samples(out), metric_dirs, best_of="idcs" if use_idcs else None,
                            sample_ids=expected_ids)
    if judge_session is not None:
        judge_session.annotate(summary)
    summary.update({
        "protocol": {**protocol.to_dict(), "hash": protocol.hash},
        "dataset": loaded.describe(),
        "judge": judge_info,
        "models": models,
        "versions": package_versions(),
        "scoring_seconds": round(time.perf_counter() - started, 3),
        "score_options_hash": stable_hash({"protocol": protocol.hash, "metrics": region_metrics, "judge": judge_info}),
        "tables": tables,  # binds these numbers to this summary (results.stale_tables)
    })
    if header:
        summary.update(header)
    summary["timing"] = timer.report()
    atomic_write_json(out / "summary.json", summary)
    n_missing = sum(r["status"] == Status.MISSING for r in ordered)
    return ScoreResult(rows=ordered, summary=summary, n_missing=n_missing)


UNREADABLE = "__unreadable__"  # the key under which `score_entries` reports a prediction that does not decode


class LocalRegionScoring:
    """Region metrics in this process: one `RegionScorer` (models loaded once), batched, streaming."""

    def __init__(self, timer: Any = None) -> None:
        self._scorer = None
        self._timer = timer  # a metrics.timing.StageTimer shared with the caller, or None

    def score(self, loaded: LoadedDataset, protocol: Any, metrics: list[str], options: ScoreOptions,
              entries: Iterable[ScoreEntry]) -> Iterator[tuple[tuple[str, int], dict[str, Any]]]:
        from ciebench.metrics.region import RegionScorer

        self._scorer = RegionScorer(protocol, metrics=metrics, device=options.device, batch_size=options.batch_size,
                                    timer=self._timer)
        timer = self._scorer.timer

        def samples():
            for e in entries:
                with timer.stage("decode"):  # the dataset decodes the source image and mask here
                    sample = EditSample.from_row(loaded.dataset[e.index])
                yield e.key, sample, e.name, e.data

        yield from score_entries(self._scorer, samples())

    def model_ids(self) -> dict[str, str]:
        return dict(self._scorer.model_ids()) if self._scorer is not None else {}


def score_entries(scorer: RegionScorer, entries: Iterable[tuple[tuple[str, int], EditSample, str, bytes]]
                  ) -> Iterator[tuple[tuple[str, int], dict[str, Any]]]:
    """Decode each prediction and run `scorer` (a RegionScorer) over the readable ones, lazily and in
    order; yields (key, metric values), or (key, {UNREADABLE: message}) for a prediction that does not
    decode. Shared by the local scorer and the Ray workers, so both score exactly alike.

    Predictions decode in `scorer.workers` threads, a few ahead of the scorer, so that on a GPU the
    host's serial part per sample is only reading the dataset row (PIL and zlib release the GIL)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from ciebench.metrics.region import ScoreItem

    # Every entry's key in input order, with {UNREADABLE: message} for a prediction that does not
    # decode: filled by the scorer's feeder thread, emptied here, so rows come back in input order.
    keys: deque[tuple[tuple[str, int], dict[str, Any] | None]] = deque()
    timer, workers = scorer.timer, scorer.workers

    def decode(key: tuple[str, int], name: str, data: bytes) -> tuple[Any, str | None]:
        problems: list[Problem] = []
        with timer.stage("decode"):
            image = decode_image(data, name, key[0], "prediction", problems)
        if image is None:
            return None, problems[0].message if problems else "unreadable prediction"
        return image.image, None

    def items():
        # Decoded images wait here at most `2 * workers` at a time: memory stays flat.
        ahead: deque[tuple[tuple[str, int], EditSample, Future]] = deque()

        def ready():
            key, sample, future = ahead.popleft()
            image, problem = future.result()
            if image is None:
                keys.append((key, {UNREADABLE: problem}))
                return
            keys.append((key, None))
            yield ScoreItem(sample_id=key[0], source=sample.image, mask=sample.mask, prediction=image,
                            clip_text=sample.clip_text)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ciebench-decode") as pool:
            try:
                for key, sample, name, data in entries:
                    ahead.append((key, sample, pool.submit(decode, key, name, data)))
                    if len(ahead) > 2 * workers:
                        yield from ready()
                while ahead:
                    yield from ready()
            finally:
                for _key, _sample, future in ahead:  # stopped early: drop what is not started
                    future.cancel()

    for sample_id, values in scorer.score(items()):
        key, unreadable = keys.popleft()
        while unreadable is not None:
            yield key, unreadable
            key, unreadable = keys.popleft()
        assert sample_id == key[0], (sample_id, key)
        yield key, values
    while keys:  # unreadable ones after the last scored one
        yield keys.popleft()


def _index_by_id(loaded: LoadedDataset, wanted: set[str]) -> tuple[dict[str, int], list[str]]:
    """Row of each wanted sample id, and every row's edit type: two text columns, no image decoded."""
    columns = loaded.dataset.select_columns(["id", "edit_type"])[:]
    ids, edit_types = columns["id"], [t or "other" for t in columns["edit_type"]]
    return {sid: i for i, sid in enumerate(ids) if sid in wanted}, edit_types


def _relative(path: Path, out: Path) -> str:
    try:
        return str(Path(os.path.relpath(path.resolve(), out.resolve())))
    except ValueError:
        return str(path.resolve())
