"""The metric catalogue: the one place that says what every metric ciebench can report is.

Each entry (`MetricInfo`) is one column of a samples table or of a benchmark's headline: its name,
the metric a user asks for to get it (`--metrics locality` gives three columns), its direction, its
title for tables and plots, its family, its role in the leaderboard and how many significant digits
tables show. The scorer (which names exist, which columns they produce, in which order), `ciebench
metrics`, the leaderboard (tables, plots, significance direction, primary metric) and the gallery all
read it; nothing else defines a direction, a title or an order.

Adding a metric means one entry here (or `register(...)` from a plugin) plus its implementation. The
entries are listed in the order the scorer writes their columns; `display` orders them in tables.

This module imports nothing heavy: the CLI and the leaderboard read it without loading torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

# Families: what kind of computation produces the value.
PIXEL = "region pixel"  # closed-form pixel statistics of the unchanged region (PSNR, MSE, SSIM)
PERCEPTUAL = "perceptual"  # a learned perceptual distance of the unchanged region (LPIPS)
CLIP = "clip"  # CLIP similarity of the edited region to its texts
LOCALITY = "locality"  # which pixels changed, against the mask
JUDGE = "judge"  # a judge model's verdict per sample (IDCS)
BENCHMARK = "benchmark headline"  # a judge-scored benchmark's official headline number
REGION_FAMILIES = frozenset({PIXEL, PERCEPTUAL, CLIP, LOCALITY})  # computed by metrics.region.RegionScorer

# Roles in the leaderboard's trade-off plot: preservation (x axis) against instruction success (y).
PRESERVATION = "preservation"
SUCCESS = "success"


@dataclass(frozen=True)
class MetricInfo:
    """One metric column. `metric` is the name `--metrics` takes (several columns may share one);
    `display` orders columns in tables (lower first); `primary` ranks the column as the leaderboard's
    default sort metric (lower first; None: never chosen unless asked for with --primary); `digits`
    is how many significant digits tables show."""

    name: str
    title: str
    higher_is_better: bool
    family: str
    description: str
    metric: str = ""  # default: `name`
    display: int = 1000
    primary: int | None = None
    role: str = ""  # PRESERVATION, SUCCESS or ""
    digits: int = 4
    needs: str = ""  # what scoring it needs beyond the dataset and predictions, e.g. "--judge"

    def __post_init__(self) -> None:
        if not self.metric:
            object.__setattr__(self, "metric", self.name)

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def region(self) -> bool:
        """Computed by the region scorer (`metrics.region.RegionScorer`)."""
        return self.family in REGION_FAMILIES


CATALOGUE: dict[str, MetricInfo] = {}


class CatalogueError(ValueError):
    """A metric registered twice with different facts."""


def register(info: MetricInfo) -> MetricInfo:
    """Add `info` to the catalogue (a plugin's metric or benchmark headline). Registering the same
    facts again is a no-op; different facts under a known name are an error, so two definitions can
    never disagree about a direction."""
    known = CATALOGUE.get(info.name)
    if known is not None and known != info:
        raise CatalogueError(f"metric {info.name!r} is already in the catalogue with other facts: {known} != {info}")
    CATALOGUE[info.name] = info
    return info


def get(name: str) -> MetricInfo | None:
    return CATALOGUE.get(name)


def higher_is_better(name: str, default: bool = True) -> bool:
    """The direction of a catalogued column; `default` for a column the catalogue does not know."""
    info = CATALOGUE.get(name)
    return info.higher_is_better if info is not None else default


def title(name: str) -> str:
    info = CATALOGUE.get(name)
    return info.title if info is not None else name


def display_order(names: Iterable[str]) -> list[str]:
    """`names` (deduplicated) in table order: catalogued columns by `display`, then the others A-Z."""
    names = list(dict.fromkeys(names))
    known = sorted((n for n in names if n in CATALOGUE), key=lambda n: CATALOGUE[n].display)
    return known + sorted(n for n in names if n not in CATALOGUE)


def primary_order() -> list[str]:
    """Columns the leaderboard may sort by without being asked, first choice first."""
    ranked = [i for i in CATALOGUE.values() if i.primary is not None]
    return [i.name for i in sorted(ranked, key=lambda i: i.primary)]


def with_role(role: str) -> list[str]:
    """Columns of one trade-off role, in display order."""
    return display_order(i.name for i in CATALOGUE.values() if i.role == role)


def columns(families: Iterable[str] | str) -> list[str]:
    """Columns of the given families, in the scorer's column order."""
    families = {families} if isinstance(families, str) else set(families)
    return [i.name for i in CATALOGUE.values() if i.family in families]


def metric_columns(families: Iterable[str] | str) -> dict[str, tuple[str, ...]]:
    """Metric names `--metrics` takes -> the columns each produces, for the given families."""
    out: dict[str, tuple[str, ...]] = {}
    for name in columns(families):
        info = CATALOGUE[name]
        out[info.metric] = out.get(info.metric, ()) + (name,)
    return out


def directions(names: Sequence[str]) -> dict[str, bool]:
    """column -> higher_is_better for catalogued columns (a KeyError names an uncatalogued one)."""
    return {n: CATALOGUE[n].higher_is_better for n in names}


# ---- the entries, in the scorer's column order ----------------------------------------------------
_P = "background (outside the mask) of the prediction against the source"
for _info in (
    MetricInfo("psnr", "PSNR (dB)", True, PIXEL, f"peak signal-to-noise ratio of the {_P}; +inf when unchanged",
               display=20, primary=3, role=PRESERVATION),
    MetricInfo("ssim", "SSIM", True, PIXEL, f"structural similarity of the {_P}", display=30, primary=4,
               role=PRESERVATION),
    MetricInfo("lpips", "LPIPS", False, PERCEPTUAL, f"learned perceptual distance (LPIPS, SqueezeNet) of the {_P}",
               display=40, primary=5, role=PRESERVATION),
    MetricInfo("mse", "MSE", False, PIXEL, f"mean squared error of the {_P}", display=50, primary=6, role=PRESERVATION),
    MetricInfo("clip", "CLIP score", True, CLIP, "CLIP score (100 cos) of the mask's box against the sample's CLIP texts",
               display=10, primary=1, role=SUCCESS),
    MetricInfo("locality_precision", "Locality precision", True, LOCALITY,
               "share of the changed pixels that lie inside the mask", metric="locality", display=61),
    MetricInfo("locality_recall", "Locality recall", True, LOCALITY,
               "share of the mask's pixels that changed", metric="locality", display=62),
    MetricInfo("locality_f1", "Locality F1", True, LOCALITY,
               "F1 of changed pixels against the mask", metric="locality", display=60, primary=2),
    MetricInfo("idcs", "IDCS", True, JUDGE, "instruction-driven change score: a judge's 1-5 verdict per sample",
               display=0, primary=0, role=SUCCESS, needs="--judge"),
    # Judge-scored benchmarks' official headlines (ciebench.benchmarks.*: `Benchmark.headline`).
    MetricInfo("Overall Accuracy", "Overall Accuracy", True, BENCHMARK,
               "share of cases judged complete, i.e. passing every dimension (RISEBench, RISEBench++, UniREditBench)"),
    MetricInfo("Overall Score", "Overall Score", True, BENCHMARK, "KRIS-Bench: mean of the dimensions' percentage scores over all cases"),
    MetricInfo("GEdit-Bench-EN avg_overall", "GEdit-Bench-EN avg_overall", True, BENCHMARK,
               "GEdit-Bench English full set: mean over the edit groups of the per-case overall score"),
    MetricInfo("Overall (ciebench: mean of the 9 type scores)", "ImgEdit overall", True, BENCHMARK,
               "ImgEdit basic: mean of the nine edit types' mean judge scores"),
    MetricInfo("UGE average", "ImgEdit UGE average", True, BENCHMARK, "ImgEdit UGE (understanding, grounding, editing): mean judge score over the cases"),
    MetricInfo("basic_overall_en", "WiseEdit basic overall (en)", True, BENCHMARK,
               "WiseEdit, English: mean of the basic tasks' overall scores"),
):
    register(_info)
del _info, _P

__all__ = ["MetricInfo", "CATALOGUE", "CatalogueError", "register", "get", "higher_is_better", "title",
           "display_order", "primary_order", "with_role", "columns", "metric_columns", "directions",
           "PIXEL", "PERCEPTUAL", "CLIP", "LOCALITY", "JUDGE", "BENCHMARK", "REGION_FAMILIES", "PRESERVATION", "SUCCESS"]
