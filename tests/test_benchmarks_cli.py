"""`--benchmark` for the dataset-pipeline benchmarks (CIEBench, Reason-Edit), and usage errors."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from ciebench.cli import app
from tests.support.fixtures_benchmarks import make_rise_plus

runner = CliRunner()


def test_dataset_benchmark_runs_through_the_dataset_pipeline(tmp_path):
    # --benchmark ciebench with a folder (here the embedded mini set) is --dataset <that folder>
    out = tmp_path / "run"
    result = runner.invoke(app, ["evaluate", "--benchmark", "ciebench", "--benchmark-root", "mini", "--editor",
                                 "identity", "--limit", "2", "--metrics", "psnr,mse", "--out", str(out)])
    assert result.exit_code == 0, result.output
    spec = json.loads((out / "spec.json").read_text())
    assert spec["dataset"]["spec"] == "mini" and spec["dataset"]["n"] == 2


def test_usage_errors_name_the_fix(tmp_path):
    result = runner.invoke(app, ["score", "--benchmark", "reason-edit", "--predictions", str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--benchmark-root" in result.output
    result = runner.invoke(app, ["score", "--benchmark", "risebench", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--predictions" in result.output and "--verdicts" in result.output
    result = runner.invoke(app, ["score", "--benchmark", "krs", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Did you mean 'kris'" in result.output
    result = runner.invoke(app, ["score", "--benchmark", "risebench-plus", "--predictions", str(tmp_path),
                                 "--benchmark-root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 3 and "no overall_data.json" in result.output  # the data cannot be used
    make_rise_plus(tmp_path / "rp")
    result = runner.invoke(app, ["score", "--benchmark", "risebench-plus", "--predictions", str(tmp_path),
                                 "--benchmark-root", str(tmp_path / "rp"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--judge-prompts" in result.output


def test_hub_benchmark_offline_names_the_way_out(tmp_path):
    # no --benchmark-root: the real hub path runs and, offline (HF_HUB_OFFLINE=1 in tests), says what to do
    result = runner.invoke(app, ["score", "--benchmark", "risebench", "--predictions", str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 4 and "PhoenixZ/RISEBench" in result.output and "--benchmark-root" in result.output


def test_dataset_pipeline_options_are_refused_for_judge_benchmarks(tmp_path):
    result = runner.invoke(app, ["evaluate", "--benchmark", "risebench", "--benchmark-root", str(tmp_path),
                                 "--editor", "identity", "--seeds", "0,1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--seeds" in result.output


def test_options_a_judge_benchmark_does_not_use_are_refused_not_ignored(tmp_path):
    # a --max-cost that capped nothing would let the user believe the spending was capped
    base = ["--benchmark", "risebench", "--benchmark-root", str(tmp_path), "--out", str(tmp_path / "o")]
    cases = [(["score", "--predictions", str(tmp_path), "--max-cost", "5"], "--max-cost"),
             (["score", "--predictions", str(tmp_path), "--judge-batch"], "--judge-batch"),
             (["score", "--predictions", str(tmp_path), "--judge-passes", "3"], "--judge-passes"),
             (["score", "--predictions", str(tmp_path), "--min-coverage", "0.9"], "--min-coverage"),
             (["score", "--predictions", str(tmp_path), "--dry-run"], "--dry-run"),
             (["evaluate", "--editor", "identity", "--max-cost", "5"], "--max-cost"),
             (["evaluate", "--editor", "identity", "--judge-protocol", "idcs-paper"], "--judge-protocol")]
    for args, flag in cases:
        result = runner.invoke(app, [*args, *base])
        assert result.exit_code == 2 and flag in result.output and "risebench" in result.output, (args, result.output)
    assert not (tmp_path / "o").exists()  # refused before anything ran
