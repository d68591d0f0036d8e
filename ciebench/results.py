"""The per-sample results table and the summary: the one format scorer, runner and leaderboard share.

`samples.csv` / `samples.jsonl`: one row per (sample, seed) with the columns in `BASE_COLUMNS`, one
column per metric value (NaN = not computed; +inf allowed for PSNR of identical images), and
`<metric>_status` / `<metric>_error` columns for judged metrics. `summary.json`: per metric the
mean, bootstrap 95% CI, n and coverage, per edit type, across-seed spread, and a separately
labelled best-of-N block.
"""
from __future__ import annotations

import io
import json
import math
import urllib.parse
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .io import atomic_write_text
from .stats import bootstrap_mean_ci, json_number

BASE_COLUMNS = ["sample_id", "seed", "edit_type", "status", "error", "prediction", "prediction_sha256", "edit_seconds"]
OK = "ok"
# Row statuses: ok | missing (no prediction file) | corrupt (unreadable prediction) |
# edit_error (the editor failed) | invalid (NaN / wrong-sized image from the editor)


def file_stem(sample_id: str, seed: int) -> str:
    """The run directory's stem for a (sample, seed) image, trace and record: file-name-safe and
    collision-free, since ids may contain '/' (Reason-Edit) or other characters."""
    return f"{urllib.parse.quote(sample_id, safe='-_.')}__s{seed}"


def write_samples(run_dir: Path, rows: list[dict[str, Any]], metric_columns: Iterable[str]) -> None:
    run_dir = Path(run_dir)
    columns = list(BASE_COLUMNS) + [c for c in metric_columns if c not in BASE_COLUMNS]
    extra = sorted({k for r in rows for k in r} - set(columns))
    frame = pd.DataFrame([{c: r.get(c) for c in columns + extra} for r in rows], columns=columns + extra)
    frame = frame.sort_values(["sample_id", "seed"], kind="stable", key=_natural_key)
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.10g")
    atomic_write_text(run_dir / "samples.csv", buf.getvalue())
    lines = [json.dumps({k: _jsonable(v) for k, v in rec.items()}, sort_keys=False) for rec in frame.to_dict("records")]
    atomic_write_text(run_dir / "samples.jsonl", "\n".join(lines) + ("\n" if lines else ""))


def read_samples(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(Path(run_dir) / "samples.csv", dtype={"sample_id": str, "edit_type": str, "status": str})
    return frame


def _natural_key(col: pd.Series) -> pd.Series:
    if col.name != "sample_id":
        return col
    return col.map(lambda s: (0, int(s), "") if str(s).isdigit() else (1, 0, str(s)))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return json_number(v)
    if isinstance(v, np.integer):
        return int(v)
    if v is pd.NA:
        return None
    return v


def summarize(frame: pd.DataFrame, metrics: dict[str, bool], best_of: str | None = None) -> dict[str, Any]:
    """Summary of a samples table. `metrics` maps metric column -> higher_is_better.

    Per sample, scores are first averaged over seeds; the mean and CI are over samples. Coverage is
    the share of samples with a defined value. With several seeds, `seeds` gives each seed's mean and
    their spread (std); `best_of_n` (labelled as such) keeps, per sample, the seed best on `best_of`."""
    n_samples = int(frame["sample_id"].nunique()) if len(frame) else 0
    out: dict[str, Any] = {"n_samples": n_samples, "n_rows": int(len(frame)),
                           "status_counts": {str(k): int(v) for k, v in frame["status"].value_counts().items()},
                           "metrics": _metric_block(frame, metrics, n_samples)}
    out["by_edit_type"] = {
        str(et): {"n_samples": int(g["sample_id"].nunique()), "metrics": _metric_block(g, metrics, int(g["sample_id"].nunique()))}
        for et, g in frame.groupby("edit_type", dropna=False)
    }
    seeds = sorted(frame["seed"].dropna().unique().tolist()) if len(frame) else []
    if len(seeds) > 1:
        per_seed = {}
        for m in metrics:
            if m not in frame:
                continue
            means = [float(np.nanmean(frame.loc[frame["seed"] == s, m].to_numpy(dtype=float)))
                     if frame.loc[frame["seed"] == s, m].notna().any() else math.nan for s in seeds]
            finite = [x for x in means if math.isfinite(x)]
            per_seed[m] = {"per_seed_mean": {str(int(s)): json_number(x) for s, x in zip(seeds, means)},
                           "std_across_seeds": json_number(float(np.std(finite, ddof=1))) if len(finite) > 1 else None}
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
                                "metrics": _metric_block(best, metrics, n_samples)}
    return out


def _metric_block(frame: pd.DataFrame, metrics: dict[str, bool], n_samples: int) -> dict[str, Any]:
    block = {}
    for m, higher in metrics.items():
        if m not in frame:
            continue
        per_sample = frame.groupby("sample_id")[m].apply(_seed_mean)
        ci = bootstrap_mean_ci(per_sample.to_numpy(dtype=float))
        entry = ci.to_dict()
        entry["coverage"] = (ci.n / n_samples) if n_samples else 0.0
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
