"""Leaderboard judge columns: protocol, failure classes in their own columns, pairs within judge noise."""
from __future__ import annotations

import json

from ciebench.io import atomic_write_json
from ciebench.judge import FAILURE_CLASSES
from ciebench.leaderboard import leaderboard
from ciebench.leaderboard.tables import group_runs, markdown_table
from tests.support.leaderboard_runs import build_run


def _judged(run, protocol, noise, failures):
    summary = json.loads((run / "summary.json").read_text())
    summary["metrics"]["idcs"].update({"protocol": protocol, "protocol_hash": "h-" + protocol, "passes": 3,
                                       "judge_noise": {"low": noise[0], "high": noise[1], "passes": 3,
                                                       "replicates": 2000},
                                       "failures_by_class": {**{c: 0 for c in FAILURE_CLASSES}, **failures}})
    atomic_write_json(run / "summary.json", summary)
    return run


def test_judge_columns_and_within_noise_marks(tmp_path):
    a = _judged(build_run(tmp_path, "a", "identity", metrics=["psnr", "idcs"]), "idcs-v1", (3.0, 3.4),
                {"content_filter": 2})
    b = _judged(build_run(tmp_path, "b", "noisy", metrics=["psnr", "idcs"]), "idcs-v1", (3.3, 3.6),
                {"rate_limit": 1, "missing_prediction": 1})
    c = _judged(build_run(tmp_path, "c", "damaged", metrics=["psnr", "idcs"]), "idcs-v1", (4.0, 4.2), {})
    # runs are labelled by editor: a = identity, b = noisy, c = damaged
    lb = leaderboard([a, b, c]).set_index("run")
    assert list(lb["judge_protocol"]) == ["idcs-v1"] * 3
    assert lb.loc["identity", "idcs_failures_content_filter"] == 2 and lb.loc["noisy", "idcs_failures_rate_limit"] == 1
    assert lb.loc["noisy", "idcs_failures_missing_prediction"] == 1 and lb.loc["damaged", "idcs_failures_unparsable"] == 0
    assert lb.loc["identity", "idcs_within_noise_of"] == "noisy" and lb.loc["noisy", "idcs_within_noise_of"] == "identity"
    assert lb.loc["damaged", "idcs_within_noise_of"] == ""
    assert (lb.loc["damaged", "idcs_noise_low"], lb.loc["damaged", "idcs_noise_high"]) == (4.0, 4.2)
    (table,) = group_runs([a, b, c])
    md = markdown_table(table)
    assert "Within judge noise" in md and "identity ~ noisy" in md and "content_filter 2" in md and "`idcs-v1`" in md


def test_mixed_protocols_are_flagged(tmp_path):
    a = _judged(build_run(tmp_path, "a", "identity", metrics=["idcs"]), "idcs-v1", (3.0, 3.4), {})
    b = _judged(build_run(tmp_path, "b", "noisy", metrics=["idcs"]), "idcs-paper", (3.0, 3.4), {})
    (table,) = group_runs([a, b])
    assert "different protocols" in markdown_table(table)
