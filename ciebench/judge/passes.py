"""Several independent verdicts per sample (``--judge-passes N``) and the judge-noise interval.

A sample's score is the median of its valid pass scores (for an even count the mean of the middle
two, e.g. 3.5); categorical answers take the majority (ties: the smallest value, so it is
deterministic). A sample with no valid pass has no score.

The judge-noise interval asks how much the dataset mean would move if the judge were asked again:
each bootstrap replicate resamples, per sample, its valid pass scores with replacement, takes their
median, and averages over samples; the interval is the 2.5 / 97.5 percentiles of those means. It is
reported beside the sample-bootstrap CI (which asks a different question: other samples).
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ciebench.llm import RETRY_SEED_STRIDE

NOISE_REPLICATES = 2000
NOISE_SEED = 0


def pass_seed(base: int | None, pass_index: int) -> int | None:
    """Pass k asks with seed base + k (pass 0 keeps the config's seed, so a one-pass run is unchanged);
    without a base seed no seed is sent and the passes differ only by their cache slot. A retry inside a
    pass resamples with seed + n * RETRY_SEED_STRIDE (`ciebench.llm.client`), never another pass's seed,
    as long as there are fewer passes than the stride."""
    if not 0 <= pass_index < RETRY_SEED_STRIDE:
        raise ValueError(f"pass index {pass_index} outside 0..{RETRY_SEED_STRIDE - 1}: its seed could equal "
                         "a retry seed of another pass")
    return None if base is None else base + pass_index


def median_score(values: Sequence[float]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(statistics.median(vals)) if vals else None


def majority(values: Sequence[Any]) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    counts = Counter(vals)
    best = max(counts.values())
    return min(v for v, c in counts.items() if c == best)


@dataclass(frozen=True)
class NoiseInterval:
    low: float
    high: float
    passes: int
    replicates: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "passes": self.passes, "replicates": self.replicates}


def judge_noise_interval(pass_scores: Sequence[Sequence[float | None]], samples: Sequence[str] | None = None,
                         replicates: int = NOISE_REPLICATES, seed: int = NOISE_SEED,
                         level: float = 0.95) -> NoiseInterval | None:
    """`pass_scores[i]` holds prediction i's pass scores (None or NaN for a failed pass); `samples[i]`
    names its sample (default: each prediction its own). Each replicate's mean is the reported one:
    per prediction the median of its redrawn passes, per sample the mean over its predictions (seeds),
    then the mean over samples. Predictions without a valid pass are left out (they are not in the
    mean either). None without any valid prediction."""
    keys = list(samples) if samples is not None else list(range(len(pass_scores)))
    valid = [([float(v) for v in row if v is not None and not math.isnan(float(v))], key)
             for row, key in zip(pass_scores, keys)]
    valid = [(r, key) for r, key in valid if r]
    if not valid:
        return None
    rows = [r for r, _ in valid]
    # (prediction x sample) weights: a sample's predictions share its weight, every sample weighs 1/S
    column = {key: j for j, key in enumerate(dict.fromkeys(key for _, key in valid))}
    weights = np.zeros((len(rows), len(column)))
    for i, (_, key) in enumerate(valid):
        weights[i, column[key]] = 1.0
    weights /= weights.sum(axis=0, keepdims=True) * len(column)
    width = max(len(r) for r in rows)
    n = len(rows)
    values = np.full((n, width), np.nan)
    counts = np.array([len(r) for r in rows])
    for i, r in enumerate(rows):
        values[i, :len(r)] = r
    rng = np.random.default_rng(seed)
    means = np.empty(replicates)
    chunk = max(1, 2_000_000 // (n * width))
    col = np.arange(width)[None, None, :]
    for start in range(0, replicates, chunk):
        b = min(chunk, replicates - start)
        # per replicate and sample: `count` draws among that sample's valid passes
        idx = np.floor(rng.random((b, n, width)) * counts[None, :, None]).astype(np.int64)
        drawn = np.take_along_axis(np.broadcast_to(values, (b, n, width)), idx, axis=2)
        drawn = np.where(col < counts[None, :, None], drawn, np.nan)
        means[start:start + b] = np.nanmedian(drawn, axis=2) @ weights.sum(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return NoiseInterval(float(low), float(high), width, replicates)


def within_noise(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two runs' order is within judge noise when their noise intervals overlap."""
    if not a or not b:
        return False
    return float(a["low"]) <= float(b["high"]) and float(b["low"]) <= float(a["high"])
