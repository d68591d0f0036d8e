"""The metric catalogue is the one source of metric facts: every column the scorer writes and every
metric column the leaderboard, its plots and the gallery show has an entry, `ciebench metrics` lists
them with their direction, and the benchmark boards sort by the catalogue's direction.

The expected directions are stated here independently of the catalogue (what each metric measures:
PSNR, SSIM, CLIP, locality and the judge scores are better high; LPIPS and MSE are distances)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import ciebench
from ciebench.cli import app
from ciebench.metrics import catalogue
from ciebench.results import BASE_COLUMNS, read_samples

from tests.support.fixtures_models import CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1
from tests.support.leaderboard_runs import build_run

runner = CliRunner()

# What each metric measures decides its direction: distances are better low, similarities and scores high.
EXPECTED_HIGHER = {"psnr": True, "ssim": True, "lpips": False, "mse": False, "clip": True,
                   "locality_precision": True, "locality_recall": True, "locality_f1": True, "idcs": True}
# Columns the scorer writes that are not metrics (status, text and bookkeeping of a row or of IDCS).
NOT_METRICS = {"note", "file_stem", "idcs_status", "idcs_error", "idcs_sentence", "idcs_failure", "idcs_passes",
               "idcs_protocol"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    """Stand-in runs on `mini` with every metric but LPIPS: the identity editor and a damaging one."""
    root = tmp_path_factory.mktemp("catalogue_runs")
    return [build_run(root, name, name) for name in ("identity", "damaged")]


def test_every_column_the_scorer_writes_is_catalogued_with_its_direction(tmp_path: Path):
    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()
    pred = tmp_path / "pred"
    pred.mkdir()
    rows = list(ciebench.load_dataset("mini"))[:2]
    for r in rows:
        r["image"].convert("RGB").save(pred / f"{r['id']}.png")
    out = tmp_path / "scored"
    result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out", str(out),
                                 "--limit", "2"])
    assert result.exit_code == 0, result.output
    written = [c for c in pd.read_csv(out / "samples.csv").columns if c not in BASE_COLUMNS and c not in NOT_METRICS]
    assert set(written) == set(EXPECTED_HIGHER) - {"idcs"}  # every region metric, no judge given
    summary = json.loads((out / "summary.json").read_text())
    for column in written:
        info = catalogue.get(column)
        assert info is not None, f"the scorer writes {column!r}, which has no catalogue entry"
        assert info.region and info.higher_is_better is EXPECTED_HIGHER[column]
        assert summary["metrics"][column]["higher_is_better"] is EXPECTED_HIGHER[column]


def test_catalogue_facts_and_the_two_name_resolvers():
    from ciebench.metrics.modules import (BackgroundLPIPS, BackgroundMSE, BackgroundPSNR, BackgroundSSIM,
                                          EditLocality, RegionCLIPScore)
    from ciebench.metrics.region import region_metric_names
    from ciebench.scoring import MetricNameError, ScoreOptions, resolve_metrics

    for name, higher in EXPECTED_HIGHER.items():
        assert catalogue.CATALOGUE[name].higher_is_better is higher, name
    assert catalogue.CATALOGUE["idcs"].family == catalogue.JUDGE and catalogue.CATALOGUE["idcs"].needs == "--judge"
    # torchmetrics classes carry the same direction
    for cls, name in ((BackgroundPSNR, "psnr"), (BackgroundSSIM, "ssim"), (BackgroundLPIPS, "lpips"),
                      (BackgroundMSE, "mse"), (RegionCLIPScore, "clip"), (EditLocality, "locality_f1")):
        assert cls.higher_is_better is EXPECTED_HIGHER[name], cls
    # region_metric_names: user names -> the region metrics that compute them
    assert region_metric_names(["locality_f1", "mse"]) == ("mse", "locality")
    # resolve_metrics: user names -> (columns scored, whether IDCS is judged)
    # in the catalogue's order and once each, whatever order and repeats were asked for
    assert resolve_metrics(ScoreOptions(metrics=("locality", "psnr", "psnr"))) == (
        ["psnr", "locality_precision", "locality_recall", "locality_f1"], False)
    assert resolve_metrics(ScoreOptions(metrics=("idcs", "clip"), judge="qwen")) == (["clip"], True)
    with pytest.raises(MetricNameError, match="Did you mean 'lpips'"):
        resolve_metrics(ScoreOptions(metrics=("lpip",)))
    # one fact per name: registering other facts under a known name is refused, the same facts are a no-op
    catalogue.register(catalogue.CATALOGUE["psnr"])
    with pytest.raises(catalogue.CatalogueError, match="psnr"):
        catalogue.register(catalogue.MetricInfo("psnr", "PSNR", False, catalogue.PIXEL, "wrong direction"))


def test_ciebench_metrics_lists_every_metric_with_its_direction():
    result = runner.invoke(app, ["metrics"])
    assert result.exit_code == 0, result.output
    listed = {}
    for line in result.output.splitlines():
        m = re.match(r"^  (.+?)\s+(higher|lower) is better\b", line)
        if m:
            listed[m.group(1)] = m.group(2) == "higher"
    for name, higher in EXPECTED_HIGHER.items():
        assert listed.get(name) is higher, (name, result.output)
    assert set(listed) == set(catalogue.CATALOGUE)  # headlines of the benchmarks too
    assert re.search(r"^  idcs .*\(needs --judge\)$", result.output, re.M)
    assert re.search(r"^  locality_f1 .*higher is better\s+locality\s", result.output, re.M)  # its --metrics name


def test_every_metric_the_leaderboard_shows_is_catalogued(two_runs, tmp_path: Path):
    from ciebench.leaderboard import group_runs
    from ciebench.leaderboard.gallery import write_gallery
    from ciebench.leaderboard.plots import choose_tradeoff_axes
    from ciebench.leaderboard.tables import markdown_table

    tables = group_runs(two_runs)
    shown = set()
    for table in tables:
        for metric, higher in table.metrics.items():
            assert catalogue.get(metric) is not None, metric
            assert higher is EXPECTED_HIGHER[metric], metric
            shown.add(metric)
        # table order: success (idcs, clip), then preservation, then locality
        assert list(table.metrics)[:3] == ["idcs", "clip", "psnr"]
        assert table.primary == "idcs"
        md = markdown_table(table)
        assert "| IDCS ↑ |" in md and "| MSE ↓ |" in md and "| PSNR (dB) ↑ |" in md
        assert choose_tradeoff_axes(table.metrics, table.leaderboard) == ("psnr", "idcs")
        assert set(table.pairs["metric"]) <= set(EXPECTED_HIGHER)
        for _, pair in table.pairs.iterrows():
            assert bool(pair["higher_is_better"]) is EXPECTED_HIGHER[pair["metric"]]
    assert shown == set(EXPECTED_HIGHER) - {"lpips"}  # the stand-in runs have no LPIPS

    page = write_gallery(two_runs[:1], tmp_path / "gallery")
    data = re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>', page.read_text(), re.S)
    metrics = json.loads(data.group(1))["metrics"]
    assert [m["name"] for m in metrics][:2] == ["idcs", "clip"]
    for m in metrics:
        assert m["higher"] is EXPECTED_HIGHER[m["name"]] and m["title"] == catalogue.CATALOGUE[m["name"]].title


def test_a_registered_metric_gets_its_direction_and_title_everywhere(two_runs, tmp_path: Path):
    """A plugin's metric: one `register` call, and the leaderboard sorts, titles and orders it."""
    from ciebench.leaderboard import group_runs
    from ciebench.leaderboard.tables import markdown_table

    name = "distortion_test"
    catalogue.register(catalogue.MetricInfo(name, "Distortion (test)", False, catalogue.PERCEPTUAL,
                                            "a plugin's distance", display=5, primary=-1))
    try:
        runs = [Path(shutil.copytree(run, tmp_path / run.name)) for run in two_runs]
        for run in runs:  # the plugin column: its values are the run's mse; its summary declares no direction
            frame = read_samples(run)
            frame[name] = frame["mse"]
            frame.to_csv(run / "samples.csv", index=False)
            (run / "summary.json").write_text(json.dumps({k: v for k, v in json.loads(
                (run / "summary.json").read_text()).items() if k != "metrics"}))
        (table,) = group_runs(runs)
        assert table.metrics[name] is False and list(table.metrics)[:3] == ["idcs", name, "clip"]  # display=5
        assert table.primary == name  # primary=-1: before idcs in the fallback order
        assert list(table.leaderboard["run"]) == ["identity", "damaged"]  # lower distortion first
        assert "Distortion (test) ↓" in markdown_table(table)
    finally:
        del catalogue.CATALOGUE[name]


def test_every_benchmark_headline_is_catalogued_and_boards_sort_by_its_direction(tmp_path: Path):
    from ciebench.benchmarks import BENCHMARKS, get_benchmark
    from ciebench.leaderboard.benchmark_board import benchmark_tables

    for name in BENCHMARKS.names():
        bench = get_benchmark(name)
        if bench.pipeline != "judge":
            continue  # served by the dataset pipeline: its numbers are the catalogued region/judge metrics
        info = catalogue.get(bench.headline)
        assert info is not None and info.family == catalogue.BENCHMARK, (name, bench.headline)
        assert info.higher_is_better  # every official headline is a score or an accuracy

    def run(folder: str, headline: str, value: float) -> Path:
        path = tmp_path / folder
        path.mkdir()
        (path / "summary.json").write_text(json.dumps({
            "benchmark": {"name": "toy"}, "headline": {"name": headline, "value": value},
            "official": [{"-": "Overall", "Accuracy": value}], "run": {"editor": {"name": folder}}}))
        return path

    paths = [run("low", "Overall Accuracy", 0.2), run("high", "Overall Accuracy", 0.7)]
    main, _ = benchmark_tables(paths)["toy"]
    assert list(main["run"]) == ["high (high)", "low (low)"]
    catalogue.register(catalogue.MetricInfo("toy error", "Toy error", False, catalogue.BENCHMARK, "lower is better"))
    try:
        paths = [run("worse", "toy error", 0.7), run("better", "toy error", 0.2)]
        main, _ = benchmark_tables(paths)["toy"]
        assert list(main["run"])[:2] == ["better (better)", "worse (worse)"]
    finally:
        del catalogue.CATALOGUE["toy error"]
