"""Leaderboard judge columns: protocol, failure classes in their own columns, pairs within judge noise."""
from __future__ import annotations

import json

import pandas as pd

from ciebench.io import atomic_write_json
from ciebench.judge import FAILURE_CLASSES
from ciebench.leaderboard import leaderboard, write_leaderboard
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
    assert lb.loc["identity", "idcs_within_noise_of"] == '["noisy"]'  # a JSON list of labels
    assert lb.loc["noisy", "idcs_within_noise_of"] == '["identity"]' and lb.loc["damaged", "idcs_within_noise_of"] == "[]"
    assert (lb.loc["damaged", "idcs_noise_low"], lb.loc["damaged", "idcs_noise_high"]) == (4.0, 4.2)
    (table,) = group_runs([a, b, c])
    md = markdown_table(table)
    assert "Within judge noise" in md and "identity ~ noisy" in md and "content_filter 2" in md and "`idcs-v1`" in md


def test_mixed_protocols_are_flagged(tmp_path):
    a = _judged(build_run(tmp_path, "a", "identity", metrics=["idcs"]), "idcs-v1", (3.0, 3.4), {})
    b = _judged(build_run(tmp_path, "b", "noisy", metrics=["idcs"]), "idcs-paper", (3.0, 3.4), {})
    (table,) = group_runs([a, b])
    assert "different protocols" in markdown_table(table)


def test_within_noise_survives_labels_with_spaces_and_brackets(tmp_path):
    """Labels routinely hold spaces, parentheses and brackets ("identity (a)", "noisy [abc1234]"); the
    CSV cell must parse back to exactly the labels, and the Markdown must name exactly the true pairs."""
    runs_dir = tmp_path / "runs"
    a = _judged(build_run(runs_dir, "a", "identity", metrics=["idcs"]), "idcs-v1", (3.0, 3.4), {})
    b = _judged(build_run(runs_dir, 'b; "c"', "identity", metrics=["idcs"]), "idcs-v1", (5.0, 5.2), {})
    c = _judged(build_run(runs_dir, "c", "noisy", metrics=["idcs"]), "idcs-v1", (3.3, 3.6), {})
    d = _judged(build_run(runs_dir, "d", "noisy", metrics=["idcs"]), "idcs-v1", (5.1, 5.5), {})
    for run, config_hash in ((c, "abc1234" + "0" * 57), (d, "def5678" + "0" * 57)):  # same editor, two configs
        spec = json.loads((run / "spec.json").read_text())
        atomic_write_json(run / "spec.json", {**spec, "editor_config_hash": config_hash})
    ia, ib, nc, nd = "identity (a)", 'identity (b; "c")', "noisy [abc1234]", "noisy [def5678]"
    # overlapping intervals, by hand: a [3.0, 3.4] ~ c [3.3, 3.6] and b [5.0, 5.2] ~ d [5.1, 5.5]; no others
    truth = {ia: [nc], ib: [nd], nc: [ia], nd: [ib]}
    write_leaderboard([a, b, c, d], tmp_path / "board", plots=False, gallery=False)
    csv = pd.read_csv(tmp_path / "board" / "leaderboard.csv", keep_default_na=False)
    assert sorted(csv["run"]) == sorted(truth)
    assert {r["run"]: json.loads(r["idcs_within_noise_of"]) for _, r in csv.iterrows()} == truth
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    (line,) = [l for l in md.splitlines() if "Within judge noise" in l]
    # before: "(a) ~ noisy; identity ~ noisy; ..." (labels split at spaces)
    assert line.endswith('again): identity (a) ~ noisy \\[abc1234\\]; '
                         'identity (b; &quot;c&quot;) ~ noisy \\[def5678\\].'), line
