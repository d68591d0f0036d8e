"""The per-sample results table and the summary: the one format scorer, runner and leaderboard share.

`samples.csv` / `samples.jsonl`: one row per (sample, seed) with the columns in `BASE_COLUMNS`, one
column per metric value (NaN = not computed; +inf allowed for PSNR of identical images), and
`<metric>_status` / `<metric>_error` columns for judged metrics. `summary.json`: per metric the
mean, bootstrap 95% CI, n and coverage, per edit type, across-seed spread, and a separately
labelled best-of-N block.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .errors import UsageError
from .io import atomic_write_text, sha256_bytes, sha256_file
from .stats import bootstrap_mean_ci, json_number

from .status import Status

BASE_COLUMNS = ["sample_id", "seed", "edit_type", "status", "error", "note", "prediction", "prediction_sha256",
                "edit_seconds", "file_stem"]
OK = Status.OK  # row statuses: see ciebench.status.Status

# An id is used verbatim as a file stem only when it is short, lower-case ASCII letters, digits, '_' or
# '-' and starts with a letter or digit: such names are safe on every file system, and distinct even
# where names are case-insensitive. Any other id gets a readable prefix, '.', and a hash of the whole
# id; a verbatim stem never contains '.', so the two forms cannot collide.
class RunFolderError(UsageError, ValueError):
    """A path given as a run folder that is not one or cannot be read, or runs that cannot be used
    together: exit 2 in every command (leaderboard, verify, export, judge)."""


def require_run_folder(path: str | Path) -> Path:
    """`path` as a Path when it is a scored run folder (it holds samples.csv), else `RunFolderError`."""
    path = Path(path)
    if not (path / "samples.csv").is_file():
        raise RunFolderError(f"{path}: not a run directory (no samples.csv); score it first with `ciebench evaluate` "
                             "or `ciebench score`")
    return path


_PLAIN_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_PREFIX_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
PREFIX_LENGTH = 40
HASH_LENGTH = 12


def id_stem(sample_id: str) -> str:
    """The file-name stem of a sample id: at most 64 ASCII characters, file-system-safe, collision-free
    (the one rule; the run directory and the gallery both use it)."""
    sample_id = str(sample_id)
    if _PLAIN_ID.fullmatch(sample_id):
        return sample_id
    prefix = _PREFIX_CHARS.sub("_", sample_id).strip("_-")[:PREFIX_LENGTH] or "id"
    return f"{prefix}.{hashlib.sha256(sample_id.encode('utf-8')).hexdigest()[:HASH_LENGTH]}"


def file_stem(sample_id: str, seed: int) -> str:
    """The run directory's stem for a (sample, seed) image, trace and record."""
    return f"{id_stem(sample_id)}__s{int(seed)}"


_RUNS = re.compile(r"[0-9]+|[^0-9]+")


def natural_key(text: str) -> tuple:
    """The one natural sort key (sample ids, file stems): "2" before "10", "a2" before "a10". Runs of
    ASCII digits compare as numbers and before text, other runs as case-folded text; the exact spelling
    breaks ties, so "7" and "007" stay distinct and ordered. Numeric ids come before all others."""
    s = str(text)
    return tuple((0, int(run), "") if run[0] in "0123456789" else (1, 0, run.lower()) for run in _RUNS.findall(s)), s


# What spec.json and summary.json each record about the numbers, field by field: a scoring that stopped
# between writing the two leaves them disagreeing (see `record_conflicts`).
RECORDED_FIELDS = {"protocol": ("name", "hash"), "dataset": ("spec", "revision")}


def record_conflicts(spec: dict[str, Any], summary: dict[str, Any]) -> dict[str, tuple[dict, dict]]:
    """The blocks of `RECORDED_FIELDS` on which spec.json and summary.json disagree (a field both record
    with different values), as block -> (spec's, summary's). The numbers are summary.json's: it is
    written with them, so its block is the one that describes them."""
    out = {}
    for block, fields in RECORDED_FIELDS.items():
        recorded, scored = recorded_block(spec, block), recorded_block(summary, block)
        if any(f in recorded and f in scored and recorded[f] != scored[f] for f in fields):
            out[block] = (recorded, scored)
    return out


def describe_conflict(block: str, recorded: dict[str, Any], scored: dict[str, Any]) -> str:
    """One `record_conflicts` entry in words: what each file names, field by field."""
    said, used = (" ".join(str(b.get(f)) for f in RECORDED_FIELDS[block]) for b in (recorded, scored))
    return f"spec.json names {block} {said} but summary.json was scored under {block} {used}"


def scored_block(spec: dict[str, Any], summary: dict[str, Any], block: str) -> dict[str, Any]:
    """The `block` (protocol, dataset) that describes a folder's numbers: spec.json's (the fuller
    record), or summary.json's where the two disagree (see `record_conflicts`) or spec.json has none.
    The leaderboard labels runs with it and `verify` re-scores under it."""
    recorded, scored = recorded_block(spec, block), recorded_block(summary, block)
    if block in record_conflicts(spec, summary):
        return scored
    return recorded or scored


def recorded_block(record: dict[str, Any], name: str) -> dict[str, Any]:
    """`record[name]` (spec.json's or summary.json's protocol, dataset, ...) when it is a mapping, else {}."""
    block = record.get(name)
    return block if isinstance(block, dict) else {}


SAMPLE_TABLES = ("samples.csv", "samples.jsonl")


def write_samples(run_dir: Path, rows: list[dict[str, Any]], metric_columns: Iterable[str]) -> dict[str, str]:
    """Write samples.csv and samples.jsonl; return each one's sha256, for summary.json's "tables"
    (see `stale_tables`)."""
    run_dir = Path(run_dir)
    columns = list(BASE_COLUMNS) + [c for c in metric_columns if c not in BASE_COLUMNS]
    extra = sorted({k for r in rows for k in r} - set(columns))
    frame = pd.DataFrame([{c: r.get(c) for c in columns + extra} for r in rows], columns=columns + extra)
    frame = frame.sort_values(["sample_id", "seed"], kind="stable", key=_natural_key)
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.10g")
    lines = [json.dumps({k: _jsonable(v) for k, v in rec.items()}, sort_keys=False) for rec in frame.to_dict("records")]
    texts = dict(zip(SAMPLE_TABLES, (buf.getvalue(), "\n".join(lines) + ("\n" if lines else ""))))
    for name, text in texts.items():
        atomic_write_text(run_dir / name, text)
    return {name: sha256_bytes(text.encode("utf-8")) for name, text in texts.items()}


def stale_tables(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    """The sample tables whose content is not the one summary.json was written with: a scoring killed
    between writing the tables and the summary, or a table edited since, leaves numbers that the
    summary's protocol, dataset and models do not describe. Empty when the summary records no hashes
    (written before ciebench recorded them)."""
    recorded = summary.get("tables")
    if not isinstance(recorded, dict):
        return []
    problems = []
    for name in SAMPLE_TABLES:
        path = Path(run_dir) / name
        if name not in recorded:
            continue
        if not path.is_file():
            problems.append(f"{path} is missing; summary.json records it")
        elif sha256_file(path) != recorded[name]:
            problems.append(f"{path} is not the table summary.json was written with (a scoring interrupted "
                            f"between the two, or an edit since)")
    return problems


def require_current_tables(run_dir: Path, summary: dict[str, Any], error: type[Exception]) -> None:
    """`error` naming every stale table and the fix, when `stale_tables` finds any."""
    problems = stale_tables(run_dir, summary)
    if problems:
        raise error("; ".join(problems) + f". Score {run_dir} again (`ciebench score`, or the same "
                    "`ciebench evaluate`, which resumes and re-scores) so that its numbers and summary agree")


# Columns read as text exactly as written. Ids such as "NA", "null", "nan" or "007" are ids, never
# missing (ID_COLUMNS); in the other text columns only an empty cell is missing: an edit type "N/A" or a
# judge's sentence "None" is that text (pandas' default would read both as NaN, merging edit types and
# failing `verify` against samples.jsonl). Numeric columns keep pandas' usual missing-value reading.
ID_COLUMNS = ("sample_id", "file_stem")
TEXT_COLUMNS = (*ID_COLUMNS, "edit_type", "status", "error", "note", "prediction", "prediction_sha256")
_TEXT_SUFFIXES = ("_status", "_error", "_sentence", "_failure", "_passes", "_protocol")  # a judged metric's


def is_text_column(name: str) -> bool:
    return name in TEXT_COLUMNS or name.endswith(_TEXT_SUFFIXES)


def read_samples(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / "samples.csv"
    header = pd.read_csv(path, nrows=0).columns
    na = {c: [] if c in ID_COLUMNS else [""] if is_text_column(c) else list(_DEFAULT_NA) for c in header}
    frame = pd.read_csv(path, dtype={c: str for c in header if is_text_column(c)}, keep_default_na=False,
                        na_values=na)
    return frame


_DEFAULT_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                         "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def _natural_key(col: pd.Series) -> pd.Series:
    if col.name != "sample_id":
        return col
    return col.map(natural_key)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return json_number(v)
    if isinstance(v, np.integer):
        return int(v)
    if v is pd.NA:
        return None
    return v


def summarize(frame: pd.DataFrame, metrics: dict[str, bool], best_of: str | None = None,
              sample_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Summary of a samples table. `metrics` maps metric column -> higher_is_better.

    Per sample, scores are first averaged over seeds; the mean and CI are over samples (`n`). Coverage
    is the share of predictions (sample x seed) with a defined value: with one seed, the share of
    samples; with several, a sample whose value rests on fewer than all its seeds lowers it. `sample_ids` is the dataset's sample list: when given,
    `n_samples` and every coverage are counted against it (a sample whose rows are lost or unreadable
    lowers coverage instead of vanishing), and rows of ids outside it are left out. With several
    seeds, `seeds` gives each seed's mean and their spread (std); `best_of_n` (labelled as such)
    keeps, per sample, the seed best on `best_of`."""
    if sample_ids is not None:
        expected = list(dict.fromkeys(str(s) for s in sample_ids))
        frame = frame[frame["sample_id"].astype(str).isin(set(expected))]
        n_samples = len(expected)
    else:
        n_samples = int(frame["sample_id"].nunique()) if len(frame) else 0
    seeds = sorted(frame["seed"].dropna().unique().tolist()) if len(frame) else []
    n_seeds = max(1, len(seeds))
    out: dict[str, Any] = {"n_samples": n_samples, "n_rows": int(len(frame)),
                           "n_samples_with_rows": int(frame["sample_id"].nunique()) if len(frame) else 0,
                           "status_counts": {str(k): int(v) for k, v in frame["status"].value_counts().items()},
                           "metrics": _metric_block(frame, metrics, n_samples, n_seeds)}
    out["by_edit_type"] = {
        str(et): {"n_samples": int(g["sample_id"].nunique()),
                  "metrics": _metric_block(g, metrics, int(g["sample_id"].nunique()), n_seeds)}
        for et, g in frame.groupby("edit_type", dropna=False)
    }
    if len(seeds) > 1:
        per_seed = {}
        for m in metrics:
            if m not in frame:
                continue
            means = [float(np.nanmean(frame.loc[frame["seed"] == s, m].to_numpy(dtype=float)))
                     if frame.loc[frame["seed"] == s, m].notna().any() else math.nan for s in seeds]
            # over every seed with a mean: one seed's +inf (an unchanged image's PSNR) makes it undefined
            # (NaN), rather than a std of the other seeds labelled "across seeds"
            defined = [x for x in means if not math.isnan(x)]
            std = float(np.std(defined, ddof=1)) if all(math.isfinite(x) for x in defined) else math.nan
            per_seed[m] = {"per_seed_mean": {str(int(s)): json_number(x) for s, x in zip(seeds, means)},
                           "std_across_seeds": json_number(std) if len(defined) > 1 else None}
        out["seeds"] = {"seeds": [int(s) for s in seeds], "metrics": per_seed}
        if best_of and best_of in frame:
            higher = metrics.get(best_of, True)
            best_rows = []
            for _, g in frame.groupby("sample_id"):
                scored = g[g[best_of].notna()]
                if len(scored):
                    best_rows.append(scored.loc[scored[best_of].idxmax() if higher else scored[best_of].idxmin()])
                else:
                    best_rows.append(g.iloc[0])
            best = pd.DataFrame(best_rows)
            out["best_of_n"] = {"label": f"best-of-{len(seeds)} by {best_of} (not comparable with mean-over-seeds numbers)",
                                "metrics": _metric_block(best, metrics, n_samples, 1)}
    return out


def _metric_block(frame: pd.DataFrame, metrics: dict[str, bool], n_samples: int, n_seeds: int) -> dict[str, Any]:
    """Per metric: mean and CI over samples (seeds averaged first), and coverage over the `n_samples` x
    `n_seeds` predictions (a best-of-N block has one prediction per sample)."""
    block = {}
    for m, higher in metrics.items():
        if m not in frame:
            continue
        per_sample = frame.groupby("sample_id")[m].apply(_seed_mean)
        ci = bootstrap_mean_ci(per_sample.to_numpy(dtype=float))
        entry = ci.to_dict()
        defined = int(pd.to_numeric(frame[m], errors="coerce").notna().sum())
        entry["coverage"] = min(1.0, defined / (n_samples * n_seeds)) if n_samples else 0.0
        entry["higher_is_better"] = higher
        n_inf = int(np.isinf(per_sample.to_numpy(dtype=float)).sum())
        if n_inf:
            entry["n_inf"] = n_inf
        block[m] = entry
    return block


def _seed_mean(values: pd.Series) -> float:
    x = values.to_numpy(dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def result_problems(summary: dict[str, Any], requested: Iterable[str] | None = None,
                    min_coverage: float | None = None) -> list[str]:
    """Why a finished evaluation or score does not answer what was asked (empty: it does): no sample,
    no sample scored, a metric the user asked for by name (`requested`) without any value, or a
    metric's coverage below `min_coverage` (the requested metrics, or every metric when none was
    named). The CLI exits non-zero (ExitCode.INCOMPLETE) on any of these. Metrics computed by default
    may be undefined everywhere for a legitimate reason (locality of an editor that changes nothing),
    so only named ones must have a value."""
    problems = []
    n = int(summary.get("n_samples") or 0)
    if n == 0:
        return ["the dataset has no samples to evaluate"]
    n_ok = int((summary.get("status_counts") or {}).get(Status.OK.value, 0))
    if n_ok == 0:
        problems.append(f"no sample succeeded (0 of {n})")
    metrics = summary.get("metrics") or {}
    requested = list(requested or [])
    for name in requested:
        block = metrics.get(name)
        if block is None or not block.get("n"):
            problems.append(f"metric {name!r} has no value for any sample")
    for name in requested or list(metrics):
        block = metrics.get(name)
        if block is None or not block.get("n"):
            continue
        if min_coverage is not None and float(block.get("coverage", 0.0)) < min_coverage:
            problems.append(f"metric {name!r} covers {float(block['coverage']):.1%} of samples, "
                            f"below --min-coverage {min_coverage:.1%}")
    return problems
