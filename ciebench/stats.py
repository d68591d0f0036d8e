"""Statistics shared by summaries and the leaderboard: means with bootstrap confidence intervals."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same scores always give the same interval
_CHUNK = 500


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return {"mean": _num(self.mean), "ci95": [_num(self.low), _num(self.high)], "n": self.n}


def bootstrap_mean_ci(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      level: float = 0.95) -> MeanCI:
    """Percentile bootstrap CI of the mean. NaN values are dropped (they are undefined scores);
    +inf (PSNR of identical images) is kept, so a mean containing it is inf, honestly."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean()) if np.isfinite(x).all() else float(np.inf if (x == np.inf).any() else -np.inf)
    if n == 1 or not np.isfinite(x).all():
        return MeanCI(mean, mean, mean, n)
    rng = np.random.default_rng(seed)
    # chunked so memory stays ~CHUNK*n indices whatever the dataset size (same draws as one block)
    means = np.concatenate([x[rng.integers(0, n, size=(min(_CHUNK, resamples - i), n))].mean(axis=1)
                            for i in range(0, resamples, _CHUNK)])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return MeanCI(mean, float(low), float(high), n)


def _num(v: float):
    """JSON has no inf/nan: write them as the strings "inf", "-inf", "nan"."""
    if v is None:
        return None
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def json_number(v):
    """The one JSON number codec, writing: a float, or "nan" / "inf" / "-inf" (JSON has no such
    literals); None stays None. Every file ciebench writes (records, samples.jsonl, summary.json, the
    gallery's page data) goes through it, most via `io.json_safe`."""
    return _num(float(v)) if v is not None else None


def from_json_number(v) -> float:
    """Reading `json_number`'s forms back, and the older ones: null (NaN), "NaN", "Infinity"."""
    if v is None:
        return math.nan
    return float(v)  # float("inf") / float("nan") / float("Infinity") parse the string forms
