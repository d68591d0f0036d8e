"""Coverage-aware ranking and the "tied with the best" mark: a run without any value of the primary
metric (e.g. one not judged) takes no part in the shared samples, and the best run a tie is tested
against is rank 1 (best on the shared samples), never a partial run's own easier mean. A metric
whose mean is infinite for some run (PSNR of an untouched sample) is ordered by mean per-sample rank,
and a run significantly better than the run called best is never marked tied with it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ciebench.leaderboard import group_runs
from ciebench.leaderboard.tables import index_frame, markdown_table

COLUMNS = ["sample_id", "seed", "edit_type", "status", "error", "note", "prediction", "prediction_sha256",
           "edit_seconds", "file_stem"]


def _run(root: Path, name: str, values: dict[str, dict[str, float]], lower: tuple[str, ...] = ()) -> Path:
    """A run folder with the given per-sample values ({metric: {sample_id: value}}), NaN = none; the
    metrics in `lower` are lower-is-better."""
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
    (run / "summary.json").write_text(json.dumps({"metrics": {m: {"higher_is_better": m not in lower} for m in metrics},
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


def test_an_infinite_mean_does_not_decide_the_order(tmp_path: Path):
    # PSNR (higher is better) on 4 samples; A leaves s0 untouched (inf) and is worst everywhere else
    inf = math.inf
    values = {"A": [inf, 10.0, 10.0, 10.0], "B": [30.0, 30.0, 20.0, 20.0], "C": [30.0, 20.0, 30.0, 15.0]}
    runs = [_run(tmp_path, n, {"psnr": {f"s{i}": v for i, v in enumerate(vals)}}) for n, vals in values.items()]
    table = group_runs(runs)[0]
    board = table.leaderboard.set_index("run")
    # per-sample ranks by hand (1 = best, ties averaged; inf is the best value):
    #   s0: A 1, B 2.5, C 2.5   s1: B 1, C 2, A 3   s2: C 1, B 2, A 3   s3: B 1, C 2, A 3
    expected = {"A": (1 + 3 + 3 + 3) / 4, "B": (2.5 + 1 + 2 + 1) / 4, "C": (2.5 + 2 + 1 + 2) / 4}
    assert expected == {"A": 2.5, "B": 1.625, "C": 1.875}
    # the same by scipy's average ranks (negated: rankdata ranks ascending)
    from scipy.stats import rankdata
    matrix = np.array(list(values.values())).T
    by_scipy = rankdata(-matrix, axis=1, method="average").mean(axis=0)
    assert dict(zip(values, by_scipy)) == expected
    assert list(table.leaderboard["run"]) == ["B", "C", "A"]
    assert [int(board.loc[r, "rank"]) for r in "BCA"] == [1, 2, 3]
    assert set(board["rank_basis"]) == {"mean_rank"}
    assert {r: board.loc[r, "rank_value"] for r in "ABC"} == expected
    # the published means are untouched: A's is still inf
    assert board.loc["A", "psnr"] == inf and board.loc["B", "psnr"] == 25.0
    md = markdown_table(table)
    assert "PSNR (dB) is ranked by mean per-sample rank" in md and "a mean is infinite" in md
    assert index_frame([table]).loc[0, "ranked_by_mean_rank"] == "psnr"


def test_an_infinite_mean_of_a_lower_is_better_metric_is_ordered_by_rank(tmp_path: Path):
    # lower is better: X is inf (worst) on s0 and best on s1, s2; Y is 2 everywhere
    inf = math.inf
    x = _run(tmp_path, "X", {"err": {"s0": inf, "s1": 1.0, "s2": 1.0}}, lower=("err",))
    y = _run(tmp_path, "Y", {"err": {"s0": 2.0, "s1": 2.0, "s2": 2.0}}, lower=("err",))
    board = group_runs([x, y])[0].leaderboard.set_index("run")
    # ranks (1 = lowest): s0 Y 1, X 2; s1 X 1, Y 2; s2 X 1, Y 2 -> X 4/3, Y 5/3
    assert board.loc["X", "rank"] == 1 and board.loc["Y", "rank"] == 2
    assert math.isclose(board.loc["X", "rank_value"], 4 / 3) and math.isclose(board.loc["Y", "rank_value"], 5 / 3)


def test_finite_means_still_rank_by_mean(tmp_path: Path):
    # mean order (A 100/3 > B 1) and mean-rank order (B wins 2 of 3 samples) disagree: means decide
    a = _run(tmp_path, "A", {"psnr": {"s0": 100.0, "s1": 0.0, "s2": 0.0}})
    b = _run(tmp_path, "B", {"psnr": {"s0": 1.0, "s1": 1.0, "s2": 1.0}})
    table = group_runs([a, b])[0]
    board = table.leaderboard.set_index("run")
    assert board.loc["A", "rank"] == 1 and board.loc["B", "rank"] == 2
    assert math.isclose(board.loc["A", "rank_value"], 100 / 3) and board.loc["B", "rank_value"] == 1.0
    assert set(board["rank_basis"]) == {"mean"}
    assert "per-sample rank" not in markdown_table(table)
    assert index_frame([table]).loc[0, "ranked_by_mean_rank"] == ""


def test_one_untouched_sample_does_not_make_a_damaged_run_best(tmp_path: Path):
    """The auditor's CIEBench repro in numbers: A returns sample 0 unchanged (PSNR inf) and adds
    sigma-40 noise elsewhere (about 16 dB), B adds sigma-3 noise everywhere (about 43 dB)."""
    rng = np.random.default_rng(0)
    ids = [f"s{i:02d}" for i in range(20)]
    a = {s: (math.inf if i == 0 else float(16.5 + rng.normal(0, 0.3))) for i, s in enumerate(ids)}
    b = {s: float(43.4 + rng.normal(0, 0.3)) for s in ids}
    table = group_runs([_run(tmp_path, "A", {"psnr": a}), _run(tmp_path, "B", {"psnr": b})])[0]
    board = table.leaderboard.set_index("run")
    pair = table.pairs.iloc[0]
    assert bool(pair["significant"]) and pair["better"] == "B"  # the paired test's verdict
    # B is better on 19 of 20 samples: mean ranks B 1.05, A 1.95
    assert board.loc["B", "rank"] == 1 and board.loc["A", "rank"] == 2
    assert math.isclose(board.loc["B", "rank_value"], 1.05) and math.isclose(board.loc["A", "rank_value"], 1.95)
    assert bool(board.loc["B", "psnr_tied_best"]) is True and bool(board.loc["A", "psnr_tied_best"]) is False
    assert board.loc["A", "psnr"] == math.inf  # the protocol's mean, shown as it is


def test_a_run_significantly_better_than_the_best_is_not_tied(tmp_path: Path):
    # Z has values on s00, s01 only, so the ranking compares the runs there: X 0.9 > Y 0.89 > Z 0.5,
    # X is best. The paired test of X and Y uses all 16 samples they share, where Y is 0.8 better on
    # 14: exact p = 8 / 2^16 (all fourteen 0.8s one sign, the two 0.01s free), Holm x3 -> significant.
    ids = [f"s{i:02d}" for i in range(16)]
    x = {s: 0.9 if i < 2 else 0.1 for i, s in enumerate(ids)}
    y = {s: 0.89 if i < 2 else 0.9 for i, s in enumerate(ids)}
    z = {s: 0.5 for s in ids[:2]}
    table = group_runs([_run(tmp_path, "X", {"idcs": x}), _run(tmp_path, "Y", {"idcs": y}),
                        _run(tmp_path, "Z", {"idcs": z})])[0]
    board = table.leaderboard.set_index("run")
    pairs = table.pairs.set_index(["run_a", "run_b"])
    xy = pairs.loc[("X", "Y")] if ("X", "Y") in pairs.index else pairs.loc[("Y", "X")]
    assert xy["p_value"] == 8 / 2 ** 16 and math.isclose(xy["p_holm"], 3 * 8 / 2 ** 16)
    assert bool(xy["significant"]) and xy["better"] == "Y"
    assert board.loc["X", "rank"] == 1 and bool(board.loc["X", "idcs_tied_best"]) is True
    # before: Y was "tied with the best" although the test says it beats the best
    assert bool(board.loc["Y", "idcs_tied_best"]) is False
    md = markdown_table(table)
    warning = [line for line in md.splitlines() if line.startswith("**Warning:**") and "IDCS" in line]
    assert len(warning) == 1 and "Y is significantly better than X" in warning[0]
    assert "≈" not in md.split("| Y |")[0].splitlines()[-1]  # no ≈ on Y's row
