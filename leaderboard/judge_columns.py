"""Judge columns of the leaderboard: which judge protocol each run used, its failures by class (never
part of a score), its judge-noise interval, and which runs' order is within judge noise.

Two runs are *within judge noise* when their judge-noise intervals (bootstrap over passes, see
`ciebench.judge.passes`) overlap: asking the judge again could swap them. Runs judged with one pass
have no interval and are never marked.

Run labels hold spaces, parentheses and brackets ("identity (a)", "ip2p [abc1234]"), so the pairs stay
tuples of labels, and the CSV cell `idcs_within_noise_of` is a JSON list of labels: the one encoding
that any label survives."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ciebench.judge.failures import FAILURE_CLASSES
from ciebench.judge.passes import within_noise

JUDGED = "idcs"


def _judge_block(run: Any) -> dict[str, Any]:
    return (run.summary.get("metrics") or {}).get(JUDGED) or {}


def within_noise_pairs(intervals: dict[str, dict[str, Any] | None]) -> list[tuple[str, str]]:
    """The pairs of run labels (each pair in the order of `intervals`) whose judge-noise intervals
    ({"low", "high"}, None for none) overlap."""
    labels = list(intervals)
    return [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:] if within_noise(intervals[a], intervals[b])]


def add_judge_columns(frame: pd.DataFrame, runs: list) -> pd.DataFrame:
    """`judge_protocol`, `judge_protocol_hash`, `idcs_failures_<class>`, `idcs_noise_low/high` and
    `idcs_within_noise_of` (a JSON list of labels: `json.loads` reads it back) for each row of `frame` (one
    per run, by label)."""
    if JUDGED not in frame.columns:
        return frame
    by_label = {r.label: r for r in runs}
    blocks = {label: _judge_block(run) for label, run in by_label.items()}
    extra: dict[str, list] = {"judge_protocol": [], "judge_protocol_hash": [], "idcs_noise_low": [],
                              "idcs_noise_high": [], "idcs_within_noise_of": [], "judge_canary_agreement": [],
                              "judge_canary_warning": []}
    canary = {r.label: r.summary.get("judge_canaries") or {} for r in runs}
    for c in FAILURE_CLASSES:
        extra[f"idcs_failures_{c}"] = []
    near: dict[str, list[str]] = {label: [] for label in frame["run"]}
    for a, b in within_noise_pairs({label: blocks.get(label, {}).get("judge_noise") for label in frame["run"]}):
        near[a].append(b)
        near[b].append(a)
    for label in frame["run"]:
        b = blocks.get(label, {})
        noise = b.get("judge_noise")
        extra["judge_protocol"].append(b.get("protocol", ""))  # older runs did not record it
        extra["judge_protocol_hash"].append(b.get("protocol_hash", ""))
        extra["idcs_noise_low"].append(noise["low"] if noise else float("nan"))
        extra["idcs_noise_high"].append(noise["high"] if noise else float("nan"))
        extra["idcs_within_noise_of"].append(json.dumps(near[label], ensure_ascii=False))
        c_info = canary.get(label, {})
        extra["judge_canary_agreement"].append(c_info.get("agreement") if c_info.get("agreement") is not None
                                               else float("nan"))
        extra["judge_canary_warning"].append(c_info.get("warning") or "")
        failures = b.get("failures_by_class") or {}
        for c in FAILURE_CLASSES:
            extra[f"idcs_failures_{c}"].append(int(failures.get(c, 0)))
    out = frame.copy()
    cols = list(out.columns)
    insert_at = cols.index("run_dir") if "run_dir" in cols else len(cols)
    for name, values in extra.items():
        out.insert(insert_at, name, values)
        insert_at += 1
    return out


def _code(text: str) -> str:
    """`text` as a Markdown code span; backticks (which would end it) become apostrophes."""
    return "`" + " ".join(str(text).split()).replace("`", "'") + "`"


def judge_notes(frame: pd.DataFrame) -> list[str]:
    """Markdown lines under a table: protocols used, failures by class, pairs within judge noise. Text
    from runs (names, protocol names, warnings) is escaped here; the lines are Markdown as they are."""
    from .tables import md_escape

    if "judge_protocol" not in frame.columns:
        return []
    lines = []
    protocols = sorted({p for p in frame["judge_protocol"] if p})
    if protocols:
        lines.append(f"IDCS judge protocol: {', '.join(_code(p) for p in protocols)}"
                     + (" (**different protocols: IDCS values are not comparable**)" if len(protocols) > 1 else "") + ".")
    fail_cols = [c for c in frame.columns if c.startswith("idcs_failures_")]
    counted = [(r["run"], {c[len("idcs_failures_"):]: int(r[c]) for c in fail_cols if int(r[c])})
               for _, r in frame.iterrows()]
    counted = [(run, f) for run, f in counted if f]
    if counted:
        lines.append("IDCS failures by class (not scored): " + "; ".join(
            f"{md_escape(run)}: " + ", ".join(f"{k} {v}" for k, v in f.items()) for run, f in counted) + ".")
    for _, r in frame.iterrows():
        if r.get("judge_canary_warning"):
            lines.append(f"**Warning ({md_escape(r['run'])}):** {md_escape(r['judge_canary_warning'])}.")
    # the pairs from the intervals themselves (tuples of labels), never from the CSV cell's text
    intervals = {r["run"]: ({"low": r["idcs_noise_low"], "high": r["idcs_noise_high"]}
                            if not (pd.isna(r["idcs_noise_low"]) or pd.isna(r["idcs_noise_high"])) else None)
                 for _, r in frame.iterrows()}
    pairs = sorted(tuple(sorted(pair)) for pair in within_noise_pairs(intervals))
    if pairs:
        lines.append("Within judge noise (their order could swap if the judge were asked again): "
                     + "; ".join(f"{md_escape(a)} ~ {md_escape(b)}" for a, b in pairs) + ".")
    return lines
