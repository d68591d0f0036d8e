"""Reading run directories for the leaderboard: spec, summary and samples table, metric directions,
display labels, and the grouping into comparable tables (same protocol, same data by content revision)."""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from ciebench.metrics import catalogue

from ciebench.io import read_json_object
from ciebench.results import (BASE_COLUMNS, RunFolderError, describe_conflict, read_samples, record_conflicts,
                              require_current_tables, require_run_folder, scored_block, summarize)
from ciebench.spec import is_legacy_release_revision
from ciebench.status import Status

log = logging.getLogger(__name__)

# Views (taken at import, for callers that read them) of the metric catalogue, ciebench.metrics.catalogue,
# where every metric's direction, title and order are defined; this package itself asks the catalogue.
# A run's summary.json ("higher_is_better") takes precedence over the catalogue's direction.
HIGHER_IS_BETTER = {name: info.higher_is_better for name, info in catalogue.CATALOGUE.items()}
# Display order of metric columns; unknown metrics follow alphabetically.
METRIC_ORDER = catalogue.display_order(catalogue.CATALOGUE)
# The primary (sort) metric of a table is the first of these that any of its runs has: instruction
# success first (IDCS, then CLIP), then locality, then preservation.
PRIMARY_ORDER = catalogue.primary_order()
# Scatter axes: preservation (x) against instruction success (y), first available of each list.
PRESERVATION_METRICS = catalogue.with_role(catalogue.PRESERVATION)
SUCCESS_METRICS = catalogue.with_role(catalogue.SUCCESS)
_NON_METRIC_SUFFIXES = ("_status", "_error", "_sentence", "_seconds", "_sha256")


RunError = RunFolderError  # a path given as a run that is not a readable run directory, or runs that cannot be compared


metric_title = catalogue.title
order_metrics = catalogue.display_order


@dataclass
class Run:
    """One run directory, read once. `metrics` maps each metric column to higher_is_better."""

    path: Path
    spec: dict[str, Any]
    summary: dict[str, Any]
    samples: pd.DataFrame
    metrics: dict[str, bool]
    label: str = ""
    _summaries: dict = field(default_factory=dict, repr=False)

    # -- identity of the run ------------------------------------------------------------------------
    @property
    def editor(self) -> dict[str, Any]:
        """spec.json's editor; null there means a `ciebench score` run (no editor). Without spec.json,
        summary.json's editor (top level or under "run")."""
        if "editor" in self.spec:
            return self.spec.get("editor") or {}
        run_header = self.summary.get("run") if isinstance(self.summary.get("run"), dict) else {}
        return self.summary.get("editor") or run_header.get("editor") or {}

    @property
    def editor_name(self) -> str:
        return str(self.editor.get("name") or self.path.name)

    @property
    def track(self) -> str:
        """direct | rewrite | agentic (see ciebench.Editor.track): from the run spec's notes, else from the
        registered editor's class; "" for runs without an editor (`ciebench score`)."""
        if not self.editor:
            return ""
        noted = (self.spec.get("notes") or {}).get("track")
        if noted:
            return str(noted)
        if self.editor_name.startswith("rewrite:"):
            return "rewrite"
        from ciebench.registry import EDITORS, RegistryError, load_object

        target = EDITORS.names().get(self.editor_name)
        try:
            return str(getattr(load_object(target, "editor"), "track", "direct")) if target else "direct"
        except RegistryError:
            return "direct"

    @property
    def config_hash(self) -> str:
        if not self.editor:
            return ""
        run_header = self.summary.get("run") if isinstance(self.summary.get("run"), dict) else {}
        return str(self.spec.get("editor_config_hash") or run_header.get("editor_config_hash")
                   or self.editor.get("config_hash") or "")

    @property
    def protocol(self) -> dict[str, Any]:
        """The protocol the numbers were scored under (see `_scored`)."""
        return self._scored("protocol")

    @property
    def protocol_name(self) -> str:
        return str(self.protocol.get("name") or "unknown")

    @property
    def protocol_hash(self) -> str:
        return str(self.protocol.get("hash") or "")

    @property
    def dataset(self) -> dict[str, Any]:
        """The dataset the numbers were scored on (see `_scored`)."""
        return self._scored("dataset")

    def _scored(self, block: str) -> dict[str, Any]:
        return scored_block(self.spec, self.summary, block)

    @property
    def dataset_spec(self) -> str:
        return str(self.dataset.get("spec") or "unknown")

    @property
    def dataset_revision(self) -> str:
        return str(self.dataset.get("revision") or "")

    @property
    def dataset_n(self) -> int | None:
        n = self.dataset.get("n")
        return int(n) if isinstance(n, (int, float)) and not (isinstance(n, float) and math.isnan(n)) else None

    @property
    def judge(self) -> str:
        judge = self.spec.get("judge")
        if not judge:
            return ""
        if isinstance(judge, dict):
            return str(judge.get("model") or judge.get("name") or json.dumps(judge, sort_keys=True))
        return str(judge)

    @property
    def seeds(self) -> list[int]:
        if len(self.samples):
            return sorted(int(s) for s in self.samples["seed"].dropna().unique())
        return [int(s) for s in self.spec.get("seeds") or []]

    @property
    def dataset_key(self) -> str:
        """What identifies the data the run was scored on: its content revision, which the same rows have
        under any name (`ciebench`, `/data/ciebench`, `./ds`); the spec only when no revision is recorded."""
        return self.dataset_revision or f"spec:{self.dataset_spec}"

    def group_key(self) -> tuple[str, str, str]:
        """Runs are comparable only with the same protocol (name and hash) on the same data (content
        revision: the dataset's spec is a label, `dataset_key`)."""
        return (self.protocol_name, self.protocol_hash, self.dataset_key)

    @property
    def verification(self) -> str:
        """"verified (ciebench X)" when `ciebench verify` passed and no vouched-for file changed since,
        "failed (ciebench X)", "stale (...)" after a later edit, or "no"."""
        from ciebench.verify import read_verification

        record = read_verification(self.path)
        if record is None:
            return "no"
        if not record["current"]:
            return "stale (files changed since verification)"
        return f"{'verified' if record.get('verified') else 'failed'} (ciebench {record.get('ciebench_version', '?')})"

    # -- statistics ---------------------------------------------------------------------------------
    def summarize(self, metrics: dict[str, bool] | None = None) -> dict[str, Any]:
        """`ciebench.results.summarize` of this run's samples (memoised), for the given metrics."""
        metrics = dict(self.metrics if metrics is None else metrics)
        key = tuple(sorted(metrics.items()))
        if key not in self._summaries:
            present = {m: h for m, h in metrics.items() if m in self.samples.columns}
            self._summaries[key] = summarize(self.samples, present)
        return self._summaries[key]

    def per_sample(self, metric: str) -> pd.Series:
        """Per-sample score (mean over seeds, NaN dropped), as `summarize` computes it, indexed by sample_id."""
        from ciebench.results import _seed_mean

        if metric not in self.samples.columns or not len(self.samples):
            return pd.Series(dtype=float)
        return self.samples.groupby("sample_id")[metric].apply(_seed_mean)

    def n_ok_samples(self) -> int:
        """Samples all of whose rows (seeds) have status ok."""
        if not len(self.samples):
            return 0
        ok = self.samples["status"].astype(str).eq(Status.OK).groupby(self.samples["sample_id"]).all()
        return int(ok.sum())


def load_run(path: str | Path) -> Run:
    path = require_run_folder(path)
    spec = _read_json(path / "spec.json")
    summary = _read_json(path / "summary.json")
    require_current_tables(path, summary, RunError)
    samples = read_samples(path)
    for col in ("sample_id", "seed", "edit_type", "status"):
        if col not in samples.columns:
            raise RunError(f"{path / 'samples.csv'}: missing column {col!r}")
    samples["edit_type"] = samples["edit_type"].fillna("other")
    _warn_conflicts(path, spec, summary)
    _warn_legacy_revision(path, scored_block(spec, summary, "dataset"))
    metrics = _metric_directions(samples, summary, path)
    for m in metrics:  # "inf" strings are read as floats by pandas; anything else non-numeric is an error
        samples[m] = pd.to_numeric(samples[m], errors="coerce")
    return Run(path=path, spec=spec, summary=summary, samples=samples, metrics=metrics)


def load_runs(paths: Iterable[str | Path | Run]) -> list[Run]:
    """Read run directories (or pass `Run`s through), drop duplicates of the same directory, and
    give every run a display label (see `assign_labels`)."""
    if isinstance(paths, (str, Path, Run)):
        paths = [paths]
    runs: list[Run] = []
    seen: set[Path] = set()
    for p in paths:
        run = p if isinstance(p, Run) else load_run(p)
        resolved = run.path.resolve()
        if resolved in seen:
            log.warning("%s given twice; using it once", run.path)
            continue
        seen.add(resolved)
        runs.append(run)
    if not runs:
        raise RunError("no run directories given")
    assign_labels(runs)
    return runs


def assign_labels(runs: list[Run]) -> None:
    """Label = editor name; editors whose name is shared by runs with different configs get the config
    hash appended; runs still sharing a label inside one table get their directory name appended.
    The same editor and config keep the same label (and colour) across tables."""
    by_name: dict[str, set[str]] = {}
    for run in runs:
        by_name.setdefault(run.editor_name, set()).add(run.config_hash)
    for run in runs:
        label = run.editor_name
        if len(by_name[label]) > 1 and run.config_hash:
            label = f"{label} [{run.config_hash[:7]}]"
        run.label = label
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group_key(), []).append(run)
    for members in groups.values():
        counts: dict[str, int] = {}
        for run in members:
            counts[run.label] = counts.get(run.label, 0) + 1
        for run in members:
            if counts[run.label] > 1:
                run.label = f"{run.label} ({run.path.name})"
    # Last resort (same editor, config and directory name in one table): number them.
    for members in groups.values():
        for run, label in zip(members, number_repeats([r.label for r in members], " #")):
            run.label = label


def _warn_conflicts(path: Path, spec: dict[str, Any], summary: dict[str, Any]) -> None:
    """Say so, once per run read, when a run is shown under summary.json's protocol or dataset over
    spec.json's."""
    for block, (recorded, scored) in record_conflicts(spec, summary).items():
        log.warning("%s: %s (a later `ciebench score` into this folder did not finish?); the run is shown under "
                    "summary.json's. Score the folder again to make them agree", path,
                    describe_conflict(block, recorded, scored))


def _warn_legacy_revision(path: Path, dataset: dict[str, Any]) -> None:
    """A run that recorded the release by its manifest revision (`ciebench.spec.legacy_release_revision`)
    loads, but cannot be matched with runs on the same data by content: say so and how to fix it."""
    revision = str(dataset.get("revision") or "")
    if is_legacy_release_revision(revision):
        log.warning("%s: records dataset revision %s (the release's name, written by an older ciebench), not "
                    "the content revision: it gets a table of its own, apart from runs on the same data. Run "
                    "its `ciebench evaluate` (nothing is regenerated) or `ciebench score` command into the "
                    "folder again to record the content revision", path, revision)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, RunError)


def _metric_directions(samples: pd.DataFrame, summary: dict[str, Any], path: Path) -> dict[str, bool]:
    """Metric columns and their direction. summary.json's metric list is authoritative when present;
    otherwise every numeric column outside BASE_COLUMNS that is not a status/error/text column."""
    declared = (summary.get("metrics") or {}) if isinstance(summary.get("metrics"), dict) else {}
    out: dict[str, bool] = {}
    if declared:
        for m, block in declared.items():
            if m not in samples.columns:
                continue
            hib = block.get("higher_is_better") if isinstance(block, dict) else None
            out[m] = bool(hib) if hib is not None else catalogue.higher_is_better(m)
    else:
        for col in samples.columns:
            if col in BASE_COLUMNS or col.endswith(_NON_METRIC_SUFFIXES):
                continue
            values = pd.to_numeric(samples[col], errors="coerce")
            if samples[col].notna().sum() and values.notna().sum() < samples[col].notna().sum():
                continue  # text column
            if catalogue.get(col) is None:
                log.warning("%s: metric %r has no known direction; treating higher as better", path, col)
            out[col] = catalogue.higher_is_better(col)
    return {m: out[m] for m in order_metrics(out)}


def number_repeats(names: list[str], sep: str) -> list[str]:
    """Make names unique by suffixing the 2nd, 3rd, ... occurrence of a name with `sep` and its count."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}{sep}{seen[name]}")
    return out


def slugify(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return slug or "x"


def dataset_short_name(spec: str) -> str:
    """'mini' -> 'mini', '/data/CIEBench/' -> 'CIEBench', 'hf:org/name@rev' -> 'name'."""
    if spec.startswith("hf:"):
        return spec[3:].split("@")[0].rstrip("/").split("/")[-1] or spec
    return Path(spec.rstrip("/")).name or spec


__all__ = ["Run", "RunError", "load_run", "load_runs", "assign_labels", "HIGHER_IS_BETTER", "METRIC_ORDER",
           "PRIMARY_ORDER", "PRESERVATION_METRICS", "SUCCESS_METRICS", "metric_title", "order_metrics"]
