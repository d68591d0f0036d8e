"""Paired significance tests between runs on the samples they share.

Method (documented in docs/leaderboard.md):

- Per sample, a run's score is its mean over seeds (exactly as `ciebench.results.summarize` does).
  Two runs are compared on the samples where both have a defined (non-NaN) score.
- Test: two-sided paired **sign-flip permutation test** on the per-sample differences d = a - b.
  Under H0 (no difference) each d is equally likely to have either sign; the statistic is the mean
  of d. With n <= 16 shared samples all 2^n sign patterns are enumerated (exact p-value); above
  that, 10,000 random sign patterns from a generator with the fixed seed 0 are drawn and
  p = (1 + #{|T*| >= |T|}) / (1 + 10,000).
- Infinite scores (PSNR of pixel-identical outputs): equal infinities give d = 0; if any d is
  still infinite the same sign-flip test runs on the signed ranks of d (the Wilcoxon signed-rank
  statistic; zero differences dropped, ties get average ranks), which is defined for infinities.
  The `statistic` column says which was used.
- Multiple comparisons: within one table and one metric, the p-values of all pairs are adjusted
  with Holm's step-down method; `significant` means Holm-adjusted p < alpha (default 0.05).
- The effect size is the mean paired difference with a 95% percentile-bootstrap CI
  (`ciebench.stats.bootstrap_mean_ci`, fixed seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from ciebench.stats import bootstrap_mean_ci

ALPHA = 0.05
PERMUTATIONS = 10_000
PERMUTATION_SEED = 0
EXACT_MAX_N = 16
_CHUNK = 2_000


@dataclass(frozen=True)
class PairedTest:
    n: int                 # shared samples with both scores defined
    statistic: str         # "mean" (of differences) or "signed_rank" (when a difference is infinite)
    observed: float        # the observed statistic
    p_value: float         # two-sided; NaN when n < 2
    method: str            # "exact" (all 2^n sign patterns) or "monte-carlo"
    n_permutations: int
    mean_a: float
    mean_b: float
    mean_diff: float       # mean of a - b over the shared samples
    diff_ci_low: float
    diff_ci_high: float


def paired_differences(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, d) restricted to pairs where both are defined; d = a - b with equal infinities -> 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    with np.errstate(invalid="ignore"):
        d = np.where(a == b, 0.0, a - b)
    return a, b, d


def sign_flip_test(x: np.ndarray, *, permutations: int = PERMUTATIONS, seed: int = PERMUTATION_SEED,
                   exact_max_n: int = EXACT_MAX_N) -> tuple[float, str, int]:
    """Two-sided sign-flip permutation p-value of mean(x) = 0 for finite x. Returns (p, method, count)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    observed = abs(float(x.mean()))
    tol = 1e-12 * max(1.0, float(np.abs(x).max()))
    if observed <= tol:
        return 1.0, "exact" if n <= exact_max_n else "monte-carlo", 0
    if n <= exact_max_n:
        total = 1 << n
        hits = 0
        for start in range(0, total, _CHUNK * 16):
            codes = np.arange(start, min(total, start + _CHUNK * 16), dtype=np.int64)
            signs = ((codes[:, None] >> np.arange(n)) & 1) * 2 - 1
            hits += int((np.abs(signs @ x) / n >= observed - tol).sum())
        return hits / total, "exact", total
    rng = np.random.default_rng(seed)
    hits = 0
    done = 0
    while done < permutations:
        m = min(_CHUNK, permutations - done)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        hits += int((np.abs(signs @ x) / n >= observed - tol).sum())
        done += m
    return (1 + hits) / (1 + permutations), "monte-carlo", permutations


def paired_test(a, b, *, permutations: int = PERMUTATIONS, seed: int = PERMUTATION_SEED) -> PairedTest:
    """Paired sign-flip permutation test of a against b (aligned arrays; NaN pairs dropped)."""
    a, b, d = paired_differences(a, b)
    n = int(d.size)
    mean_a = _mean(a)
    mean_b = _mean(b)
    if n == 0:
        return PairedTest(0, "mean", math.nan, math.nan, "none", 0, math.nan, math.nan, math.nan, math.nan, math.nan)
    ci = bootstrap_mean_ci(d)
    if np.isfinite(d).all():
        x, statistic = d, "mean"
    else:
        nz = d[d != 0]
        ranks = pd.Series(np.abs(nz)).rank(method="average").to_numpy()
        x, statistic = np.sign(nz) * ranks, "signed_rank"
    observed = float(x.mean()) if x.size else 0.0
    if n < 2:
        p, method, count = math.nan, "none", 0
    elif x.size == 0:
        p, method, count = 1.0, "exact", 0
    else:
        p, method, count = sign_flip_test(x, permutations=permutations, seed=seed)
    return PairedTest(n, statistic, observed, p, method, count, mean_a, mean_b, ci.mean, ci.low, ci.high)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment; NaN p-values stay NaN and do not count as hypotheses."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if not m:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


def compare_runs(runs, metrics: dict[str, bool], *, table: str = "", alpha: float = ALPHA,
                 permutations: int = PERMUTATIONS, seed: int = PERMUTATION_SEED) -> pd.DataFrame:
    """All pairs of `runs` (`Run`s of one table, in leaderboard order) on each metric: one row per
    unordered pair and metric, with raw and Holm-adjusted p-values (Holm within each metric)."""
    rows = []
    for metric, higher in metrics.items():
        per_run = {run.label: run.per_sample(metric) for run in runs if metric in run.samples.columns}
        block = []
        for ra, rb in combinations([r for r in runs if r.label in per_run], 2):
            sa, sb = per_run[ra.label], per_run[rb.label]
            shared = sa.index.intersection(sb.index)
            test = paired_test(sa.loc[shared].to_numpy(dtype=float), sb.loc[shared].to_numpy(dtype=float),
                               permutations=permutations, seed=seed)
            better = ""
            if test.n and test.observed != 0 and not math.isnan(test.observed):
                a_higher = test.observed > 0
                better = ra.label if a_higher == higher else rb.label
            block.append({"table": table, "metric": metric, "higher_is_better": higher,
                          "run_a": ra.label, "run_b": rb.label, "n_shared": test.n,
                          "mean_a": test.mean_a, "mean_b": test.mean_b, "mean_diff": test.mean_diff,
                          "diff_ci_low": test.diff_ci_low, "diff_ci_high": test.diff_ci_high,
                          "statistic": test.statistic, "method": test.method,
                          "n_permutations": test.n_permutations, "p_value": test.p_value, "better": better})
        adjusted = holm([r["p_value"] for r in block])
        for r, p_adj in zip(block, adjusted):
            r["p_holm"] = p_adj
            r["significant"] = bool(p_adj < alpha) if not math.isnan(p_adj) else False
            if not r["significant"]:
                r["better"] = ""
        rows.extend(block)
    columns = ["table", "metric", "higher_is_better", "run_a", "run_b", "n_shared", "mean_a", "mean_b",
               "mean_diff", "diff_ci_low", "diff_ci_high", "statistic", "method", "n_permutations",
               "p_value", "p_holm", "significant", "better"]
    return pd.DataFrame(rows, columns=columns)


def significance_matrix(pairs: pd.DataFrame, labels: list[str] | None = None) -> pd.DataFrame:
    """Pairwise results as matrices: one row per (table, metric, run), one column per run, each cell
    the Holm-adjusted p-value of the row run against the column run (NaN on the diagonal and for
    pairs without shared samples). `vs_best`-style direction is in the pairs table's `better`."""
    if labels is None:
        labels = list(dict.fromkeys(list(pairs["run_a"]) + list(pairs["run_b"])))
    rows = []
    for (table, metric), g in pairs.groupby(["table", "metric"], sort=False):
        in_table = [l for l in labels if l in set(g["run_a"]) | set(g["run_b"])]
        lookup = {}
        for r in g.itertuples():
            lookup[(r.run_a, r.run_b)] = lookup[(r.run_b, r.run_a)] = r.p_holm
        for row_label in in_table:
            entry = {"table": table, "metric": metric, "run": row_label}
            for col in labels:
                entry[col] = lookup.get((row_label, col), math.nan)
            rows.append(entry)
    return pd.DataFrame(rows, columns=["table", "metric", "run"] + labels)


def _mean(x: np.ndarray) -> float:
    if not x.size:
        return math.nan
    if np.isfinite(x).all():
        return float(x.mean())
    return float(np.inf if (x == np.inf).any() else -np.inf) if not ((x == np.inf).any() and (x == -np.inf).any()) else math.nan


__all__ = ["PairedTest", "paired_test", "paired_differences", "sign_flip_test", "holm", "compare_runs",
           "significance_matrix", "ALPHA", "PERMUTATIONS", "PERMUTATION_SEED", "EXACT_MAX_N"]
