"""Leaderboard plots (matplotlib, Agg canvas, PNG and SVG): per metric bars with 95% CI whiskers,
per edit type grouped bars, and preservation against instruction success with one point per run.

Colours: the Okabe-Ito palette (colour-blind safe), assigned to run labels in sorted order, so one
editor has the same colour in every plot of one leaderboard; beyond 8 runs hatching tells them apart.
No pyplot: figures are drawn on their own Agg canvas, so importing this never changes the backend
of the caller's matplotlib session."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from ciebench.metrics import catalogue

from ciebench.io import atomic_write_bytes

from .runs import metric_title, slugify

# Okabe & Ito (2008); yellow last: it has the least contrast on white.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
HATCHES = ["", "//", "..", "xx", "\\\\", "oo", "++", "--"]
FORMATS = ("png", "svg")


def editor_styles(labels: Iterable[str]) -> dict[str, dict[str, str]]:
    """label -> {"color", "hatch"}; deterministic in the set of labels."""
    styles = {}
    for i, label in enumerate(sorted(set(labels))):
        styles[label] = {"color": OKABE_ITO[i % len(OKABE_ITO)], "hatch": HATCHES[(i // len(OKABE_ITO)) % len(HATCHES)]}
    return styles


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, stem: Path, formats=FORMATS) -> list[Path]:
    import matplotlib

    out = []
    for fmt in formats:
        buf = io.BytesIO()
        with matplotlib.rc_context({"svg.hashsalt": "ciebench", "svg.fonttype": "none"}):
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}
            fig.savefig(buf, format=fmt, dpi=150 if fmt == "png" else 100, metadata=metadata, facecolor="white")
        path = stem.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out


def _errors(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """2xN whisker lengths for errorbar; 0 where the mean or a bound is not finite."""
    with np.errstate(invalid="ignore"):
        return _errors_raw(mean, low, high)


def _errors_raw(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    lo = np.where(np.isfinite(low) & np.isfinite(mean), mean - low, 0.0)
    hi = np.where(np.isfinite(high) & np.isfinite(mean), high - mean, 0.0)
    return np.vstack([np.clip(lo, 0, None), np.clip(hi, 0, None)])


def _direction(higher: bool) -> str:
    return "higher is better" if higher else "lower is better"


def plot_metric_bars(lb: pd.DataFrame, metric: str, higher: bool, stem: str | Path, styles: dict,
                     subtitle: str = "", formats=FORMATS) -> list[Path]:
    """Horizontal bars, one per run (leaderboard order, best on top), with 95% CI whiskers.
    Infinite means (PSNR of pixel-identical outputs) are marked with ∞ instead of a bar."""
    labels = list(lb["run"])
    mean = lb[metric].to_numpy(dtype=float)
    low, high = lb[f"{metric}_ci_low"].to_numpy(dtype=float), lb[f"{metric}_ci_high"].to_numpy(dtype=float)
    fig = _figure(7.0, 1.4 + 0.45 * len(labels))
    ax = fig.add_subplot()
    y = np.arange(len(labels))[::-1]
    finite = np.isfinite(mean)
    for yi, label, m, f in zip(y, labels, mean, finite):
        if f:
            ax.barh(yi, m, color=styles[label]["color"], hatch=styles[label]["hatch"], edgecolor="#333333",
                    linewidth=0.6, height=0.7)
    err = _errors(mean, low, high)
    ax.errorbar(mean[finite], y[finite], xerr=err[:, finite], fmt="none", ecolor="#222222", elinewidth=1.2, capsize=4)
    finite_vals = np.concatenate([mean[finite], high[np.isfinite(high) & finite]]) if finite.any() else np.array([1.0])
    xmax = float(np.max(finite_vals)) if finite_vals.size else 1.0
    xmax = xmax if xmax > 0 else 1.0
    right = xmax * 1.3
    for yi, label, m, f, h in zip(y, labels, mean, finite, high):
        if f:
            end = h if np.isfinite(h) and h > m else m
            ax.text(end + xmax * 0.01, yi, f" {m:.4g}", va="center", ha="left", fontsize=9, color="#222222")
        elif np.isinf(m) and m > 0:
            ax.barh(yi, right, color=styles[label]["color"], hatch=styles[label]["hatch"], alpha=0.35,
                    edgecolor="#333333", linewidth=0.6, height=0.7)
            ax.text(xmax * 0.02, yi, "∞ (zero error)" if metric == "psnr" else "∞", va="center", ha="left", fontsize=9)
        else:
            ax.text(xmax * 0.02, yi, "no value" if np.isnan(m) else "−∞", va="center", ha="left", fontsize=9,
                    color="#666666")
    ax.set_yticks(y, labels=labels, fontsize=10)
    ax.set_xlim(min(0.0, float(np.nanmin(np.where(finite, low, 0.0)))), right)
    ax.set_xlabel(f"{metric_title(metric)} ({_direction(higher)}), mean with 95% CI", fontsize=10)
    ax.set_title(f"{metric_title(metric)}" + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, Path(stem), formats)


def plot_edit_type_bars(bet: pd.DataFrame, metric: str, higher: bool, stem: str | Path, styles: dict,
                        run_order: list[str], subtitle: str = "", formats=FORMATS) -> list[Path]:
    """Grouped bars: one group per edit type (with its sample count), one bar per run, 95% CI whiskers."""
    types = sorted(bet["edit_type"].astype(str).unique())
    runs = [r for r in run_order if r in set(bet["run"])]
    fig = _figure(max(6.5, 1.2 + 1.1 * len(types) * max(1, len(runs)) * 0.35), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(types))
    top = 0.0
    for i, run in enumerate(runs):
        sub = bet[bet["run"] == run].set_index("edit_type")
        mean = np.array([float(sub[metric].get(t, np.nan)) if t in sub.index else np.nan for t in types])
        low = np.array([float(sub[f"{metric}_ci_low"].get(t, np.nan)) if t in sub.index else np.nan for t in types])
        high = np.array([float(sub[f"{metric}_ci_high"].get(t, np.nan)) if t in sub.index else np.nan for t in types])
        xs = x - 0.4 + width * (i + 0.5)
        finite = np.isfinite(mean)
        ax.bar(xs[finite], mean[finite], width=width * 0.95, color=styles[run]["color"], hatch=styles[run]["hatch"],
               edgecolor="#333333", linewidth=0.5, label=run)
        ax.errorbar(xs[finite], mean[finite], yerr=_errors(mean, low, high)[:, finite], fmt="none", ecolor="#222222",
                    elinewidth=1.0, capsize=2.5)
        vals = np.concatenate([mean[finite], high[finite & np.isfinite(high)]])
        if vals.size:
            top = max(top, float(vals.max()))
        for xi, m in zip(xs, mean):
            if np.isinf(m):
                ax.text(xi, 0, "∞", ha="center", va="bottom", fontsize=11, color=styles[run]["color"], fontweight="bold")
    counts = bet.groupby("edit_type")["n"].max()
    ax.set_xticks(x, labels=[f"{t}\n(n={int(counts.get(t, 0))})" for t in types], fontsize=10)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), (top if top > 0 else 1.0) * 1.15)
    ax.set_ylabel(f"{metric_title(metric)} ({_direction(higher)})", fontsize=10)
    ax.set_title(f"{metric_title(metric)} per edit type" + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, Path(stem), formats)


def choose_tradeoff_axes(metrics: dict[str, bool], lb: pd.DataFrame) -> tuple[str | None, str | None]:
    """(preservation metric, success metric) for the scatter: the first metric of the catalogue's
    preservation / success role (in display order) with a value in the table."""
    def has(m: str) -> bool:
        return m in metrics and m in lb and lb[m].notna().any()

    x = next((m for m in catalogue.with_role(catalogue.PRESERVATION) if has(m)), None)
    y = next((m for m in catalogue.with_role(catalogue.SUCCESS) if has(m)), None)
    return x, y


def plot_tradeoff(lb: pd.DataFrame, x_metric: str, y_metric: str, metrics: dict[str, bool], stem: str | Path,
                  styles: dict, subtitle: str = "", formats=FORMATS) -> list[Path]:
    """Preservation (x) against instruction success (y), one point per run with 95% CI whiskers on
    both axes. Infinite x (PSNR of untouched backgrounds) is drawn at the right edge as a ▶ marker."""
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot()
    xs = lb[x_metric].to_numpy(dtype=float)
    finite_x = xs[np.isfinite(xs)]
    xhigh = lb[f"{x_metric}_ci_high"].to_numpy(dtype=float)
    xlow = lb[f"{x_metric}_ci_low"].to_numpy(dtype=float)
    span_vals = np.concatenate([finite_x, xhigh[np.isfinite(xhigh)], xlow[np.isfinite(xlow)]])
    lo_x = float(span_vals.min()) if span_vals.size else 0.0
    hi_x = float(span_vals.max()) if span_vals.size else 1.0
    pad = (hi_x - lo_x) * 0.1 or max(abs(hi_x) * 0.1, 1.0)
    inf_x = hi_x + 2 * pad
    any_inf = False
    for _, r in lb.iterrows():
        label = r["run"]
        x, y = float(r[x_metric]), float(r[y_metric])
        if math.isnan(x) or math.isnan(y):
            continue
        colour = styles[label]["color"]
        if math.isinf(x):
            any_inf = True
            ax.scatter([inf_x], [y], marker=">", s=110, color=colour, edgecolor="#222222", zorder=3)
            xerr = None
            x_plot = inf_x
        else:
            ax.scatter([x], [y], marker="o", s=90, color=colour, edgecolor="#222222", zorder=3)
            xerr = _errors(np.array([x]), np.array([float(r[f"{x_metric}_ci_low"])]), np.array([float(r[f"{x_metric}_ci_high"])]))
            x_plot = x
        yerr = _errors(np.array([y]), np.array([float(r[f"{y_metric}_ci_low"])]), np.array([float(r[f"{y_metric}_ci_high"])]))
        ax.errorbar([x_plot], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, elinewidth=1.3, capsize=3, zorder=2)
        ax.annotate(label, (x_plot, y), xytext=(7, 7), textcoords="offset points", fontsize=10,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 1})
    left = lo_x - pad
    right = (inf_x + pad) if any_inf else hi_x + pad
    ax.set_xlim(left, right)
    if any_inf:  # an axis break: finite ticks left of the dotted line, one "∞" tick right of it
        ax.axvline(hi_x + pad, color="#bbbbbb", linestyle=":", linewidth=1)
        ticks = [t for t in ax.get_xticks() if left <= t <= hi_x + pad * 0.5]
        ax.set_xticks(ticks + [inf_x], labels=[f"{t:g}" for t in ticks] + ["∞"])
        ax.set_xlim(left, right)
    hx, hy = metrics[x_metric], metrics[y_metric]
    ax.set_xlabel(f"preservation: {metric_title(x_metric)} ({'→' if hx else '←'} better)", fontsize=10)
    ax.set_ylabel(f"instruction success: {metric_title(y_metric)} ({'↑' if hy else '↓'} better)", fontsize=10)
    ax.set_title("Preservation vs. instruction success" + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.grid(color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, Path(stem), formats)


def write_plots(table, out_dir: str | Path, styles: dict, formats=FORMATS) -> list[Path]:
    """All plots of one `Table` into `out_dir`: bars__<metric>, by_edit_type__<metric>, tradeoff."""
    out_dir = Path(out_dir)
    lb, bet = table.leaderboard, table.by_edit_type
    written: list[Path] = []
    subtitle = table.title
    for metric, higher in table.metrics.items():
        if not lb[metric].notna().any():
            continue
        written += plot_metric_bars(lb, metric, higher, out_dir / f"bars__{slugify(metric)}", styles, subtitle, formats)
        if len(bet) and bet[metric].notna().any():
            written += plot_edit_type_bars(bet, metric, higher, out_dir / f"by_edit_type__{slugify(metric)}", styles,
                                           list(lb["run"]), subtitle, formats)
    x, y = choose_tradeoff_axes(table.metrics, lb)
    if x and y:
        written += plot_tradeoff(lb, x, y, table.metrics, out_dir / f"tradeoff__{x}__{y}", styles, subtitle, formats)
    return written


__all__ = ["OKABE_ITO", "editor_styles", "plot_metric_bars", "plot_edit_type_bars", "plot_tradeoff",
           "choose_tradeoff_axes", "write_plots"]
