"""Agreement between two judges, or between a judge and human raters (`ciebench judge agreement`).

Inputs are per-prediction scores keyed by (sample_id, seed): a scored run folder (its ``samples.csv``,
column ``idcs`` by default) or a human-ratings CSV with columns ``sample_id, seed, rater, score``
(several raters per prediction: their median). Only predictions scored on both sides are compared.

- Spearman's rho over the shared predictions (ties by average rank, as `scipy.stats.spearmanr`);
- Cohen's kappa with quadratic weights over the integer categories lo..hi (scores rounded half up,
  so a 3.5 median of passes counts as 4), as `sklearn.metrics.cohen_kappa_score(weights="quadratic")`;
- 95% percentile bootstrap CIs for both, resampling predictions with replacement (2000 replicates,
  fixed seed);
- with several pairs (one system each, scored by both judges): Kendall's tau between the systems'
  mean scores under judge A and under judge B (does the ranking survive a change of judge?).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sstats

from ciebench.errors import DataError
from ciebench.results import RunFolderError, require_run_folder

REPLICATES = 2000
SEED = 0


@dataclass
class Scores:
    name: str
    values: pd.Series  # index (sample_id, seed) -> score


def load_scores(path: str | Path, metric: str = "idcs") -> Scores:
    """A run folder (``samples.csv``) or a human-ratings CSV (``sample_id, seed, rater, score``)."""
    path = Path(path)
    if path.is_dir():
        table = require_run_folder(path) / "samples.csv"
        frame = pd.read_csv(table, dtype={"sample_id": str}, keep_default_na=False, na_values=[""])
        if metric not in frame.columns:
            raise DataError(f"{table} has no {metric!r} column (was it scored with a judge?)")
        frame = frame[["sample_id", "seed", metric]].rename(columns={metric: "score"})
        frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
        frame = frame.dropna(subset=["score"])
        name = path.name
    elif path.is_file():
        frame = _human_ratings(path)
        name = path.stem
    else:
        raise RunFolderError(f"{path}: no such run folder or ratings file")
    frame["seed"] = frame["seed"].astype(int)
    series = frame.set_index(["sample_id", "seed"])["score"].astype(float)
    return Scores(name, series)


def _human_ratings(path: Path) -> pd.DataFrame:
    rows, problems = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"sample_id", "seed", "rater", "score"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DataError(f"{path}: a ratings CSV needs the columns {sorted(need)}, found {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            try:
                score = float(row["score"])
                seed = int(row["seed"] or 0)
                if not math.isfinite(score):
                    raise ValueError("not finite")
            except (TypeError, ValueError):
                problems.append(f"{path}:{i}: sample {row.get('sample_id')!r}: score {row.get('score')!r} "
                                f"or seed {row.get('seed')!r} is not a number")
                continue
            rows.append({"sample_id": str(row["sample_id"]), "seed": seed, "rater": row["rater"], "score": score})
    if problems:
        raise DataError("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    if not rows:
        raise DataError(f"{path}: no ratings")
    frame = pd.DataFrame(rows)
    return frame.groupby(["sample_id", "seed"], as_index=False)["score"].median()


def round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=float) + 0.5).astype(int)


def quadratic_kappa(a: Sequence[float], b: Sequence[float], lo: int, hi: int) -> float:
    """Cohen's kappa with quadratic weights over the categories lo..hi (values rounded half up; callers
    refuse values outside the range, `pair_agreement`). NaN when undefined (no disagreement possible)."""
    x = np.clip(round_half_up(a), lo, hi) - lo
    y = np.clip(round_half_up(b), lo, hi) - lo
    k = hi - lo + 1
    observed = np.zeros((k, k))
    np.add.at(observed, (x, y), 1.0)
    n = observed.sum()
    if n == 0:
        return math.nan
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    idx = np.arange(k)
    weights = (idx[:, None] - idx[None, :]) ** 2 / float((k - 1) ** 2 or 1)
    denom = (weights * expected).sum()
    if denom == 0:
        return math.nan
    return float(1.0 - (weights * observed).sum() / denom)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) < 2:
        return math.nan
    rho = sstats.spearmanr(a, b).statistic
    return float(rho) if rho is not None and not np.isnan(rho) else math.nan


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of two (R, n) arrays (NaN where a row is constant)."""
    rx = sstats.rankdata(x, axis=1)
    ry = sstats.rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


def kappa_rows(x: np.ndarray, y: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """`quadratic_kappa` of each row pair of two (R, n) arrays."""
    k = hi - lo + 1
    r, n = x.shape
    cx = np.clip(round_half_up(x), lo, hi) - lo
    cy = np.clip(round_half_up(y), lo, hi) - lo
    observed = np.zeros((r, k, k))
    np.add.at(observed, (np.repeat(np.arange(r), n), cx.ravel(), cy.ravel()), 1.0)
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / n
    idx = np.arange(k)
    weights = (idx[:, None] - idx[None, :]) ** 2 / float((k - 1) ** 2 or 1)
    num = (weights * observed).sum(axis=(1, 2))
    den = (weights * expected).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1.0 - num / np.where(den > 0, den, 1.0), np.nan)


def _bootstrap(rows_fn, a: np.ndarray, b: np.ndarray, replicates: int, seed: int) -> tuple[float, float]:
    """Percentile 95% CI of a statistic over predictions resampled with replacement (vectorised)."""
    if len(a) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (replicates, len(a)))
    vals = rows_fn(a[idx], b[idx])
    vals = vals[~np.isnan(vals)]
    if not len(vals):
        return math.nan, math.nan
    low, high = np.quantile(vals, [0.025, 0.975])
    return float(low), float(high)


@dataclass
class PairAgreement:
    a: str
    b: str
    n: int
    spearman: float
    spearman_ci: tuple[float, float]
    kappa: float
    kappa_ci: tuple[float, float]
    mean_a: float
    mean_b: float
    scores_a: np.ndarray
    scores_b: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "n": self.n, "spearman": self.spearman, "spearman_ci95": list(self.spearman_ci),
                "kappa_quadratic": self.kappa, "kappa_ci95": list(self.kappa_ci), "mean_a": self.mean_a,
                "mean_b": self.mean_b}


def pair_agreement(a: Scores, b: Scores, lo: int = 1, hi: int = 5, replicates: int = REPLICATES,
                   seed: int = SEED) -> PairAgreement:
    shared = a.values.index.intersection(b.values.index)
    if len(shared) == 0:
        raise DataError(f"{a.name} and {b.name} share no scored (sample_id, seed): nothing to compare")
    shared = shared.sort_values()
    for side in (a, b):  # kappa would clip them into the scale and report a higher agreement than there is
        values = side.values.loc[shared]
        off = values[(values < lo) | (values > hi)]
        if len(off):
            listed = ", ".join(f"sample {sid} seed {seed}: {v:g}" for (sid, seed), v in off.head(5).items())
            raise DataError(f"{side.name}: {len(off)} score(s) outside the scale {lo}..{hi} ({listed}"
                            f"{', ...' if len(off) > 5 else ''})",
                            hint="pass the scale both sides use with --min-score / --max-score, or map the "
                                 "ratings onto the judge's scale first")
    x = a.values.loc[shared].to_numpy(dtype=float)
    y = b.values.loc[shared].to_numpy(dtype=float)
    return PairAgreement(
        a.name, b.name, len(shared), spearman(x, y), _bootstrap(spearman_rows, x, y, replicates, seed),
        quadratic_kappa(x, y, lo, hi), _bootstrap(lambda p, q: kappa_rows(p, q, lo, hi), x, y, replicates, seed),
        float(x.mean()), float(y.mean()), x, y)


def ranking_tau(pairs: Sequence[PairAgreement]) -> float:
    """Kendall's tau (tau-b) between the systems' means under judge A and under judge B."""
    if len(pairs) < 2:
        return math.nan
    tau = sstats.kendalltau([p.mean_a for p in pairs], [p.mean_b for p in pairs]).statistic
    return float(tau) if tau is not None and not np.isnan(tau) else math.nan


def scatter_plot(pairs: Sequence[PairAgreement], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    rng = np.random.default_rng(0)
    for p in pairs:  # small jitter: integer scores would hide each other
        ax.scatter(p.scores_a + rng.uniform(-0.12, 0.12, p.n), p.scores_b + rng.uniform(-0.12, 0.12, p.n),
                   s=12, alpha=0.6, label=f"{p.a} vs {p.b} (rho {p.spearman:.2f}, kappa {p.kappa:.2f})")
    ax.set_xlabel("judge A")
    ax.set_ylabel("judge B")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_aspect("equal")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
