"""A judge score outside its benchmark's scale is a judge error, never a score, whether the judge
just gave it or it is read back from a verdict file (ciebench's or an official table); and a case
with a judge error adds nothing to any mean (RISE, UniREditBench, KRIS), so every dimension mean
covers the same cases and coverage counts only scored ones. The official scripts check nothing: a
reply "Final Score: 10" on a 1-5 scale would reach the headline as a percentage above 100."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from ciebench.benchmarks.base import Case
from ciebench.benchmarks.gedit import PQ, SC, GEditBench
from ciebench.benchmarks.imgedit import SCORE, ImgEditBasic, item_score
from ciebench.benchmarks.judging import BenchJudge
from ciebench.benchmarks.kris import IF, KP, VC, VQ, KrisBench
from ciebench.benchmarks.rise import AC, IR, TEMPORAL, VP, RiseBench
from ciebench.benchmarks.run import aggregate
from ciebench.benchmarks.session import reaggregate
from ciebench.benchmarks.unireditbench import R, UniREditBench
from ciebench.benchmarks.verdicts import read_verdict_file
from ciebench.status import Status


class ScriptedJudge(BenchJudge):
    """BenchJudge with the judge's replies given per dimension (no client, no prompt file)."""

    def __init__(self, benchmark, replies: dict[str, str]):
        self.benchmark, self.replies = benchmark, replies

    def _ask(self, case, call, refresh=False):
        return self.replies[call.dimension], None


def _case(category: str, n: int = 0, **extra) -> Case:
    return Case(id=str(n), category=category, output_folder=category, images=(Path("s.png"),), turns=("edit",),
                categories=(category,), **extra)


def test_an_off_scale_judge_score_is_a_judge_error_not_a_score(tmp_path):
    bench = UniREditBench()
    (tmp_path / "gt.png").write_bytes(b"read by the judge client only")
    case = _case("physics", ground_truth_image=tmp_path / "gt.png")
    judged = ScriptedJudge(bench, {AC: "Final Score: 5", R: "Final Score: 10", VP: "Final Score: 5"}).judge(
        case, tmp_path / "out.png")
    assert judged.dims == {AC: 5.0, R: None, VP: 5.0}
    assert "Reasoning scored 10.0, outside the benchmark's 1-5 scale" in judged.errors[R]
    fine = ScriptedJudge(bench, {AC: "Final Score: 5", R: "Final Score: 1", VP: "Final Score: 3"}).judge(
        case, tmp_path / "out.png")
    assert fine.errors == {} and fine.dims == {AC: 5.0, R: 1.0, VP: 3.0}


def test_rise_checks_the_mapped_scale():
    bench = RiseBench()
    normal, logical = _case(TEMPORAL), _case("logical_reasoning", 1, flags=frozenset({"logical"}))
    assert ScriptedJudge(bench, {}).benchmark.off_scale(bench.map_scores(normal, {IR: 0.0}))  # 0 is below 1
    assert not bench.off_scale(bench.map_scores(logical, {IR: 0.0, AC: 7.0}))  # 0/1 judged, mapped to 1 / 5


def test_imgedit_criteria_outside_one_to_five_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'Prompt Compliance' scored 10, outside the 1-5 scale"):
        item_score("Prompt Compliance: 10\nVisual Naturalness: 9\nPhysical & Detail Integrity: 8")
    assert item_score("A: 5\nB: 1") == 3.0
    judged = ScriptedJudge(ImgEditBasic(), {SCORE: "A: 1\nB: 9"}).judge(_case("add"), tmp_path / "out.png")
    assert judged.dims == {SCORE: None} and "scored 9, outside the 1-5 scale" in judged.errors[SCORE]


def _rows(bench, cases_dims: list[tuple[Case, str, dict]]) -> list[dict]:
    return [bench.verdict_row(case, status, dims) for case, status, dims in cases_dims]


@pytest.mark.parametrize("bench, good, bad", [
    (RiseBench(), {AC: 5.0, IR: 4.0, VP: 5.0}, {AC: 5.0, IR: 0.0, VP: 5.0}),
    (UniREditBench(), {AC: 5.0, R: 4.0, VP: 5.0}, {AC: 5.0, R: 10.0, VP: 5.0}),
    (KrisBench(), {VC: 5.0, IF: 4.0, VQ: 3.0}, {VC: 7.0, IF: 5.0, VQ: 5.0}),
    (ImgEditBasic(), {SCORE: 4.0}, {SCORE: 9.0}),
    (GEditBench(), {SC: 6.0, PQ: 9.0}, {SC: 25.0, PQ: 9.0}),
    (GEditBench(), {SC: 6.0, PQ: 9.0}, {SC: math.nan, PQ: 9.0}),
])
def test_verdicts_read_back_are_checked_and_the_bad_case_adds_nothing(bench, good, bad):
    category = {"risebench": TEMPORAL, "unireditbench": "physics", "kris": "count_change", "imgedit": "add",
                "gedit": "color_alter"}[bench.name]
    only_good = aggregate(bench, _rows(bench, [(_case(category, 0), Status.OK, good)]))
    both = aggregate(bench, _rows(bench, [(_case(category, 0), Status.OK, good), (_case(category, 1), Status.OK, bad)]))
    assert both["official"] == only_good["official"] or _same_but_counts(both["official"], only_good["official"])
    assert both["headline"]["value"] == only_good["headline"]["value"]
    assert both["ours"]["status_counts"] == {Status.JUDGE_ERROR: 1, Status.OK: 1}
    assert both["ours"]["scored"] == 1 and both["ours"]["coverage"] == 0.5


def _same_but_counts(a: list[dict], b: list[dict]) -> bool:
    """Tables equal except their per-row case counts (a judge error is a case of its group)."""
    strip = lambda rows: [{k: v for k, v in r.items() if k != "n"} for r in rows]  # noqa: E731
    return strip(a) == strip(b)


def test_kris_judge_errors_are_not_scored_and_their_partial_scores_stay_out():
    bench = KrisBench()
    good = (_case("biology", 0), Status.OK, {VC: 5.0, IF: 5.0, VQ: 5.0, KP: 5.0})
    partial = [(_case("biology", n), Status.JUDGE_ERROR, {VC: 1.0, VQ: 1.0, IF: None, KP: None}) for n in (1, 2, 3)]
    result = aggregate(bench, _rows(bench, [good, *partial]))
    overall = result["official"][0]
    assert overall["Visual Consistency"] == 100.0 and overall["Visual Quality"] == 100.0  # not (100 + 3 x 0) / 4
    assert overall["Score"] == 100.0 and overall["n"] == 1
    assert result["ours"]["scored"] == 1 and result["ours"]["coverage"] == 0.25


def test_unireditbench_drops_every_dimension_of_a_failed_case():
    bench = UniREditBench()
    rows = _rows(bench, [(_case("physics", 0), Status.OK, {AC: 5.0, R: 5.0, VP: 5.0}),
                         (_case("physics", 1), Status.JUDGE_ERROR, {AC: 1.0, R: None, VP: 1.0})])
    table = {r["-"]: r["Score-Origin"] for r in aggregate(bench, rows)["official"]}
    assert table[f"Overall_{AC}"] == 5.0 and table[f"Overall_{VP}"] == 5.0  # not (5 + 1) / 2


def test_the_official_gedit_table_with_nan_or_off_scale_scores(tmp_path):
    table = tmp_path / "MODEL_combined_gpt_score.csv"
    header = "source_image,edited_image,instruction,sementics_score,quality_score,intersection_exist,instruction_language"
    lines = [f"s.png,out/fullset/color_alter/en/{k}.png,do,{sc},{pq},False,en" for k, (sc, pq) in
             enumerate([("6", "9"), ("nan", "9"), ("25", "9"), ("8", "inf")])]
    table.write_text("\n".join([header, *lines]) + "\n")
    rows = list(read_verdict_file(GEditBench(), table))
    summary = reaggregate(GEditBench(), table, tmp_path / "re")
    color = next(r for r in summary["official"] if r["group"] == "color_alter" and r["language"] == "en"
                 and r["subset"] == "fullset")
    assert color["semantics"] == 6.0 and color["quality"] == 9.0 and color["overall"] == pytest.approx(math.sqrt(54))
    assert summary["ours"]["scored"] == 1 and summary["ours"]["status_counts"] == {Status.JUDGE_ERROR: 3, Status.OK: 1}
    assert len(rows) == 4
