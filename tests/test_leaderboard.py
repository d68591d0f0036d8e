"""The leaderboard: tables equal a recomputation from samples.csv, paired significance, protocol
separation, plots, and the static gallery (checked in headless Chromium when it is installed)."""
from __future__ import annotations

import json
import math
import re
import shutil
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.leaderboard import (by_edit_type, group_runs, holm, leaderboard, load_run, paired_test,
                                  significance)
from ciebench.leaderboard.gallery import render_html, safe_name, trace_path
from ciebench.leaderboard.plots import editor_styles
from ciebench.leaderboard.significance import sign_flip_test
from ciebench.stats import bootstrap_mean_ci

from tests.support.chromium_cdp import HeadlessChromium, find_chromium
from tests.support.leaderboard_runs import build_standard_runs

CIELR = "cielr__mini"
SMARTEDIT = "smartedit__mini"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return build_standard_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def board(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("board")
    result = CliRunner().invoke(app, ["leaderboard", *map(str, runs.values()), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"run": str, "table": str, "edit_type": str})


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


METRICS = ["idcs", "clip", "psnr", "ssim", "mse", "locality_f1", "locality_precision", "locality_recall"]


def _recompute(samples: pd.DataFrame, metric: str) -> tuple[float, float, float, int, float]:
    """Independently from samples.csv: per sample the mean over seeds (NaN skipped), then the mean
    over samples; the 95% CI by the documented percentile bootstrap; coverage over the predictions
    (samples x seeds) with a value."""
    per_sample = samples.groupby("sample_id")[metric].mean()  # pandas skips NaN; inf stays inf
    defined = per_sample.dropna()
    if defined.empty:
        return math.nan, math.nan, math.nan, 0, 0.0
    mean = float(defined.sum() / len(defined)) if np.isfinite(defined).all() else float(defined.max())
    ci = bootstrap_mean_ci(defined.to_numpy())
    predictions = samples["sample_id"].nunique() * samples["seed"].nunique()
    return mean, ci.low, ci.high, len(defined), int(samples[metric].notna().sum()) / predictions


# --- acceptance: values -----------------------------------------------------------------------------

def test_leaderboard_csv_equals_recomputation_from_samples(runs, board):
    lb = _read(board / "leaderboard.csv")
    assert set(lb["run"]) == {"identity", "noisy", "damaged", "tint"}
    for key, path in runs.items():
        samples = pd.read_csv(path / "samples.csv", dtype={"sample_id": str})
        row = lb[lb["run_dir"] == str(path)]
        assert len(row) == 1, key
        row = row.iloc[0]
        assert row["n"] == samples["sample_id"].nunique()
        ok = samples.groupby("sample_id")["status"].apply(lambda s: (s == "ok").all())
        assert row["n_ok"] == ok.sum()
        assert _same(row["coverage"], ok.sum() / 9)
        assert row["seeds"] == " ".join(str(s) for s in sorted(samples["seed"].unique()))
        for m in METRICS:
            mean, low, high, n, coverage = _recompute(samples, m)
            assert _same(row[m], mean), (key, m, row[m], mean)
            assert _same(row[f"{m}_ci_low"], low), (key, m)
            assert _same(row[f"{m}_ci_high"], high), (key, m)
            assert row[f"{m}_n"] == n and _same(row[f"{m}_coverage"], coverage), (key, m)
    # spot values that follow from the editors themselves
    by_run = lb[lb["table"] == CIELR].set_index("run")
    assert by_run.loc["identity", "psnr"] == math.inf and by_run.loc["identity", "mse"] == 0
    assert by_run.loc["tint", "n_ok"] == 8 and by_run.loc["tint", "idcs_n"] == 8
    assert by_run.loc["damaged", "psnr"] < 20 < by_run.loc["noisy", "psnr"]


def test_by_edit_type_csv_equals_recomputation(runs, board):
    bet = _read(board / "by_edit_type.csv")
    for key, path in runs.items():
        samples = pd.read_csv(path / "samples.csv", dtype={"sample_id": str})
        rows = bet[bet["run"].isin(["identity", "noisy", "damaged", "tint"]) &
                   (bet["table"] == (SMARTEDIT if key == "identity_smartedit" else CIELR))]
        rows = rows[rows["run"] == ("identity" if key == "identity_smartedit" else key)]
        assert sorted(rows["edit_type"]) == sorted(samples["edit_type"].unique())
        for _, row in rows.iterrows():
            sub = samples[samples["edit_type"] == row["edit_type"]]
            assert row["n"] == sub["sample_id"].nunique()
            for m in METRICS:
                mean, low, high, n, coverage = _recompute(sub, m)
                assert _same(row[m], mean) and _same(row[f"{m}_ci_low"], low) and _same(row[f"{m}_ci_high"], high)
                assert row[f"{m}_n"] == n


def test_sorted_by_idcs_and_markdown(board):
    lb = _read(board / f"leaderboard__{CIELR}.csv")
    assert (lb["primary_metric"] == "idcs").all()
    assert list(lb["idcs"]) == sorted(lb["idcs"], reverse=True)
    assert lb.iloc[0]["run"] == "tint" and lb.iloc[0]["rank"] == 1
    md = (board / "leaderboard.md").read_text()
    assert "Sorted by **IDCS** (higher is better)" in md
    assert "paired sign-flip permutation test" in md
    table_lines = [l for l in md.splitlines() if l.startswith("| ") and "tint" in l]
    assert table_lines, md


# --- acceptance: significance -------------------------------------------------------------------------

def test_significance_flags_damaged_not_noisy(board):
    pairs = _read(board / "significance_pairs.csv")
    pairs = pairs[pairs["table"] == CIELR]

    def pair(metric, a, b):
        hit = pairs[(pairs["metric"] == metric) & (((pairs["run_a"] == a) & (pairs["run_b"] == b)) |
                                                   ((pairs["run_a"] == b) & (pairs["run_b"] == a)))]
        assert len(hit) == 1
        return hit.iloc[0]

    for metric, good in product(["psnr", "ssim", "mse", "idcs"], ["identity", "noisy"]):
        r = pair(metric, good, "damaged")
        assert bool(r["significant"]) and r["better"] == good, (metric, good, r.to_dict())
        assert r["n_shared"] == 9 and r["method"] == "exact"
    for metric in ["idcs", "clip"]:  # the noisy editor's tiny, sign-random differences are not flagged
        r = pair(metric, "identity", "noisy")
        assert not bool(r["significant"]) and r["p_holm"] > 0.2, r.to_dict()
        assert abs(r["mean_diff"]) < 1e-3
    r = pair("psnr", "identity", "noisy")  # inf against finite on every sample: the signed-rank statistic
    assert r["statistic"] == "signed_rank" and bool(r["significant"])
    # the matrix form holds the same Holm p-values, symmetric
    matrix = _read(board / "significance.csv")
    m = matrix[(matrix["table"] == CIELR) & (matrix["metric"] == "idcs")].set_index("run")
    assert _same(m.loc["identity", "damaged"], m.loc["damaged", "identity"])
    assert _same(m.loc["identity", "damaged"], pair("idcs", "identity", "damaged")["p_holm"])
    assert math.isnan(m.loc["tint", "tint"])


def test_tied_with_best_marks(board):
    lb = _read(board / f"leaderboard__{CIELR}.csv").set_index("run")
    assert bool(lb.loc["tint", "tied_with_best"])                    # the best on IDCS
    for run in ("identity", "noisy", "damaged"):                      # all significantly worse than tint
        assert not bool(lb.loc[run, "tied_with_best"]), run
    # PSNR: tint and identity both leave the background untouched (inf): tied; the others are worse
    assert bool(lb.loc["tint", "psnr_tied_best"]) and bool(lb.loc["identity", "psnr_tied_best"])
    assert not bool(lb.loc["noisy", "psnr_tied_best"]) and not bool(lb.loc["damaged", "psnr_tied_best"])
    # IDCS: identity and noisy are indistinguishable from each other, though both trail tint
    assert lb.loc["identity", "rank"] in (2, 3) and lb.loc["noisy", "rank"] in (2, 3)


def test_paired_test_matches_brute_force_enumeration():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=7), rng.normal(size=7) + 0.4
    d = a - b
    observed = abs(d.mean())
    hits = sum(abs(np.mean(np.array(signs) * d)) >= observed - 1e-12 for signs in product([-1, 1], repeat=7))
    t = paired_test(a, b)
    assert t.method == "exact" and t.n_permutations == 128 and t.statistic == "mean"
    assert t.p_value == pytest.approx(hits / 128)
    assert paired_test(a, a).p_value == 1.0
    # NaN pairs are dropped; n < 2 is untestable
    t = paired_test([1.0, np.nan, 3.0, 2.0], [0.5, 1.0, np.nan, 1.0])
    assert t.n == 2
    assert math.isnan(paired_test([1.0], [0.0]).p_value)


def test_monte_carlo_path_agrees_with_exact_and_is_seeded():
    rng = np.random.default_rng(5)
    x = rng.normal(0.3, 1.0, size=14)
    exact, method, _ = sign_flip_test(x)
    assert method == "exact"
    mc, method, count = sign_flip_test(x, exact_max_n=0, permutations=20_000)
    assert method == "monte-carlo" and count == 20_000
    assert abs(mc - exact) < 0.01
    assert sign_flip_test(x, exact_max_n=0) == sign_flip_test(x, exact_max_n=0)  # fixed seed


def test_sign_flip_test_is_calibrated_under_the_null():
    rng = np.random.default_rng(11)
    rejections = sum(sign_flip_test(rng.normal(size=10))[0] < 0.05 for _ in range(400))
    assert rejections / 400 < 0.09  # nominal 5% (exact test: at most alpha)
    strong = sum(sign_flip_test(rng.normal(1.0, 1.0, size=10))[0] < 0.05 for _ in range(100))
    assert strong > 70  # and has power against a one-sd shift


def test_holm_adjustment():
    adjusted = holm([0.01, 0.04, 0.03, np.nan])
    assert adjusted[0] == pytest.approx(0.03)
    assert adjusted[2] == pytest.approx(0.06)
    assert adjusted[1] == pytest.approx(0.06)  # monotone: max(0.04 * 1, 0.06)
    assert math.isnan(adjusted[3])


# --- acceptance: separate tables ----------------------------------------------------------------------

def test_other_protocol_gets_its_own_table(runs, board):
    lb = _read(board / "leaderboard.csv")
    assert set(lb["table"]) == {CIELR, SMARTEDIT}
    smart = _read(board / f"leaderboard__{SMARTEDIT}.csv")
    assert list(smart["run_dir"]) == [str(runs["identity_smartedit"])] and smart.iloc[0]["rank"] == 1
    assert (smart["protocol"] == "smartedit").all()
    cielr = _read(board / f"leaderboard__{CIELR}.csv")
    assert str(runs["identity_smartedit"]) not in set(cielr["run_dir"]) and (cielr["protocol"] == "cielr").all()
    pairs = _read(board / "significance_pairs.csv")
    assert not len(pairs[pairs["table"] == SMARTEDIT])  # nothing to compare it with: never tested across tables
    index = _read(board / "tables.csv")
    assert list(index["table"]) == [CIELR, SMARTEDIT] and list(index["n_runs"]) == [4, 1]
    md = (board / "leaderboard.md").read_text()
    assert md.count("\n## protocol ") == 2


def test_python_api_returns_dataframes(runs, board):
    paths = list(runs.values())
    lb = leaderboard(paths)
    assert isinstance(lb, pd.DataFrame)
    from_csv = _read(board / "leaderboard.csv")
    assert list(lb["run"]) == list(from_csv["run"])
    assert np.allclose(lb["idcs"].astype(float), from_csv["idcs"].astype(float), equal_nan=True)
    assert isinstance(by_edit_type(paths), pd.DataFrame)
    sig = significance(paths)
    assert {"metric", "run_a", "run_b", "p_value", "p_holm", "significant"} <= set(sig.columns)
    matrix = significance(paths, matrix=True)
    assert {"tint", "identity", "noisy", "damaged"} <= set(matrix.columns)


def test_primary_metric_fallback_without_idcs(runs):
    run = load_run(runs["identity"])
    del run.metrics["idcs"]
    (table,) = group_runs([run])
    assert table.primary == "clip" and "no IDCS" in table.primary_reason
    assert "idcs" not in table.leaderboard.columns
    (by_mse,) = group_runs([runs["noisy"], runs["damaged"], runs["identity"]], primary="mse")
    assert list(by_mse.leaderboard["run"]) == ["identity", "noisy", "damaged"]  # lower is better
    assert by_mse.primary_reason.startswith("mse (chosen with --primary)")
    assert len(leaderboard(runs["identity"])) == 1  # a single path is one run


def test_labels_disambiguate_configs(runs, tmp_path):
    other = tmp_path / "identity-b"
    shutil.copytree(runs["identity"], other)
    spec = json.loads((other / "spec.json").read_text())
    spec["editor_config_hash"] = "0123456789abcdef"
    (other / "spec.json").write_text(json.dumps(spec))
    (table,) = group_runs([runs["identity"], other])
    assert sorted(table.leaderboard["run"]) == sorted([f"identity [{json.loads((runs['identity'] / 'spec.json').read_text())['editor_config_hash'][:7]}]",
                                                       "identity [0123456]"])


def test_cli_rejects_missing_run(tmp_path):
    result = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a run directory" in result.output


# --- plots ---------------------------------------------------------------------------------------------

def test_plots_png_and_svg(board):
    plots = board / "plots" / CIELR
    expected = [f"bars__{m}" for m in METRICS] + [f"by_edit_type__{m}" for m in METRICS] + ["tradeoff__psnr__idcs"]
    styles = editor_styles(["tint", "identity", "noisy", "damaged"])
    for stem in expected:
        png, svg = plots / f"{stem}.png", plots / f"{stem}.svg"
        assert png.is_file() and svg.is_file(), stem
        img = np.asarray(Image.open(png).convert("RGB"))
        assert img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 10, stem
        text = svg.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text
        if stem.startswith(("bars__idcs", "by_edit_type__idcs", "tradeoff")):
            for label in ("tint", "identity", "noisy", "damaged"):  # one colour per editor in every plot
                assert styles[label]["color"].lower() in text.lower(), (stem, label)
    assert (board / "plots" / SMARTEDIT / "bars__idcs.png").is_file()


# --- gallery -------------------------------------------------------------------------------------------

def _gallery_data(board: Path) -> dict:
    html = (board / "gallery" / "index.html").read_text()
    m = re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def test_gallery_is_self_contained(board):
    gallery = board / "gallery"
    html = (gallery / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "network resource in the page"
    assert "<style>" in html and "<script>" in html
    data = _gallery_data(board)
    assert [s["id"] for s in data["samples"]] == sorted(s["id"] for s in data["samples"])
    assert len(data["samples"]) == 9
    refs = []
    for s in data["samples"]:
        refs += [s["source"]["thumb"], s["source"]["full"], s["overlay"]["thumb"], s["overlay"]["full"]]
        assert len(s["outputs"]) == 5
        for o in s["outputs"]:
            for r in o["rows"]:
                if r["img"]:
                    refs += [r["img"]["thumb"], r["img"]["full"]]
                if r.get("trace"):
                    refs.append(r["trace"])
    for ref in refs:
        assert not ref.startswith(("/", "http")) and ".." not in ref, ref
        assert (gallery / ref).is_file(), ref
    tint = data["runs"].index(next(r for r in data["runs"] if r["label"] == "tint"))
    tower = next(s for s in data["samples"] if s["id"] == "rocket-tower")
    failed = next(o for o in tower["outputs"] if o["run"] == tint)["rows"][0]
    assert failed["status"] == "edit_error" and failed["img"] is None and "trace" not in failed
    assert failed["error"] == "RuntimeError: synthetic failure" and failed["notes"] == {"idcs_status": "skipped"}
    traced = [r for s in data["samples"] for o in s["outputs"] if o["run"] == tint for r in o["rows"] if r.get("trace")]
    assert len(traced) == 8
    # the metric values shown equal samples.csv (to the 7 significant digits the page keeps)
    names = [m["name"] for m in data["metrics"]]
    damaged_idx = next(i for i, r in enumerate(data["runs"]) if r["label"] == "damaged")
    csv = pd.read_csv(Path(next(iter(_read(board / "leaderboard.csv").query("run == 'damaged'")["run_dir"]))) / "samples.csv",
                      dtype={"sample_id": str}).set_index("sample_id")
    for s in data["samples"]:
        (row,) = next(o for o in s["outputs"] if o["run"] == damaged_idx)["rows"]
        for name, value in zip(names, row["m"]):
            expected = csv.loc[s["id"], name]
            # issue 17 §4: NaN in the one JSON number form ("nan"), as in samples.jsonl and summary.json
            assert (value == "nan" and math.isnan(expected)) or value == pytest.approx(expected, rel=1e-6), (s["id"], name)
    trace_js = (gallery / traced[0]["trace"]).read_text()
    assert trace_js.startswith("window.ciebenchTrace(") and '"steps"' in trace_js and "edit region" in trace_js


_COLLECT_ALL_PAGES = """(async () => {
  const g = window.ciebenchGallery;
  const waitImages = () => Promise.all([...document.querySelectorAll('#samples img')].map(img => {
    img.loading = 'eager';
    return img.complete ? Promise.resolve() : new Promise(r => { img.onload = img.onerror = r; });
  }));
  g.state.size = 4; g.state.page = 0; g.state.type = ''; g.state.sort = 'id'; g.state.dir = 'asc';
  g.render();
  const pages = Math.ceil(g.filtered().length / g.state.size);
  const seen = [], broken = [];
  let traces = 0;
  for (let p = 0; p < pages; p++) {
    g.state.page = p; g.render();
    document.querySelectorAll('#samples section.sample').forEach(s => seen.push(s.dataset.sampleId));
    await waitImages();
    document.querySelectorAll('#samples img').forEach(img => { if (!img.naturalWidth) broken.push(img.src); });
    for (const d of document.querySelectorAll('#samples details.trace')) {
      d.open = true;
      const body = d.querySelector('.trace-body');
      for (let i = 0; i < 100 && !body.dataset.rendered; i++) await new Promise(r => setTimeout(r, 20));
      if (body.dataset.rendered && body.querySelector('details')) traces++;
      await waitImages();
      d.querySelectorAll('img').forEach(img => { if (!img.naturalWidth) broken.push(img.src); });
    }
  }
  const status = document.getElementById('status').textContent;
  // filter and sort through the real controls
  const type = document.getElementById('type'); type.value = 'remove'; type.dispatchEvent(new Event('change'));
  const removeIds = [...document.querySelectorAll('#samples section.sample')].map(s => s.dataset.sampleId);
  type.value = ''; type.dispatchEvent(new Event('change'));
  const sort = document.getElementById('sort');
  sort.value = [...sort.options].find(o => o.text === 'damaged: PSNR (dB)').value;
  sort.dispatchEvent(new Event('change'));
  const sortedIds = g.filtered().map(s => s.id);
  const index = [...document.querySelectorAll('#idlist a')].map(a => a.dataset.sampleId);
  g.state.size = 20; g.state.sort = 'id'; g.state.dir = 'asc'; g.render(); window.scrollTo(0, 0);
  return {pages, seen, broken, traces, status, removeIds, sortedIds, index};
})()"""


def test_gallery_in_headless_chromium(board, runs):
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (CI: apt-get install -y chromium); the static gallery checks still ran")
    page = board / "gallery" / "index.html"
    data = _gallery_data(board)
    all_ids = [s["id"] for s in data["samples"]]
    with HeadlessChromium(binary) as browser:
        browser.open(page.resolve().as_uri())
        result = browser.evaluate(_COLLECT_ALL_PAGES)
        browser.drain(0.5)
        shot = browser.screenshot()
        problems = browser.problems()
        urls = browser.request_urls()
    assert problems == [], problems
    assert result["pages"] == 3 and sorted(result["seen"]) == sorted(all_ids) and len(result["seen"]) == 9
    assert result["broken"] == []
    assert result["traces"] == 8  # every tint output's trace opened and rendered its steps
    assert sorted(result["removeIds"]) == sorted(s["id"] for s in data["samples"] if s["edit_type"] == "remove")
    assert sorted(result["index"]) == sorted(all_ids)
    damaged = pd.read_csv(runs["damaged"] / "samples.csv", dtype={"sample_id": str}).set_index("sample_id")["psnr"]
    assert result["sortedIds"] == list(damaged.sort_values(ascending=False, kind="stable").index)  # best first
    root = page.parent.resolve().as_uri()
    assert urls and all(u.startswith(root) for u in urls), [u for u in urls if not u.startswith(root)]
    img = np.asarray(Image.open(__import__("io").BytesIO(shot)).convert("RGB")).astype(float)
    assert img.shape[0] >= 600 and img.shape[1] >= 1000
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3)[::97], axis=0)) > 200  # photos, not a blank page


def test_score_run_without_editor_joins_its_protocol_table(runs, tmp_path):
    """`ciebench score` runs have "editor": null and the protocol only in summary.json."""
    scored = tmp_path / "my-predictions"
    shutil.copytree(runs["noisy"], scored)
    spec = json.loads((scored / "spec.json").read_text())
    (scored / "spec.json").write_text(json.dumps({"editor": None, "predictions": "/somewhere",
                                                  "dataset": spec["dataset"], "score_options": {}}))
    tables = group_runs([runs["identity"], scored, runs["identity_smartedit"]])
    assert [t.slug for t in tables] == [CIELR, SMARTEDIT]
    assert sorted(tables[0].leaderboard["run"]) == ["identity", "my-predictions"]
    row = tables[0].leaderboard.set_index("run").loc["my-predictions"]
    assert row["config_hash"] == "" and row["protocol"] == "cielr"


def _renamed_dataset(run: Path, to: Path, **dataset) -> Path:
    """A copy of `run` whose spec.json and summary.json record the dataset block updated with `dataset`."""
    shutil.copytree(run, to)
    for name in ("spec.json", "summary.json"):
        record = json.loads((to / name).read_text())
        record["dataset"] = {**record["dataset"], **dataset}
        (to / name).write_text(json.dumps(record))
    return to


def test_runs_on_the_same_content_share_a_table_whatever_the_dataset_is_called(runs, tmp_path, caplog):
    """The table is decided by the content revision: the same rows named `mini`, a local copy's path or the
    release share one table (ranked together, tested pairwise); other content stays apart; a run that
    recorded the release by name (an older ciebench) loads, apart, with a warning saying how to fix it."""
    revision = json.loads((runs["identity"] / "spec.json").read_text())["dataset"]["revision"]
    copy = _renamed_dataset(runs["noisy"], tmp_path / "noisy-on-a-copy", spec="/data/copy of mini", kind="authors")
    release = _renamed_dataset(runs["tint"], tmp_path / "tint-on-release", spec="ciebench", kind="ciebench-release",
                               release="8ea710fc9007359e")
    legacy = _renamed_dataset(runs["tint"], tmp_path / "tint-legacy", spec="ciebench", kind="ciebench-release",
                              revision="release-8ea710fc9007359e")
    other = _renamed_dataset(runs["damaged"], tmp_path / "damaged-other", revision="f" * 16)
    with caplog.at_level("WARNING", logger="ciebench.leaderboard.runs"):
        tables = group_runs([runs["identity"], copy, release, legacy, other])
    members = {t.revision: sorted(r.path.name for r in t.runs) for t in tables}
    assert members == {revision: ["identity", "noisy-on-a-copy", "tint-on-release"],
                       "release-8ea710fc9007359e": ["tint-legacy"], "f" * 16: ["damaged-other"]}
    shared = next(t for t in tables if t.revision == revision)
    assert shared.dataset_specs == ["/data/copy of mini", "ciebench", "mini"]
    assert "the same content as" in shared.title and "/data/copy of mini" in shared.title
    # compared: 3 runs, so 3 pairs per metric, and each row keeps the name its run gave the data
    assert len(shared.pairs[shared.pairs["metric"] == shared.primary]) == 3
    assert dict(zip(shared.leaderboard["run_dir"].map(lambda p: Path(p).name), shared.leaderboard["dataset"])) == {
        "identity": "mini", "noisy-on-a-copy": "/data/copy of mini", "tint-on-release": "ciebench"}
    assert len({t.slug for t in tables}) == 3
    warned = [r.getMessage() for r in caplog.records if "release-8ea710fc9007359e" in r.getMessage()]
    assert len(warned) == 1 and "tint-legacy" in warned[0] and "content revision" in warned[0]


def test_docs_example_is_current(board):
    """docs/leaderboard.md shows the first table of this exact board; regenerate it with the commands in
    its Example section when the test runs change."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "leaderboard.md").read_text()
    md = (board / "leaderboard.md").read_text()
    first = md[md.index("## protocol cielr"):md.index("Plots: `plots/cielr__mini/`")].strip()
    # the dataset revision hashes stored PNG bytes, which may differ with the zlib/Pillow build
    norm = lambda text: re.sub(r"mini@[0-9a-f]{12}", "mini@<revision>", text)  # noqa: E731
    assert norm(first) in norm(docs), "docs/leaderboard.md's example table is stale"
    assert (Path(__file__).resolve().parents[1] / "docs" / "img" / "leaderboard-idcs-bars.png").is_file()


def test_trace_lookup_and_safe_names(tmp_path):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "1-Left-Right%2F7__s0.json").write_text("{}")   # the runner's quoting of "1-Left-Right/7"
    (tmp_path / "traces" / "12.json").write_text("{}")                    # a per-sample trace
    assert trace_path(tmp_path, "1-Left-Right/7", 0).name == "1-Left-Right%2F7__s0.json"
    assert trace_path(tmp_path, "12", 3).name == "12.json"
    assert trace_path(tmp_path, "13", 0) is None
    assert trace_path(tmp_path, "../x", 0) is None
    assert safe_name("a/b") != safe_name("a_b") and "/" not in safe_name("a/b") and safe_name("12") == "12"


def test_large_gallery_stays_paginated(board):
    """Thousands of samples: the page keeps only one page of cards in the DOM and indexes them all."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (CI: apt-get install -y chromium)")
    data = _gallery_data(board)
    base = data["samples"]
    data["samples"] = [dict(base[i % len(base)], id=str(i)) for i in range(3000)]
    page = board / "gallery" / "large.html"
    page.write_text(render_html(data))
    with HeadlessChromium(binary) as browser:
        browser.open(page.resolve().as_uri())
        result = browser.evaluate("""(() => {
          const g = window.ciebenchGallery, t0 = performance.now();
          g.state.page = 149; g.render();
          return {cards: document.querySelectorAll('#samples section.sample').length,
                  index: document.querySelectorAll('#idlist a').length,
                  last: document.querySelector('#samples section.sample:last-child').dataset.sampleId,
                  lazy: [...document.querySelectorAll('#samples img')].every(i => i.loading === 'lazy'),
                  status: document.getElementById('status').textContent, ms: performance.now() - t0};
        })()""")
        browser.drain(0.3)
        problems = browser.problems()
    page.unlink()
    assert problems == [], problems
    assert result["cards"] == 20 and result["index"] == 3000 and result["last"] == "2999" and result["lazy"]
    assert result["status"] == "Showing 2981–3000 of 3000 samples"
