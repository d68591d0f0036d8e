"""Leaderboard tables: runs grouped into comparable tables (one protocol, one dataset), one row per
run with each metric's mean and 95% CI, sorted by the table's primary metric; the same per edit type;
and the Markdown rendering."""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
from ciebench.metrics import catalogue

from ciebench.stats import from_json_number

from .judge_columns import add_judge_columns, judge_notes
from .runs import Run, RunError, dataset_short_name, load_runs, metric_title, number_repeats, order_metrics, slugify
from .significance import ALPHA, compare_runs, significance_matrix


@dataclass
class Table:
    """Runs scored under one protocol on one dataset: the unit inside which runs are ranked and compared."""

    slug: str
    protocol: str
    protocol_hash: str
    dataset: str  # the names its runs gave the data (", "-joined; one content revision: `revision`)
    revision: str
    runs: list[Run]
    metrics: dict[str, bool]
    primary: str | None
    primary_reason: str
    alpha: float = ALPHA
    track: str | None = None  # set when tables are separated by track (group_runs(by_track=True))
    leaderboard: pd.DataFrame = field(default=None, repr=False)   # type: ignore[assignment]
    by_edit_type: pd.DataFrame = field(default=None, repr=False)  # type: ignore[assignment]
    pairs: pd.DataFrame = field(default=None, repr=False)         # type: ignore[assignment]
    # per metric, what orders the runs and picks the best: "mean" or "mean_rank" (`_ordering`)
    rank_basis: dict[str, str] = field(default_factory=dict)
    # (metric, run called best, run the paired test finds significantly better than it, Holm p)
    rank_conflicts: list[tuple[str, str, str, float]] = field(default_factory=list)

    @property
    def title(self) -> str:
        rev = f"@{self.revision[:12]}" if self.revision else ""
        phash = f" [{self.protocol_hash[:8]}]" if self.protocol_hash else ""
        track = f", track {self.track}" if self.track is not None else ""
        first, *others = self.dataset_specs
        also = f" (the same content as {', '.join(others)})" if others else ""
        return f"protocol {self.protocol}{phash} on {first}{rev}{also}{track}"

    @property
    def dataset_specs(self) -> list[str]:
        """The names the table's runs gave their (one) dataset: `ciebench`, `/data/ciebench`."""
        return dataset_names(self.runs) or [self.dataset]

    @property
    def labels(self) -> list[str]:
        """Run labels in leaderboard order."""
        return list(self.leaderboard["run"]) if self.leaderboard is not None else [r.label for r in self.runs]


def dataset_names(runs: Iterable[Run]) -> list[str]:
    """The distinct dataset specs of `runs`, sorted (the order of a table's runs is its ranking)."""
    return sorted({r.dataset_spec for r in runs})


def group_runs(runs: Iterable[Run | str], *, primary: str | None = None, alpha: float = ALPHA,
               by_track: bool = False) -> list[Table]:
    """Split runs into tables by (protocol name, protocol hash, dataset content revision: `Run.group_key`),
    and with `by_track` also by editor track (direct / rewrite / agentic), and compute each table's
    leaderboard, per-edit-type table and pairwise significance. Runs that name the same data differently
    (`ciebench`, a local copy's path) share a table; `Table.dataset` lists the names."""
    runs = load_runs(runs)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group_key() + ((run.track,) if by_track else (None,)), []).append(run)
    tables = []
    for (protocol, phash, _, track), members in groups.items():
        dataset = ", ".join(dataset_names(members))
        revision = members[0].dataset_revision
        metrics: dict[str, bool] = {}
        for run in members:
            for m, h in run.metrics.items():
                if m in metrics and metrics[m] != h:
                    raise RunError(f"metric {m!r} is higher-is-better in one run and lower-is-better in another "
                                     f"({run.path}); these runs cannot share a table")
                metrics.setdefault(m, h)
        metrics = {m: metrics[m] for m in order_metrics(metrics)}
        chosen, reason = _choose_primary(members, metrics, primary)
        tables.append(Table(slug="", protocol=protocol, protocol_hash=phash, dataset=dataset, revision=revision,
                            runs=members, metrics=metrics, primary=chosen, primary_reason=reason, alpha=alpha,
                            track=track))
    _assign_slugs(tables)
    for table in tables:
        _fill(table)
    return tables


def _choose_primary(runs: list[Run], metrics: dict[str, bool], requested: str | None) -> tuple[str | None, str]:
    def defined(m: str) -> bool:
        return any(m in r.samples.columns and r.samples[m].notna().any() for r in runs)

    if requested:
        if requested in metrics and defined(requested):
            return requested, f"{requested} (chosen with --primary)"
        fallback, why = _choose_primary(runs, metrics, None)
        return fallback, f"{why}; the requested primary metric {requested!r} has no values in this table"
    primary_order = catalogue.primary_order()
    for m in primary_order:
        if m in metrics and defined(m):
            if m == "idcs":
                return m, "idcs"
            return m, f"{m} (no IDCS values in this table; fallback order: {', '.join(primary_order)})"
    for m in metrics:
        if defined(m):
            return m, f"{m} (first metric with values; none of {', '.join(primary_order)} present)"
    return None, "no metric values: unsorted"


def _assign_slugs(tables: list[Table]) -> None:
    """`<protocol>__<dataset>`; when two tables share that, the part that tells them apart is added
    (protocol hash and/or dataset revision, 8 characters each)."""
    base = [f"{slugify(t.protocol)}__{slugify('+'.join(dict.fromkeys(map(dataset_short_name, t.dataset_specs))))}"
            for t in tables]
    for t, b in zip(tables, base):
        clash = [u for u, c in zip(tables, base) if c == b]
        slug = b
        if len(clash) > 1:
            extra = []
            if len({u.protocol_hash for u in clash}) > 1:
                extra.append(t.protocol_hash[:8] or "nohash")
            if len({u.runs[0].dataset_key for u in clash}) > 1:
                extra.append(t.revision[:8] or "norev")
            slug = f"{b}__{slugify('-'.join(extra))}" if extra else b
        t.slug = f"{slug}__{slugify(t.track or 'none')}" if t.track is not None else slug
    for t, slug in zip(tables, number_repeats([t.slug for t in tables], "__")):
        t.slug = slug


def _fill(table: Table) -> None:
    rows = [_run_row(table, run) for run in table.runs]
    frame = pd.DataFrame(rows)
    orderings = {m: _ordering(table, frame, m) for m in table.metrics}
    table.rank_basis = {m: o.basis for m, o in orderings.items()}
    _shared_sample_ranking(table, frame, orderings.get(table.primary))
    if table.primary:
        key = orderings[table.primary].key.reindex(frame["run"]).set_axis(frame.index)
        frame = frame.assign(_key=key.fillna(np.inf)).sort_values(["_key", "run"], kind="stable").drop(columns="_key")
        frame["rank"] = key.loc[frame.index].rank(method="min", na_option="keep").astype("Int64")
    else:
        frame["rank"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame = frame.reset_index(drop=True)
    order = {label: i for i, label in enumerate(frame["run"])}
    ordered_runs = sorted(table.runs, key=lambda r: order[r.label])
    table.runs = ordered_runs
    table.pairs = compare_runs(ordered_runs, table.metrics, table=table.slug, alpha=table.alpha)
    # Which runs are indistinguishable from the best, per metric (the best on the shared samples, as
    # the primary metric ranks: rank 1 for it).
    table.rank_conflicts = []
    for m in table.metrics:
        frame[f"{m}_tied_best"], conflicts = _tied_with_best(frame, table.pairs, m, orderings[m].key)
        table.rank_conflicts += conflicts
    frame["primary_metric"] = table.primary or ""
    frame["tied_with_best"] = frame[f"{table.primary}_tied_best"] if table.primary else pd.NA
    id_cols = ["table", "rank", "run", "editor", "track", "config_hash", "protocol", "protocol_hash", "dataset", "revision",
               "judge", "seeds", "n", "n_ok", "n_dataset", "coverage", "partial", "rank_value", "rank_basis", "rank_n_shared",
               "primary_metric", "tied_with_best", "verified"]
    metric_cols = [c for m in table.metrics for c in
                   (m, f"{m}_ci_low", f"{m}_ci_high", f"{m}_n", f"{m}_coverage", f"{m}_tied_best")]
    table.leaderboard = add_judge_columns(frame[id_cols + metric_cols + ["run_dir"]], table.runs)
    table.by_edit_type = _by_edit_type(table)


def _shared_sample_ranking(table: Table, frame: pd.DataFrame, ordering: _Ordering | None) -> None:
    """Ranking accounts for coverage: runs are ranked by their primary-metric mean over the samples
    that every run of the table with a value has a value for (the samples the paired tests use too),
    so a run that failed the hard samples cannot rank first on the easy ones. A run without any value
    (e.g. not judged) takes no part and ranks last. A run that covers fewer samples than the table's
    runs together is `partial` and marked in leaderboard.md. The displayed means stay the means over
    each run's own samples. When the runs share no sample, each run's own mean ranks it. When one of
    those means is infinite, mean per-sample ranks order the runs instead (`_ordering`)."""
    frame["partial"] = False
    frame["rank_n_shared"] = 0
    frame["rank_value"] = math.nan
    frame["rank_basis"] = ""
    if ordering is None:
        return
    union = set().union(*(set(v.index) for v in ordering.covered.values()))
    for idx, label in frame["run"].items():
        frame.loc[idx, "partial"] = len(ordering.covered[label]) < len(union)
        frame.loc[idx, "rank_n_shared"] = len(ordering.shared)
        frame.loc[idx, "rank_value"] = ordering.value[label]
    frame["rank_basis"] = ordering.basis
    frame["partial"] = frame["partial"].astype(bool)


@dataclass(frozen=True)
class _Ordering:
    """How the runs of a table are ordered on one metric: each run's values per sample (`covered`), the
    samples every run with a value shares, the value that orders them (`value`: the mean over the
    shared samples, or with `basis` "mean_rank" the mean per-sample rank) and that value oriented so
    that lower is better (`key`; NaN for a run without values). `value` and `key` are indexed by run
    label (the frame is re-sorted after they are computed)."""

    covered: dict[str, pd.Series]
    shared: list
    value: pd.Series
    basis: str
    key: pd.Series


def _ordering(table: Table, frame: pd.DataFrame, metric: str) -> _Ordering:
    """What ranks the runs on `metric` and picks the best one. Normally each run's mean over the samples
    every run with a value shares (its own mean when none is shared; NaN without values). When one of
    those means is infinite (PSNR of one untouched sample makes a mean inf however bad the rest), the
    mean cannot order the runs: one sample would outweigh all others. The runs are then ordered by
    their mean per-sample rank over the shared samples (Friedman-style: per sample the runs are ranked,
    1 = best, ties averaged, infinities ranking as the extreme values they are). Displayed means are
    not changed either way. Without shared samples there is nothing to rank per sample, so the means
    stay (all runs are partial then, and no paired test exists)."""
    higher = table.metrics[metric]
    covered = {run.label: run.per_sample(metric).dropna().astype(float) for run in table.runs}
    valued = [v for v in covered.values() if len(v)]
    shared = sorted(set.intersection(*(set(v.index) for v in valued))) if valued else []
    means = pd.Series(math.nan, index=list(frame["run"]), dtype=float)
    for idx, label in frame["run"].items():
        values = covered[label]
        if not len(values):
            continue
        means[label] = float(values.loc[shared].mean()) if shared else float(frame.loc[idx, metric])
    if not shared or np.isfinite(means.dropna()).all():
        return _Ordering(covered, shared, means, "mean", -means if higher else means)
    per_sample = pd.DataFrame({label: values.loc[shared] for label, values in covered.items() if len(values)})
    ranks = per_sample.rank(axis=1, method="average", ascending=not higher).mean(axis=0)
    mean_rank = ranks.reindex(means.index)
    return _Ordering(covered, shared, mean_rank, "mean_rank", mean_rank)


def _run_row(table: Table, run: Run) -> dict[str, Any]:
    summary = run.summarize({m: h for m, h in table.metrics.items() if m in run.metrics})
    n = summary["n_samples"]
    n_dataset = run.dataset_n
    n_ok = run.n_ok_samples()
    row: dict[str, Any] = {
        "table": table.slug, "run": run.label, "editor": run.editor_name, "track": run.track,
        "config_hash": run.config_hash,
        "protocol": run.protocol_name, "protocol_hash": run.protocol_hash, "dataset": run.dataset_spec,
        "revision": run.dataset_revision, "judge": run.judge, "seeds": " ".join(str(s) for s in run.seeds),
        "n": n, "n_ok": n_ok, "n_dataset": n_dataset if n_dataset is not None else pd.NA,
        "coverage": (n_ok / (n_dataset or n)) if (n_dataset or n) else math.nan,
        "run_dir": str(run.path), "verified": run.verification,
    }
    for m in table.metrics:
        block = summary["metrics"].get(m)
        if block is None:
            row.update({m: math.nan, f"{m}_ci_low": math.nan, f"{m}_ci_high": math.nan, f"{m}_n": 0, f"{m}_coverage": 0.0})
            continue
        low, high = block["ci95"]
        row.update({m: from_json_number(block["mean"]), f"{m}_ci_low": from_json_number(low),
                    f"{m}_ci_high": from_json_number(high), f"{m}_n": int(block["n"]),
                    f"{m}_coverage": float(block["coverage"])})
    return row


def _tied_with_best(frame: pd.DataFrame, pairs: pd.DataFrame, metric: str,
                    key: pd.Series) -> tuple[pd.Series, list[tuple[str, str, str, float]]]:
    """True for the best run on `metric` (lowest `_Ordering.key`: best on the samples the runs share)
    and for runs not significantly worse than it (Holm-adjusted paired test); False for runs
    significantly worse; NA where untestable (no value, < 2 shared samples). A run the test finds
    significantly *better* than the best (the ranking's shared samples or its mean ranks can disagree
    with a pair's own shared samples) is False too, never "tied", and is returned as a conflict
    (metric, best, better, p_holm) for leaderboard.md to warn about."""
    values = frame[metric].astype(float)
    out = pd.Series(pd.NA, index=frame.index, dtype="boolean")
    conflicts: list[tuple[str, str, str, float]] = []
    if key.notna().sum() == 0:
        return out, conflicts
    best = key.reindex(frame["run"]).idxmin()  # the first in leaderboard order among equals
    sub = pairs[pairs["metric"] == metric]
    for idx, label in frame["run"].items():
        if math.isnan(values[idx]):
            continue
        if label == best:
            out[idx] = True
            continue
        hit = sub[((sub["run_a"] == best) & (sub["run_b"] == label)) | ((sub["run_a"] == label) & (sub["run_b"] == best))]
        if not len(hit) or math.isnan(hit["p_holm"].iloc[0]):
            continue
        r = hit.iloc[0]
        out[idx] = not bool(r["significant"])
        if bool(r["significant"]) and r["better"] == label:
            conflicts.append((metric, best, label, float(r["p_holm"])))
    return out, conflicts


def _by_edit_type(table: Table) -> pd.DataFrame:
    rows = []
    for run in table.runs:
        summary = run.summarize({m: h for m, h in table.metrics.items() if m in run.metrics})
        for edit_type, block in sorted(summary["by_edit_type"].items()):
            row: dict[str, Any] = {"table": table.slug, "run": run.label, "editor": run.editor_name,
                                   "edit_type": edit_type, "n": block["n_samples"]}
            for m in table.metrics:
                b = block["metrics"].get(m)
                if b is None:
                    row.update({m: math.nan, f"{m}_ci_low": math.nan, f"{m}_ci_high": math.nan, f"{m}_n": 0,
                                f"{m}_coverage": 0.0})
                    continue
                row.update({m: from_json_number(b["mean"]), f"{m}_ci_low": from_json_number(b["ci95"][0]),
                            f"{m}_ci_high": from_json_number(b["ci95"][1]), f"{m}_n": int(b["n"]),
                            f"{m}_coverage": float(b["coverage"])})
            rows.append(row)
    columns = ["table", "run", "editor", "edit_type", "n"] + [
        c for m in table.metrics for c in (m, f"{m}_ci_low", f"{m}_ci_high", f"{m}_n", f"{m}_coverage")]
    return pd.DataFrame(rows, columns=columns)


# --- public DataFrame functions -------------------------------------------------------------------

def leaderboard(runs, *, primary: str | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per run, every table stacked (the `table` column says which); within a table rows are
    sorted by its primary metric and `rank`/`*_tied_best` are computed inside that table only."""
    return pd.concat([t.leaderboard for t in _tables(runs, primary, alpha)], ignore_index=True)


def by_edit_type(runs, *, primary: str | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """Per run and edit type: n, and per metric mean, 95% CI, n and coverage."""
    return pd.concat([t.by_edit_type for t in _tables(runs, primary, alpha)], ignore_index=True)


def significance(runs, *, alpha: float = ALPHA, matrix: bool = False) -> pd.DataFrame:
    """Pairwise paired tests inside each table (long form), or as p-value matrices with `matrix=True`."""
    tables = _tables(runs, None, alpha)
    pairs = pd.concat([t.pairs for t in tables], ignore_index=True)
    if not matrix:
        return pairs
    return pd.concat([significance_matrix(t.pairs, t.labels) for t in tables], ignore_index=True)


def _tables(runs, primary, alpha) -> list[Table]:
    if isinstance(runs, list) and runs and all(isinstance(t, Table) for t in runs):
        return runs
    return group_runs(runs, primary=primary, alpha=alpha)


def index_frame(tables: list[Table]) -> pd.DataFrame:
    """One row per table: what it holds and which files it was written to."""
    return pd.DataFrame([{
        "table": t.slug, "title": t.title, "protocol": t.protocol, "protocol_hash": t.protocol_hash,
        "dataset": t.dataset, "revision": t.revision, "n_runs": len(t.runs), "primary_metric": t.primary or "",
        "primary_reason": t.primary_reason,
        "ranked_by_mean_rank": ", ".join(m for m, basis in t.rank_basis.items() if basis == "mean_rank"),
        "leaderboard_csv": f"leaderboard__{t.slug}.csv",
        "by_edit_type_csv": f"by_edit_type__{t.slug}.csv", "significance_csv": f"significance__{t.slug}.csv",
        "plots": f"plots/{t.slug}/",
    } for t in tables])


# --- Markdown -------------------------------------------------------------------------------------

def format_value(v: Any, digits: int = 4) -> str:
    """A metric value for people: 4 significant digits, scientific below 0.001 and from 10^5."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "" if v is None else str(v)
    if math.isnan(f):
        return "–"
    if math.isinf(f):
        return "∞" if f > 0 else "−∞"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e5):
        return f"{f:.{digits - 1}e}"
    return f"{f:.{digits}g}"


def format_ci(mean: Any, low: Any, high: Any, digits: int = 4) -> str:
    m = format_value(mean, digits)
    if m == "–":
        return m
    lo, hi = format_value(low, digits), format_value(high, digits)
    if lo == hi == m:
        return m
    return f"{m} [{lo}, {hi}]"


def _digits(metric: str) -> int:
    """Significant digits the catalogue gives `metric` (4 for a metric it does not know)."""
    info = catalogue.get(metric)
    return info.digits if info is not None else 4


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: str) -> str:
    """Text from runs and datasets (names, labels, paths, ids) as literal Markdown: HTML is escaped
    (it would render live in Markdown viewers), and so are the characters of links, emphasis, code and
    tables; line breaks become spaces."""
    text = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=True))


def _md_hash(value: Any) -> str:
    text = str(value or "")[:7]
    return f"`{text}`" if re.fullmatch(r"[0-9a-fA-F]+", text) else md_escape(text)


def markdown_table(table: Table, *, plots_dir: str | None = None) -> str:
    lb = table.leaderboard
    lines = [f"## {md_escape(table.title)}", ""]
    if table.primary:
        direction = "higher" if table.metrics[table.primary] else "lower"
        lines.append(f"Sorted by **{metric_title(table.primary)}** ({direction} is better); primary metric: "
                     f"{md_escape(table.primary_reason)}. Values are means over samples (each sample averaged over "
                     f"seeds) with 95% bootstrap CIs. **≈** marks runs not significantly different from the best on "
                     f"the primary metric (paired sign-flip permutation test on shared samples, Holm-adjusted, "
                     f"α = {table.alpha:g}); bold values are best or indistinguishable from the best on that metric.")
    else:
        lines.append("No metric has values in this table; rows are unsorted.")
    judges = {j for j in lb["judge"] if j}
    if len(judges) > 1:
        lines.append("")
        lines.append(f"**Warning:** runs in this table were judged by different judges ({', '.join(md_escape(j) for j in sorted(judges))}); "
                     "judged metrics are not comparable across them.")
    lines.append("")
    metrics = list(table.metrics)
    header = ["#", "run", "track", "config", "n", "coverage"] + [
        f"{metric_title(m)} {'↑' if table.metrics[m] else '↓'}" for m in metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---:", ":---", ":---", ":---", "---:", "---:"] + ["---:"] * len(metrics)) + "|")
    for _, r in lb.iterrows():
        rank = "" if pd.isna(r["rank"]) else str(int(r["rank"]))
        tied = r["tied_with_best"]
        mark = " ≈" if (not pd.isna(tied) and bool(tied) and rank != "1") else ""
        partial = " †" if bool(r["partial"]) else ""
        cells = [rank + mark, md_escape(r["run"]), md_escape(r["track"] or "–"), _md_hash(r["config_hash"]),
                 str(int(r["n"])), (f"{100 * float(r['coverage']):.0f}%" if not pd.isna(r["coverage"]) else "–") + partial]
        for m in metrics:
            text = format_ci(r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"], _digits(m))
            t = r[f"{m}_tied_best"]
            if not pd.isna(t) and bool(t) and text != "–":
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += _ordering_notes(table)
    if table.primary and lb["partial"].astype(bool).any():
        n_shared = int(lb["rank_n_shared"].iloc[0])
        basis = (f"ranks compare every run on the {n_shared} sample(s) all runs have a value for" if n_shared else
                 "the runs share no sample, so each is ranked on its own samples")
        lines.append(f"† partial: this run has {metric_title(table.primary)} values for fewer samples than the "
                     f"table's runs together; {basis} (shown means are over each run's own samples).")
        lines.append("")
    lines.append("`ciebench verify`: " + "; ".join(f"{md_escape(r['run'])}: {r['verified']}" for _, r in lb.iterrows()))
    lines.append("")
    notes = judge_notes(lb)
    if notes:
        lines += [" ".join(notes), ""]  # judge_notes escapes the run-provided text itself
    if table.primary and len(table.runs) > 1:
        lines.append(f"Paired tests on {metric_title(table.primary)} (Holm-adjusted p; ▲ row significantly better "
                     f"than column, ▼ worse, · not significant):")
        lines.append("")
        labels = table.labels
        lines.append("| | " + " | ".join(md_escape(l) for l in labels) + " |")
        lines.append("|:---|" + "|".join([":---:"] * len(labels)) + "|")
        sub = table.pairs[table.pairs["metric"] == table.primary]
        for a in labels:
            cells = []
            for b in labels:
                if a == b:
                    cells.append("")
                    continue
                hit = sub[((sub["run_a"] == a) & (sub["run_b"] == b)) | ((sub["run_a"] == b) & (sub["run_b"] == a))]
                if not len(hit) or pd.isna(hit["p_holm"].iloc[0]):
                    cells.append("n/a")
                    continue
                r = hit.iloc[0]
                sign = "▲" if r["better"] == a else "▼" if r["better"] == b else "·"
                cells.append(f"{sign} {format_p(r['p_holm'])}")
            lines.append(f"| {md_escape(a)} | " + " | ".join(cells) + " |")
        lines.append("")
    if plots_dir:
        lines.append(f"Plots: `{plots_dir}` (bars with 95% CIs per metric, per edit type, and the preservation/success scatter).")
        lines.append("")
    return "\n".join(lines)


def _ordering_notes(table: Table) -> list[str]:
    """Markdown lines saying which metrics are ordered by mean per-sample rank (`_ordering`), and a
    warning for each run the paired test finds significantly better than the run ranked best."""
    lines = []
    by_rank = [m for m, basis in table.rank_basis.items() if basis == "mean_rank"]
    if by_rank:
        titles = " and ".join(metric_title(m) for m in by_rank)
        sets = ("the order (#, ≈) and " if table.primary in by_rank else "") + "the best run (bold)"
        lines += [f"{titles} {'is' if len(by_rank) == 1 else 'are'} ranked by mean per-sample rank: a mean is "
                  f"infinite, so one sample would outweigh all others. On each sample all runs share, the runs are "
                  f"ranked (1 = best, ties averaged), and their mean rank sets {sets}; the means shown are "
                  f"unchanged.", ""]
    for metric, best, better, p in table.rank_conflicts:
        how = " by mean per-sample rank" if table.rank_basis.get(metric) == "mean_rank" else ""
        lines += [f"**Warning:** on {metric_title(metric)}, {md_escape(better)} is significantly better than "
                  f"{md_escape(best)} (paired test, Holm-adjusted {format_p(p)}) although {md_escape(best)} is ranked "
                  f"best: the ranking compares all runs on the samples they all share{how}, the test compares each "
                  f"pair on the samples the two share. {md_escape(better)} is not marked as tied with the best.", ""]
    return lines


def format_p(p: float) -> str:
    if pd.isna(p):
        return "n/a"
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}"


def markdown_document(tables: list[Table], *, plots: bool = True) -> str:
    lines = ["# CIEBench leaderboard", ""]
    if len(tables) > 1:
        lines.append("Runs scored under different protocols or on different datasets are never ranked together; "
                     "each gets its own table:")
        lines.append("")
        for t in tables:
            lines.append(f"- `{t.slug}`: {md_escape(t.title)} ({len(t.runs)} run{'s' if len(t.runs) != 1 else ''})")
        lines.append("")
    for t in tables:
        lines.append(markdown_table(t, plots_dir=f"plots/{t.slug}/" if plots else None))
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["Table", "group_runs", "leaderboard", "by_edit_type", "significance", "index_frame",
           "markdown_table", "markdown_document", "format_value", "format_ci"]
