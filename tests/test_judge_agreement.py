"""`ciebench judge agreement`: statistics against closed forms and scipy/sklearn, CSV inputs, the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.errors import DataError
from ciebench.judge.agreement import (kappa_rows, load_scores, pair_agreement, quadratic_kappa, ranking_tau, spearman,
                                      spearman_rows)

runner = CliRunner()
A = [1, 2, 3, 4, 5, 5, 3, 2, 4, 1, 3, 5]
B = [1, 3, 3, 4, 4, 5, 2, 2, 5, 2, 3, 4]


def test_kappa_matches_sklearn_and_a_hand_computed_case():
    sklearn = pytest.importorskip("sklearn.metrics")
    assert quadratic_kappa(A, B, 1, 5) == pytest.approx(sklearn.cohen_kappa_score(A, B, weights="quadratic"))
    rng = np.random.default_rng(3)
    for _ in range(5):
        x, y = rng.integers(1, 6, 40), rng.integers(1, 6, 40)
        assert quadratic_kappa(x, y, 1, 5) == pytest.approx(sklearn.cohen_kappa_score(x, y, weights="quadratic"))
    # two categories (0/1 after shifting), by hand: observed disagreement 2/4, expected 2*(2/4*2/4)=1/2 -> 0
    assert quadratic_kappa([1, 1, 2, 2], [1, 2, 1, 2], 1, 2) == pytest.approx(0.0)
    assert quadratic_kappa([1, 2, 3], [1, 2, 3], 1, 3) == pytest.approx(1.0)
    assert quadratic_kappa([3.5, 2.4], [4, 2], 1, 5) == pytest.approx(1.0)  # medians of passes round half up


def test_spearman_and_kendall_match_closed_forms_and_scipy():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]  # no ties: rho = 1 - 6 * sum d^2 / (n (n^2 - 1))
    assert spearman(x, y) == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert spearman(A, B) == pytest.approx(sstats.spearmanr(A, B).statistic)

    class P:  # the ranking only needs the systems' means
        def __init__(self, a, b):
            self.mean_a, self.mean_b = a, b

    # 3 systems, one discordant pair of 3 -> tau = (2 - 1) / 3
    assert ranking_tau([P(1.0, 1.0), P(2.0, 3.0), P(3.0, 2.0)]) == pytest.approx(1 / 3)


def test_the_vectorised_bootstrap_statistics_equal_the_scalar_ones():
    rng = np.random.default_rng(0)
    x, y = rng.integers(1, 6, (50, 12)).astype(float), rng.integers(1, 6, (50, 12)).astype(float)
    x[0] = 3.0  # a constant row: Spearman undefined
    rows = spearman_rows(x, y)
    assert math.isnan(rows[0]) and rows[1:] == pytest.approx([sstats.spearmanr(a, b).statistic for a, b in zip(x[1:], y[1:])])
    assert kappa_rows(x, y, 1, 5) == pytest.approx([quadratic_kappa(a, b, 1, 5) for a, b in zip(x, y)], nan_ok=True)


def _run(folder, values, seeds=None):
    folder.mkdir()
    rows = [{"sample_id": sid, "seed": 0 if seeds is None else seeds[i], "status": "ok", "idcs": v}
            for i, (sid, v) in enumerate(values.items())]
    pd.DataFrame(rows).to_csv(folder / "samples.csv", index=False)
    return folder


def test_runs_and_human_ratings_through_the_cli(tmp_path):
    ids = ["007", "7", "NA", "a", "b", "c", "d", "e", "f", "g", "h", "i"]
    judge1 = _run(tmp_path / "j1", dict(zip(ids, A)))
    judge2 = _run(tmp_path / "j2", {**dict(zip(ids, B)), "i": float("nan")})  # one failed verdict: not compared
    p = pair_agreement(load_scores(judge1), load_scores(judge2))
    assert p.n == 11  # ids such as "007", "7" and "NA" stay distinct strings
    assert p.spearman == pytest.approx(sstats.spearmanr(A[:11], B[:11]).statistic)
    lo, hi = p.spearman_ci
    assert lo <= p.spearman <= hi and p.kappa_ci[0] <= p.kappa <= p.kappa_ci[1]

    human = tmp_path / "human.csv"
    lines = ["sample_id,seed,rater,score"]
    for sid, v in zip(ids, B):
        lines += [f"{sid},0,r1,{v}", f"{sid},0,r2,{v}", f"{sid},0,r3,{min(5, v + 1)}"]  # median = v
    human.write_text("\n".join(lines) + "\n")
    h = load_scores(human)
    assert h.values.loc[("007", 0)] == B[0] and len(h.values) == 12
    other = _run(tmp_path / "j1b", dict(zip(ids, [min(5, v + 1) for v in A])))  # a better system
    human2 = tmp_path / "human2.csv"  # the raters saw that system's predictions too, and liked them more
    human2.write_text("sample_id,seed,rater,score\n" + "".join(f"{sid},0,r1,{min(5, v + 1)}\n" for sid, v in zip(ids, B)))
    result = runner.invoke(app, ["judge", "agreement", str(judge1), str(human), str(other), str(human2),
                                 "--out", str(tmp_path / "agree")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "agree" / "agreement.json").read_text())
    assert [r["n"] for r in report["pairs"]] == [12, 12]
    assert report["pairs"][0]["kappa_quadratic"] == pytest.approx(quadratic_kappa(A, B, 1, 5))
    assert report["kendall_tau_ranking"] == pytest.approx(1.0)  # both systems ordered alike by both judges
    assert (tmp_path / "agree" / "scatter.png").stat().st_size > 1000 and "Kendall tau" in result.output

    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,seed,rater,score\na,0,r1,five\n")
    with pytest.raises(DataError, match="bad.csv:2"):
        load_scores(bad)
    result = runner.invoke(app, ["judge", "agreement", str(judge1), str(tmp_path / "missing")])
    # issue 17 §4: a path that is not a run folder exits 2 in every command (RunFolderError)
    assert result.exit_code == 2 and "no such run folder" in result.output


def test_scores_outside_the_scale_are_refused_not_clipped_into_it():
    # ratings on a 0..9 sheet against a 1..5 judge: clipped, kappa would read 0.96 instead of sklearn's 0.81
    from ciebench.judge.agreement import Scores

    index = pd.MultiIndex.from_tuples([(f"s{i}", 0) for i in range(8)], names=["sample_id", "seed"])
    judge = Scores("judge", pd.Series([1, 1, 1, 3, 5, 5, 5, 5], index=index, dtype=float))
    humans = Scores("humans.csv", pd.Series([0, 0, 1, 3, 7, 9, 9, 9], index=index, dtype=float))
    with pytest.raises(DataError, match=r"humans.csv: 6 score\(s\) outside the scale 1..5 \(sample s0 seed 0: 0"):
        pair_agreement(judge, humans)
    assert pair_agreement(judge, humans, lo=0, hi=9).n == 8  # on the scale both use, it is measured
