"""`ciebench verify RUN`: check a finished run folder after the fact, one verdict per check.

A run that travels (to a co-author, a reviewer, a leaderboard) carries its own evidence: every image
and trace file is hashed in its record, `spec.json` carries its hash, the protocol its hash, and the
summary is a pure function of `samples.csv`. `verify_run` recomputes each of these, re-scores a random
subset (or all) of the deterministic metrics with the recorded protocol, and says which check failed
and on which sample or file. The result is written to `verify.json` in the run folder together with
the hashes of the files it vouched for, so the leaderboard can show "verified with ciebench X" and
notice when a file changed afterwards.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .errors import DataError
from .io import atomic_write_json, read_json_object, sha256_file
from .results import describe_conflict, read_samples, record_conflicts, require_run_folder, scored_block, stale_tables, summarize
from .stats import from_json_number
from .status import Status

PASS, FAIL, SKIP = "pass", "fail", "skip"
VERIFY_FILE = "verify.json"
# The files a verification vouches for; any later change makes it stale.
VOUCHED_FILES = ("spec.json", "samples.csv", "samples.jsonl", "summary.json")
DEFAULT_SUBSET = 8
MAX_LISTED = 10  # problems named per check; the count says how many more

# Metrics whose value is a pure function of (source, mask, prediction, protocol): re-scorable.
# IDCS depends on a judge model and is not re-scored (its verdicts are kept with their provenance).
PIXEL_METRICS = ("psnr", "mse", "ssim", "locality_precision", "locality_recall", "locality_f1")
MODEL_METRICS = ("lpips", "clip")


def rescore_tolerance(protocol: dict[str, Any], metric: str) -> tuple[float, float]:
    """(relative, absolute) tolerance for a re-scored value under `protocol`.

    float64 arithmetic reproduces to rounding; torchmetrics-float32 reductions vary in the last
    digits with the CPU thread count (README, "Metrics and protocols"); network metrics (LPIPS, CLIP)
    also vary across devices and kernels (GPU run, CPU verification), hence their wider band."""
    if metric in MODEL_METRICS:
        return 1e-3, 1e-3
    if protocol.get("arithmetic") == "float64":
        return 1e-9, 1e-12
    return 1e-5, 1e-6


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # pass | fail | skip
    detail: str
    problems: tuple[str, ...] = ()

    def line(self) -> str:
        text = f"{self.verdict.upper():<4} {self.name:<9} {self.detail}"
        listed = "".join(f"\n       - {p}" for p in self.problems[:MAX_LISTED])
        more = f"\n       ... and {len(self.problems) - MAX_LISTED} more" if len(self.problems) > MAX_LISTED else ""
        return text + listed + more


@dataclass
class Verification:
    run_dir: Path
    checks: list[Check] = field(default_factory=list)
    ciebench_version: str = __version__

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(c.verdict != FAIL for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == FAIL]

    def to_dict(self) -> dict[str, Any]:
        return {"verified": self.verified, "ciebench_version": self.ciebench_version,
                "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "checks": [dataclasses.asdict(c) | {"problems": list(c.problems)} for c in self.checks],
                "files": {name: sha256_file(self.run_dir / name) for name in VOUCHED_FILES
                          if (self.run_dir / name).is_file()}}


def verify_run(run_dir: str | Path, *, dataset: str | None = None, subset: int = DEFAULT_SUBSET,
               all_samples: bool = False, rescore: bool = True, seed: int | None = None, device: str = "cpu",
               batch_size: int = 8) -> Verification:
    """Every check on `run_dir`. `dataset` overrides the dataset spec recorded in spec.json (a run
    that travelled without its dataset's path); `subset` rows are re-scored (all with `all_samples`),
    drawn with `seed` (random when None, and reported)."""
    run_dir = require_run_folder(run_dir)
    spec = _read_json(run_dir / "spec.json")
    summary = _read_json(run_dir / "summary.json")
    samples = read_samples(run_dir)
    records = _read_records(run_dir)
    result = Verification(run_dir)
    result.checks.append(check_images(run_dir, samples, records))
    result.checks.append(check_traces(run_dir, records))
    result.checks.append(check_tables(run_dir, samples, records, spec))
    result.checks.append(check_spec(spec, summary))
    result.checks.append(check_protocol(spec, summary))
    result.checks.append(check_dataset(spec, summary))
    if rescore:
        result.checks.append(check_rescore(run_dir, spec, summary, samples, dataset=dataset, subset=subset,
                                           all_samples=all_samples, seed=seed, device=device, batch_size=batch_size))
    else:
        result.checks.append(Check("rescore", SKIP, "not asked (--no-rescore)"))
    result.checks.append(check_summary(summary, samples, run_dir))
    return result


# ---- files ------------------------------------------------------------------------------------------
def check_images(run_dir: Path, samples: pd.DataFrame, records: dict[str, dict]) -> Check:
    """Each row's prediction file against the row's sha256 and, in an `evaluate` run, its record."""
    problems, n = [], 0
    for row in samples.itertuples(index=False):
        sha = _text(getattr(row, "prediction_sha256", None))
        rel = _text(getattr(row, "prediction", None))
        if not sha:
            continue
        n += 1
        path = run_dir / rel if rel else None
        if path is None or not path.is_file():
            problems.append(f"sample {row.sample_id} seed {row.seed}: {rel or 'prediction'} is missing")
            continue
        actual = sha256_file(path)
        if actual != sha:
            problems.append(f"sample {row.sample_id} seed {row.seed}: {rel} has sha256 {actual[:12]}..., "
                            f"samples.csv records {sha[:12]}...")
        record = records.get(Path(rel).stem)
        if records and record is not None and record.get("image_sha256") not in (None, sha):
            problems.append(f"sample {row.sample_id} seed {row.seed}: records/{Path(rel).stem}.json has image sha256 "
                            f"{str(record.get('image_sha256'))[:12]}..., samples.csv {sha[:12]}...")
    for stem, record in records.items():
        if record.get("status") == Status.OK and record.get("image_sha256"):
            path = run_dir / "images" / f"{stem}.png"
            if not path.is_file():
                problems.append(f"records/{stem}.json: images/{stem}.png is missing")
            elif not (samples["prediction_sha256"] == record["image_sha256"]).any():
                actual = sha256_file(path)
                if actual != record["image_sha256"]:
                    problems.append(f"images/{stem}.png has sha256 {actual[:12]}..., its record {record['image_sha256'][:12]}...")
    if not n and not records:
        return Check("images", SKIP, "no predictions recorded")
    return _verdict("images", problems, f"{n} image(s) match their recorded sha256")


def check_traces(run_dir: Path, records: dict[str, dict]) -> Check:
    problems, n, unhashed = [], 0, 0
    for stem, record in records.items():
        files = record.get("trace_files")
        if files is None:
            unhashed += (run_dir / "traces" / f"{stem}.json").is_file()
            continue
        for rel, sha in files.items():
            n += 1
            path = run_dir / rel
            if not path.is_file():
                problems.append(f"{rel} (sample record {stem}) is missing")
            elif sha256_file(path) != sha:
                problems.append(f"{rel} differs from the sha256 in records/{stem}.json")
    if not n and not problems:
        why = f"{unhashed} trace(s) written before traces were hashed" if unhashed else "no traces"
        return Check("traces", SKIP, why)
    extra = f"; {unhashed} older trace(s) without a hash" if unhashed else ""
    return _verdict("traces", problems, f"{n} trace file(s) match their recorded sha256{extra}")


def check_tables(run_dir: Path, samples: pd.DataFrame, records: dict[str, dict] | None = None,
                 spec: dict[str, Any] | None = None) -> Check:
    """samples.csv and samples.jsonl are written together from the same rows: they must agree; in an
    `evaluate` run every record has its row and there is one row per sample and seed (a dropped row
    would otherwise vanish from a re-aggregated summary unnoticed)."""
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        return Check("samples", FAIL, "samples.jsonl is missing", ("samples.jsonl",))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    problems = []
    keys = {(str(s), int(k)) for s, k in zip(samples["sample_id"], samples["seed"])}
    for stem, record in (records or {}).items():
        key = (str(record.get("sample_id")), int(record.get("seed", 0)))
        if key not in keys:
            problems.append(f"records/{stem}.json (sample {key[0]} seed {key[1]}) has no row in samples.csv")
    n, seeds = ((spec or {}).get("dataset") or {}).get("n"), (spec or {}).get("seeds")
    if spec and spec.get("spec_hash") and isinstance(n, int) and seeds and len(samples) != n * len(seeds):
        problems.append(f"samples.csv has {len(samples)} rows; the spec asks for {n} sample(s) x {len(seeds)} seed(s)")
    if len(rows) != len(samples):
        problems.append(f"samples.csv has {len(samples)} rows, samples.jsonl {len(rows)}")
    by_key = {(str(r.get("sample_id")), int(r.get("seed", 0))): r for r in rows}
    for row in samples.to_dict("records"):
        key = (str(row["sample_id"]), int(row["seed"]))
        other = by_key.get(key)
        if other is None:
            problems.append(f"sample {key[0]} seed {key[1]}: in samples.csv, not in samples.jsonl")
            continue
        for col, value in row.items():
            if col in other and not _same(value, other[col]):
                problems.append(f"sample {key[0]} seed {key[1]}: {col} is {value!r} in samples.csv, "
                                f"{other[col]!r} in samples.jsonl")
    return _verdict("samples", problems, f"samples.csv and samples.jsonl agree on {len(samples)} row(s)")


# ---- spec and protocol ------------------------------------------------------------------------------
def check_spec(spec: dict[str, Any], summary: dict[str, Any]) -> Check:
    if not spec:
        return Check("spec", FAIL, "spec.json is missing", ("spec.json",))
    if "spec_hash" not in spec:
        return Check("spec", SKIP, "spec.json of a `ciebench score` output has no spec hash")
    from .spec import RunSpec

    names = [f.name for f in dataclasses.fields(RunSpec)]
    unknown = sorted(set(spec) - set(names) - {"spec_hash", "editor_config_hash"})
    problems = [f"spec.json has field(s) a run spec does not have: {', '.join(unknown)}"] if unknown else []
    try:
        rebuilt = RunSpec(**{k: (tuple(v) if k in ("seeds", "metrics") else v) for k, v in spec.items() if k in names})
    except TypeError as exc:
        return Check("spec", FAIL, f"spec.json is not a run spec: {exc}", (str(exc),))
    if rebuilt.spec_hash != spec["spec_hash"]:
        problems.append(f"spec.json's content hashes to {rebuilt.spec_hash}, its recorded spec_hash is {spec['spec_hash']}")
    if spec.get("editor_config_hash") not in (None, rebuilt.editor_config_hash, rebuilt.legacy_editor_config_hash):
        problems.append(f"editor config hashes to {rebuilt.editor_config_hash}, recorded {spec['editor_config_hash']}")
    run_header = summary.get("run") if isinstance(summary.get("run"), dict) else {}
    if run_header.get("spec_hash") and run_header["spec_hash"] != spec["spec_hash"]:
        problems.append(f"summary.json was produced by spec {run_header['spec_hash']}, spec.json says {spec['spec_hash']}")
    return _verdict("spec", problems, f"spec hash {spec['spec_hash']} matches its content and the summary")


def check_protocol(spec: dict[str, Any], summary: dict[str, Any]) -> Check:
    from ciebench.metrics.protocols import PROTOCOLS, Protocol

    recorded = scored_block(spec, summary, "protocol")  # the protocol the numbers were scored under
    if not recorded:
        return Check("protocol", FAIL, "no protocol recorded in spec.json or summary.json")
    fields = {k: v for k, v in recorded.items() if k != "hash"}
    try:
        protocol = Protocol(**fields)
    except (TypeError, ValueError) as exc:
        return Check("protocol", FAIL, f"recorded protocol is not valid in ciebench {__version__}: {exc}", (str(exc),))
    problems = []
    if protocol.hash != recorded.get("hash"):
        problems.append(f"protocol fields hash to {protocol.hash}, recorded hash {recorded.get('hash')}")
    problems += _conflicts(spec, summary, "protocol")
    known = PROTOCOLS.get(protocol.name)
    note = ""
    if known is not None and known.hash != protocol.hash:
        # not a failure of the run: the preset changed in this ciebench; re-scoring uses the recorded fields
        note = f" (ciebench {__version__}'s '{protocol.name}' preset now hashes to {known.hash})"
    return _verdict("protocol", problems, f"protocol '{protocol.name}' hash {protocol.hash} matches its fields{note}")


def check_dataset(spec: dict[str, Any], summary: dict[str, Any]) -> Check:
    return _verdict("dataset", _conflicts(spec, summary, "dataset"), "spec.json and summary.json name the same dataset")


def _conflicts(spec: dict[str, Any], summary: dict[str, Any], block: str) -> list[str]:
    conflict = record_conflicts(spec, summary).get(block)
    return [describe_conflict(block, *conflict)] if conflict else []


# ---- re-scoring -------------------------------------------------------------------------------------
def check_rescore(run_dir: Path, spec: dict[str, Any], summary: dict[str, Any], samples: pd.DataFrame, *,
                  dataset: str | None, subset: int, all_samples: bool, seed: int | None, device: str,
                  batch_size: int) -> Check:
    from ciebench.datasets import DatasetError, read_dataset
    from ciebench.metrics.protocols import Protocol

    from .scoring import UNREADABLE, LocalRegionScoring, ScoreEntry, ScoreOptions

    metrics = [m for m in PIXEL_METRICS + MODEL_METRICS if m in samples.columns and m in (summary.get("metrics") or {})]
    if not metrics:
        return Check("rescore", SKIP, "no deterministic metric in this run")
    fields = {k: v for k, v in scored_block(spec, summary, "protocol").items() if k != "hash"}
    try:
        protocol = Protocol(**fields)
    except (TypeError, ValueError) as exc:
        return Check("rescore", FAIL, f"cannot rebuild the recorded protocol: {exc}")
    recorded_ds = scored_block(spec, summary, "dataset")  # where the two disagree, the one the numbers were scored on
    ds_spec = dataset or recorded_ds.get("spec")
    if not ds_spec:
        return Check("rescore", FAIL, "no dataset recorded; pass --dataset")
    try:
        loaded = read_dataset(str(ds_spec))
    except DatasetError as exc:
        return Check("rescore", FAIL, f"cannot load dataset {ds_spec!r}: {exc}",
                     ("pass --dataset with the run's dataset, or --no-rescore",))
    revision = str(recorded_ds.get("revision") or "")
    if revision and not loaded.names_revision(revision):
        return Check("rescore", FAIL, f"dataset {ds_spec!r} has revision {loaded.revision}, the run used {revision}",
                     (f"dataset revision {loaded.revision} != {revision}",))
    # Every row that carries a value is re-scorable, whatever its status says: a status or a cleared
    # prediction must not let a row's numbers into the means unchecked.
    carries = samples[metrics].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)
    problems = [f"sample {r.sample_id} seed {r.seed}: {', '.join(m for m in metrics if pd.notna(getattr(r, m)))} "
                f"recorded without a prediction image (status {r.status})"
                for r in samples[carries & samples["prediction"].isna()].itertuples(index=False)]
    ids = {str(s): i for i, s in enumerate(loaded.dataset["id"])}
    rows = list(samples[carries & samples["prediction"].notna()].itertuples(index=False))
    seed = seed if seed is not None else random.SystemRandom().randrange(1 << 31)
    chosen = rows if all_samples or len(rows) <= subset else random.Random(seed).sample(rows, subset)
    entries = []
    for row in chosen:
        index = ids.get(str(row.sample_id))
        path = run_dir / str(row.prediction)
        if index is None:
            problems.append(f"sample {row.sample_id}: not in dataset {ds_spec!r}")
        elif not path.is_file():
            problems.append(f"sample {row.sample_id} seed {row.seed}: {row.prediction} is missing")
        else:
            entries.append(ScoreEntry((str(row.sample_id), int(row.seed)), index, str(path), path.read_bytes()))
    stage = LocalRegionScoring()
    options = ScoreOptions(protocol=protocol.name, device=device, batch_size=batch_size)
    expected = {(str(r.sample_id), int(r.seed)): r._asdict() for r in chosen}
    for key, values in stage.score(loaded, protocol, metrics, options, entries):
        if UNREADABLE in values:
            problems.append(f"sample {key[0]} seed {key[1]}: prediction does not decode: {values[UNREADABLE]}")
            continue
        for m in metrics:
            recorded = expected[key].get(m)
            as_float = _as_float(recorded)
            if expected[key].get("status") == Status.METRIC_ERROR and (as_float is None or math.isnan(as_float)):
                continue  # the failure it records (e.g. out of memory) need not happen again
            rel, abs_ = rescore_tolerance(fields, m)
            if not _close(values.get(m, math.nan), recorded, rel, abs_):
                problems.append(f"sample {key[0]} seed {key[1]}: {m} re-scores to {values.get(m)!r}, "
                                f"samples.csv has {recorded!r} (tolerance rel {rel:g}, abs {abs_:g})")
    what = "all" if len(chosen) == len(rows) else f"{len(chosen)} of {len(rows)} (random seed {seed})"
    return _verdict("rescore", problems, f"{', '.join(metrics)} re-scored on {what} row(s) under protocol "
                                         f"'{protocol.name}' agree")


# ---- summary ----------------------------------------------------------------------------------------
def check_summary(summary: dict[str, Any], samples: pd.DataFrame, run_dir: Path | None = None) -> Check:
    if not summary:
        return Check("summary", FAIL, "summary.json is missing", ("summary.json",))
    declared = summary.get("metrics") or {}
    from ciebench.metrics.catalogue import higher_is_better

    directions = {m: bool(b.get("higher_is_better", higher_is_better(m))) for m, b in declared.items()
                  if isinstance(b, dict)}
    best_of = "idcs" if "idcs" in directions else None
    fresh = summarize(samples, directions, best_of=best_of)
    _judge_annotations(declared.get("idcs"), fresh.get("metrics", {}).get("idcs"), samples)
    # a table from another scoring re-aggregates to other numbers, unless the two scorings agree on them
    problems: list[str] = stale_tables(run_dir, summary) if run_dir is not None else []
    for key in ("n_samples", "n_rows", "status_counts", "metrics", "by_edit_type", "seeds", "best_of_n"):
        if key in fresh or key in summary:
            _compare(summary.get(key), fresh.get(key), key, problems)
    return _verdict("summary", problems, f"summary.json re-aggregates from samples.csv ({len(directions)} metric(s))")


def _judge_annotations(recorded: Any, fresh: Any, samples: pd.DataFrame) -> None:
    """Into the re-aggregated IDCS block, what the judge session recorded beside its mean (not in the
    table's aggregation, so taken as recorded), except the failure classes, re-derived from the table."""
    if not isinstance(recorded, dict) or not isinstance(fresh, dict):
        return
    from ciebench.judge.run import ANNOTATIONS, table_failure_counts

    fresh.update({k: recorded[k] for k in ANNOTATIONS if k in recorded and k not in fresh})
    if "failures_by_class" in recorded:
        fresh["failures_by_class"] = table_failure_counts(samples)


def _compare(recorded: Any, fresh: Any, where: str, problems: list[str]) -> None:
    if isinstance(fresh, dict) or isinstance(recorded, dict):
        if not isinstance(recorded, dict) or not isinstance(fresh, dict):
            problems.append(f"summary.json {where}: recorded {recorded!r}, re-aggregated {fresh!r}")
            return
        for k in sorted(set(recorded) | set(fresh), key=str):
            _compare(recorded.get(k), fresh.get(k), f"{where}.{k}", problems)
    elif isinstance(fresh, list) or isinstance(recorded, list):
        if not isinstance(recorded, list) or not isinstance(fresh, list) or len(recorded) != len(fresh):
            problems.append(f"summary.json {where}: recorded {recorded!r}, re-aggregated {fresh!r}")
            return
        for i, (a, b) in enumerate(zip(recorded, fresh)):
            _compare(a, b, f"{where}[{i}]", problems)
    elif not _same(recorded, fresh, rel=1e-9):
        problems.append(f"summary.json {where}: recorded {recorded!r}, re-aggregated {fresh!r}")


# ---- verify.json ------------------------------------------------------------------------------------
def write_verification(verification: Verification) -> Path:
    path = verification.run_dir / VERIFY_FILE
    atomic_write_json(path, verification.to_dict())
    return path


def read_verification(run_dir: str | Path) -> dict[str, Any] | None:
    """verify.json with `current` added: False when a vouched-for file changed since verification."""
    run_dir = Path(run_dir)
    data = _read_json(run_dir / VERIFY_FILE)
    if not data:
        return None
    files = data.get("files") or {}
    data["current"] = all((run_dir / name).is_file() and sha256_file(run_dir / name) == sha
                          for name, sha in files.items()) and bool(files)
    return data


# ---- helpers ----------------------------------------------------------------------------------------
def _read_records(run_dir: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((run_dir / "records").glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            records[path.stem] = {"status": "unreadable", "error": str(exc)}
    return records


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, DataError)


def _verdict(name: str, problems: list[str], ok_detail: str) -> Check:
    if problems:
        return Check(name, FAIL, f"{len(problems)} problem(s)", tuple(problems))
    return Check(name, PASS, ok_detail)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _as_float(value: Any) -> float | None:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("inf", "-inf", "nan", "infinity", "-infinity"):
        return from_json_number(value)
    return None


def _close(a: Any, b: Any, rel: float, abs_: float) -> bool:
    x, y = _as_float(a), _as_float(b)
    if x is None or y is None:
        return False
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return math.isclose(x, y, rel_tol=rel, abs_tol=abs_)


def _same(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Equal as the CSV/JSON round trip leaves them: numbers to `rel` (CSV keeps 10 digits), NaN and
    missing alike, text exactly."""
    if _text(a) == "" and _text(b) == "":
        return True
    x, y = _as_float(a), _as_float(b)
    if x is not None and y is not None:
        return _close(x, y, rel, 0.0)
    return _text(a) == _text(b)

