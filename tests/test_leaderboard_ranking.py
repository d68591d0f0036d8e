"""Coverage-aware ranking and the "tied with the best" mark: a run without any value of the primary
metric (e.g. one not judged) takes no part in the shared samples, and the best run a tie is tested
against is rank 1 (best on the shared samples), never a partial run's own easier mean."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ciebench.leaderboard import group_runs

COLUMNS = ["sample_id", "seed", "edit_type", "status", "error", "note", "prediction", "prediction_sha256",
           "edit_seconds", "file_stem"]


def _run(root: Path, name: str, values: dict[str, dict[str, float]]) -> Path:
    """A run folder with the given per-sample values ({metric: {sample_id: value}}), NaN = none."""
    run = root / name
    run.mkdir(parents=True)
    metrics = list(values)
    ids = sorted({s for v in values.values() for s in v})
    rows = [{"sample_id": s, "seed": 0, "edit_type": "t", "status": "ok",
             **{m: values[m].get(s, math.nan) for m in metrics}} for s in ids]
    pd.DataFrame(rows, columns=COLUMNS + metrics).to_csv(run / "samples.csv", index=False)
    protocol = {"name": "cielr", "hash": "h1"}
    (run / "spec.json").write_text(json.dumps({"editor": {"name": name, "config": {}}, "editor_config_hash": name,
                                               "dataset": {"spec": "mini", "revision": "r1", "n": len(ids)},
                                               "protocol": protocol}))
    (run / "summary.json").write_text(json.dumps({"metrics": {m: {"higher_is_better": True} for m in metrics},
                                                  "protocol": protocol}))
    return run


def test_a_run_without_values_does_not_turn_off_coverage_aware_ranking(tmp_path: Path):
    ids = [f"s{i}" for i in range(10)]
    full = {s: 0.9 if i < 5 else 0.5 for i, s in enumerate(ids)}  # mean 0.7, 0.9 on the easy half
    partial = {s: 0.8 for s in ids[:5]}  # only the easy half: own mean 0.8
    psnr = {s: 30.0 for s in ids}
    runs = [_run(tmp_path, "full", {"idcs": full, "psnr": psnr}), _run(tmp_path, "partial", {"idcs": partial, "psnr": psnr}),
            _run(tmp_path, "unjudged", {"psnr": psnr})]
    board = group_runs(runs)[0].leaderboard.set_index("run")
    # before: the unjudged run emptied the shared set, and `partial` ranked first on its own 0.8
    assert board.loc["full", "rank"] == 1 and board.loc["partial", "rank"] == 2
    assert board.loc["full", "rank_value"] == 0.9 and board.loc["partial", "rank_value"] == 0.8
    assert board.loc["full", "rank_n_shared"] == 5
    assert math.isnan(board.loc["unjudged", "rank_value"]) and pd.isna(board.loc["unjudged", "rank"])


def test_tied_with_the_best_is_tested_against_rank_one(tmp_path: Path):
    ids = [f"s{i:02d}" for i in range(20)]
    full = {s: 0.9 if i < 10 else 0.5 for i, s in enumerate(ids)}
    partial = {s: 0.8 for s in ids[:10]}  # 0.1 below `full` on every shared sample
    board = group_runs([_run(tmp_path, "full", {"idcs": full}), _run(tmp_path, "partial", {"idcs": partial})])[0]
    frame = board.leaderboard.set_index("run")
    pair = board.pairs[board.pairs["metric"] == "idcs"].iloc[0]
    # exact sign-flip test over 10 equal differences: p = 2 / 2^10
    assert pair["p_value"] == 2 / 2 ** 10 and bool(pair["significant"]) and pair["better"] == "full"
    assert bool(frame.loc["full", "idcs_tied_best"]) is True
    # before: `partial` was "best" by its own mean 0.8 and got the tie mark although rank 1 beats it
    assert bool(frame.loc["partial", "idcs_tied_best"]) is False
