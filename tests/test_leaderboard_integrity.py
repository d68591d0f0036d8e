"""What a leaderboard shows matches what was computed: a failed `ciebench score` leaves no new spec.json
over the old results, a run whose spec.json and summary.json name different protocols is labelled
with the one its numbers were scored under (and warned about), and rewriting a leaderboard folder
leaves exactly the files a fresh leaderboard of the same runs would have, a user's own files kept."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import ciebench
from ciebench.backend import LocalBackend
from ciebench.cli import app
from ciebench.leaderboard import RunError, load_run, write_leaderboard
from ciebench.metrics.protocols import get_protocol
from ciebench.outdir import LOCK, MARKER

from tests.support.leaderboard_runs import build_run
from tests.support.predictions import identity_predictions

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
FAST = dict(metrics=["psnr", "ssim"], progress=False)
LPIPS_OFFLINE = "LPIPS needs torchvision's squeezenet1_1 ImageNet weights (offline test)"


def _files(folder: Path) -> set[str]:
    """Every file under `folder` (relative, POSIX), the folder's marker and lock left out."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.name not in (MARKER, LOCK)}


def _protocol_of(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())["protocol"]


# --- 1. a failed score, and a spec.json that disagrees with summary.json --------------------------

class OfflineBackend(LocalBackend):
    """The local backend, failing as region scoring does when a metric's model cannot load (LPIPS
    offline without its weights) or when the user presses Ctrl-C."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def score_regions(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError(LPIPS_OFFLINE), KeyboardInterrupt()], ids=["model", "ctrl-c"])
def test_a_failed_score_leaves_the_spec_of_the_results_that_are_there(tmp_path: Path, error: BaseException):
    predictions = tmp_path / "preds"
    identity_predictions(predictions, 4)
    out = tmp_path / "s1"
    ciebench.score("mini", predictions, out, limit=4, **FAST)
    before = {name: (out / name).read_bytes() for name in ("spec.json", "samples.csv", "summary.json")}
    with pytest.raises(type(error)):
        ciebench.score("mini", predictions, out, limit=4, protocol="exact", metrics=["lpips"], progress=False,
                       backend=OfflineBackend(error))
    # nothing was scored under exact: the folder still describes the cielr scoring, spec.json included
    assert {name: (out / name).read_bytes() for name in before} == before
    assert _protocol_of(out, "spec.json")["name"] == _protocol_of(out, "summary.json")["name"] == "cielr"
    # a first score that fails leaves no spec.json describing results that were never produced
    fresh = tmp_path / "s2"
    with pytest.raises(type(error)):
        ciebench.score("mini", predictions, fresh, limit=4, progress=False, backend=OfflineBackend(error))
    assert not (fresh / "spec.json").exists() and _files(fresh) == set()


def test_the_leaderboard_labels_a_run_with_the_protocol_its_summary_was_scored_under(runs, tmp_path: Path, caplog):
    run, consistent = tmp_path / "s1", runs["r1"]
    shutil.copytree(consistent, run)
    scored_under = _protocol_of(run, "summary.json")
    # what a failed score wrote before the fix: the new protocol in spec.json, over the old numbers
    spec = json.loads((run / "spec.json").read_text())
    spec["protocol"] = get_protocol("exact").manifest()
    (run / "spec.json").write_text(json.dumps(spec))

    with caplog.at_level(logging.WARNING):
        loaded = load_run(run)
        load_run(consistent)
    assert (loaded.protocol_name, loaded.protocol_hash) == (scored_under["name"], scored_under["hash"]) == \
        ("cielr", scored_under["hash"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # the consistent run is not warned about
    assert str(run) in warnings[0] and "exact" in warnings[0] and "cielr" in warnings[0]

    # the board puts both runs in the one cielr table they were scored under
    board = write_leaderboard([run, consistent], tmp_path / "board", plots=False, gallery=False)
    index = pd.read_csv(board.out / "tables.csv")
    assert list(index["protocol"]) == ["cielr"] and list(index["protocol_hash"]) == [scored_under["hash"]]
    assert list(index["n_runs"]) == [2]
    assert set(pd.read_csv(board.out / "leaderboard.csv")["protocol"]) == {"cielr"}


def test_the_reviewed_sequence_score_failed_score_leaderboard_reads_cielr(tmp_path: Path, monkeypatch):
    """The review's reproduction, on the command line: a score under cielr, a second score under exact
    that fails while loading LPIPS, then the leaderboard of that folder."""
    predictions = tmp_path / "preds"
    identity_predictions(predictions, 4)
    s1, board = tmp_path / "s1", tmp_path / "board"
    args = ["score", "-d", "mini", "--predictions", str(predictions), "-o", str(s1), "--limit", "4"]
    result = runner.invoke(app, args + ["--metrics", "psnr,ssim"])
    assert result.exit_code == 0, result.output

    def offline(self, *a, **k):
        raise RuntimeError(LPIPS_OFFLINE)

    monkeypatch.setattr(LocalBackend, "score_regions", offline)
    result = runner.invoke(app, args + ["--metrics", "lpips", "--protocol", "exact"])
    assert result.exit_code != 0
    result = runner.invoke(app, ["leaderboard", str(s1), "-o", str(board), "--no-plots", "--no-gallery"])
    assert result.exit_code == 0, result.output
    cielr = get_protocol("cielr")
    index = pd.read_csv(board / "tables.csv")
    assert (list(index["protocol"]), list(index["protocol_hash"])) == (["cielr"], [cielr.hash])
    assert "protocol cielr" in result.output and "protocol exact" not in result.output


def _perturb(folder: Path) -> None:
    """Change every prediction (a new editor's outputs): the same pixels except a darker top-left block."""
    import numpy as np
    from PIL import Image

    for path in sorted(folder.glob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB")).copy()
        pixels[:8, :8] //= 2
        Image.fromarray(pixels).save(path)


def test_a_score_killed_between_the_tables_and_the_summary_is_refused_not_mislabelled(tmp_path: Path, monkeypatch):
    """samples.csv is written before summary.json. A kill in between left the new scoring's numbers (under
    exact, on new predictions) beside the old summary (cielr), and the leaderboard showed them as cielr."""
    from ciebench import scoring
    from ciebench.errors import DataError
    from ciebench.export import export_run
    from ciebench.verify import verify_run

    predictions, out = tmp_path / "preds", tmp_path / "s1"
    identity_predictions(predictions, 4)
    ciebench.score("mini", predictions, out, limit=4, **FAST)
    assert load_run(out).protocol_name == "cielr"
    old_csv = (out / "samples.csv").read_bytes()
    _perturb(predictions)
    written = scoring.atomic_write_json

    def killed_at_the_summary(path, data, *args, **kwargs):
        if Path(path).name == "summary.json":
            raise KeyboardInterrupt
        return written(path, data, *args, **kwargs)

    monkeypatch.setattr(scoring, "atomic_write_json", killed_at_the_summary)
    with pytest.raises(KeyboardInterrupt):
        ciebench.score("mini", predictions, out, limit=4, protocol="exact", **FAST)
    monkeypatch.undo()
    assert (out / "samples.csv").read_bytes() != old_csv  # the new numbers are there, the old summary too
    assert _protocol_of(out, "summary.json")["name"] == "cielr"

    with pytest.raises(RunError, match=r"samples\.csv is not the table summary\.json was written with"):
        load_run(out)
    result = runner.invoke(app, ["leaderboard", str(out), "-o", str(tmp_path / "board"), "--no-plots", "--no-gallery"])
    assert result.exit_code == 2 and "Score" in result.output and "samples.csv" in result.output, result.output
    with pytest.raises(DataError, match="samples.csv"):
        export_run(out, tmp_path / "export")
    checks = {c.name: c for c in verify_run(out, rescore=False).checks}
    assert checks["summary"].verdict == "fail"
    assert any("samples.csv is not the table" in p for p in checks["summary"].problems)

    # scoring again, as the message says, makes the folder whole: the exact numbers, labelled exact
    ciebench.score("mini", predictions, out, limit=4, protocol="exact", **FAST)
    run = load_run(out)
    assert run.protocol_name == "exact"
    assert run.per_sample("psnr").lt(100).any()  # the perturbed predictions, not the identical ones (all inf)


def test_an_edited_samples_csv_is_refused(tmp_path: Path):
    predictions, out = tmp_path / "preds", tmp_path / "s1"
    identity_predictions(predictions, 2)
    ciebench.score("mini", predictions, out, limit=2, **FAST)
    frame = pd.read_csv(out / "samples.csv", dtype={"sample_id": str})
    frame["ssim"] = 0.5  # a "better" number typed in by hand
    frame.to_csv(out / "samples.csv", index=False)
    with pytest.raises(RunError, match="samples.csv"):
        load_run(out)


def test_the_leaderboard_shows_a_run_on_the_dataset_its_summary_was_scored_on(runs, tmp_path: Path, caplog):
    """spec.json naming another dataset than summary.json (a `score` stopped between writing them) put the
    run in the other dataset's table."""
    from ciebench.verify import check_dataset

    run, consistent = tmp_path / "s1", runs["r1"]
    shutil.copytree(consistent, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["dataset"] = {"spec": "mini", "revision": json.loads((run / "spec.json").read_text())["dataset"]["revision"]}
    (run / "summary.json").write_text(json.dumps(summary))
    spec = json.loads((run / "spec.json").read_text())
    spec["dataset"] = {"spec": "/data/other", "revision": "0" * 16, "n": 3}
    (run / "spec.json").write_text(json.dumps(spec))

    with caplog.at_level(logging.WARNING):
        loaded = load_run(run)
    assert (loaded.dataset_spec, loaded.dataset_revision) == ("mini", summary["dataset"]["revision"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "/data/other" in warnings[0] and str(run) in warnings[0], warnings
    board = write_leaderboard([run, consistent], tmp_path / "board", plots=False, gallery=False)
    assert list(pd.read_csv(board.out / "tables.csv")["n_runs"]) == [2]  # one table: both scored on mini
    check = check_dataset(spec, summary)
    assert check.verdict == "fail" and "/data/other" in check.problems[0]
    assert check_dataset(summary, summary).verdict == "pass"


# --- 2. rewriting a leaderboard folder -----------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """r1 under cielr, x1 under exact (two tables together, one table alone), both with reasoning traces
    (the gallery copies their artifact images)."""
    root = tmp_path_factory.mktemp("runs")
    return {"r1": build_run(root, "r1", "tint", metrics=["psnr", "clip"], traces=True),
            "x1": build_run(root, "x1", "noisy", protocol="exact", metrics=["psnr", "clip"], traces=True)}


@pytest.fixture(scope="module")
def two_tables(runs, tmp_path_factory) -> Path:
    """A leaderboard of r1 and x1 with everything (tables of both protocols, plots, gallery)."""
    board = tmp_path_factory.mktemp("two") / "board"
    write_leaderboard([runs["r1"], runs["x1"]], board)
    assert any("exact" in name for name in _files(board))  # what a rewrite must not leave behind
    return board


def _gallery_links(board: Path) -> set[str]:
    """The files (relative to `board`) that the gallery page and its trace scripts link to."""
    gallery = board / "gallery"
    texts = [(gallery / "index.html").read_text(), *(p.read_text() for p in gallery.glob("traces/**/*.js"))]
    return {f"gallery/{link}" for text in texts for link in re.findall(r'"((?:thumbs|full|traces)/[^"]+)"', text)}


def _rewrite(two_tables: Path, tmp_path: Path, runs: list[Path], user_files: dict[str, str], **options) -> Path:
    """A copy of the two-table board, with `user_files` added, rewritten with `runs` and `options`."""
    board = tmp_path / "board"
    shutil.copytree(two_tables, board)
    for name, text in user_files.items():
        (board / name).parent.mkdir(parents=True, exist_ok=True)
        (board / name).write_text(text)
    write_leaderboard(runs, board, **options)
    return board


@pytest.mark.parametrize("options", [{}, {"plots": False, "full_images": False}, {"gallery": False}],
                         ids=["everything", "no-plots-thumbnails-only", "no-gallery"])
def test_a_rewritten_leaderboard_holds_the_files_of_a_fresh_one_and_the_users(runs, two_tables, tmp_path: Path,
                                                                             options: dict):
    user = {"notes.txt": "mine", "plots/exact__mini/my-figure.pdf": "mine", "gallery/README.txt": "mine"}
    board = _rewrite(two_tables, tmp_path, [runs["r1"]], user, **options)
    fresh = write_leaderboard([runs["r1"]], tmp_path / "fresh", **options).out
    assert _files(board) == _files(fresh) | set(user)
    assert all((board / name).read_text() == "mine" for name in user)
    # and the fresh one is whole: every gallery file is one its page links to, every link is there
    # (traces included), and plots/ holds the folders tables.csv names
    files = _files(fresh)
    gallery = {name for name in files if name.startswith("gallery/")}
    if options.get("gallery", True):
        links = _gallery_links(fresh)
        assert gallery == links | {"gallery/index.html"} and any(link.startswith("gallery/traces/") for link in links)
        # full-size copies of sources and outputs only with full_images (trace artifacts always have theirs)
        full = any(name.startswith(("gallery/full/src/", "gallery/full/out/")) for name in gallery)
        assert full == options.get("full_images", True)
    else:
        assert gallery == set()
    plot_folders = {name.split("/")[1] for name in files if name.startswith("plots/")}
    assert plot_folders == ({"cielr__mini"} if options.get("plots", True) else set())
    assert list(pd.read_csv(fresh / "tables.csv")["table"]) == ["cielr__mini"]


def test_a_folder_linked_into_the_board_is_not_emptied(runs, two_tables, tmp_path: Path):
    board, elsewhere = tmp_path / "board", tmp_path / "my-plots"
    shutil.copytree(two_tables, board)
    shutil.move(board / "plots" / "exact__mini", elsewhere)
    (board / "plots" / "exact__mini").symlink_to(elsewhere, target_is_directory=True)
    kept = sorted(p.name for p in elsewhere.iterdir())
    write_leaderboard([runs["r1"]], board, gallery=False)
    assert sorted(p.name for p in elsewhere.iterdir()) == kept and (board / "plots" / "exact__mini").is_symlink()


def test_a_leaderboard_killed_while_writing_leaves_the_earlier_one_whole(runs, tmp_path: Path):
    """SIGKILL once the new tables are written and the plots are not (the moment an in-place rewrite showed
    new tables beside old plots and an old leaderboard.md): the folder still holds the earlier leaderboard,
    byte for byte; the next write removes what the killed one left beside it and writes the new one whole."""
    r2 = build_run(tmp_path / "more", "r2", "damaged", metrics=["psnr", "clip"])
    board = tmp_path / "board"
    write_leaderboard([runs["r1"]], board, gallery=False)
    (board / "notes.txt").write_text("mine")
    before = {name: (board / name).read_bytes() for name in _files(board)}
    cmd = [sys.executable, "-m", "ciebench", "leaderboard", str(runs["r1"]), str(r2), "--out", str(board), "--no-gallery"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, started = time.time() + 300, False
    while proc.poll() is None and time.time() < deadline:
        # the new tables are written (into the staging folder, or, as before the fix, into the board)
        started = any(tmp_path.glob(".board.staging-*/leaderboard.csv")) or \
            (board / "leaderboard.csv").read_bytes() != before["leaderboard.csv"]
        if started:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert started, "the leaderboard finished before it could be killed while writing"
    assert {name: (board / name).read_bytes() for name in _files(board)} == before
    assert "damaged" not in (board / "leaderboard.md").read_text()

    write_leaderboard([runs["r1"], r2], board, gallery=False)
    assert not list(tmp_path.glob(".board.staging-*"))
    assert (board / "notes.txt").read_text() == "mine"
    labels = set(pd.read_csv(board / "leaderboard.csv")["run"])
    assert labels == {"tint", "damaged"} and "damaged" in (board / "leaderboard.md").read_text()
    assert all("damaged" in p.read_text() for p in (board / "plots").glob("*/bars__*.svg"))


@pytest.mark.parametrize("why", ["no-exchange", "mount-point"])
def test_where_folders_cannot_be_exchanged_a_rewrite_still_ends_as_a_fresh_leaderboard(runs, two_tables, tmp_path: Path,
                                                                                       monkeypatch, why: str):
    """The fallback of `outdir.staged` (no atomic exchange on this system or file system; or the board is a
    mount point, staged inside it): the staged files are moved in, then the earlier leaderboard's others
    removed, the user's kept, no staging folder left."""
    from ciebench import outdir

    if why == "no-exchange":
        monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)
    else:
        real_ismount = os.path.ismount
        monkeypatch.setattr(os.path, "ismount", lambda p: Path(p).name == "board" or real_ismount(p))
    user = {"notes.txt": "mine", "plots/exact__mini/my-figure.pdf": "mine"}
    board = _rewrite(two_tables, tmp_path, [runs["r1"]], user)
    fresh = write_leaderboard([runs["r1"]], tmp_path / "fresh").out
    assert _files(board) == _files(fresh) | set(user)
    assert not list(tmp_path.glob(".*.staging-*")) and not list(board.glob(".ciebench-staging-*"))


def test_a_leaderboard_rewritten_in_the_working_folder_leaves_that_folder_in_place(runs, two_tables, tmp_path: Path,
                                                                                     monkeypatch):
    """`--out .`: exchanging the folder would delete the one the process (and its shell) works in."""
    board = tmp_path / "board"
    shutil.copytree(two_tables, board)
    monkeypatch.chdir(board)
    inode = os.stat(board).st_ino
    write_leaderboard([runs["r1"]], Path("."))
    assert os.stat(os.getcwd()).st_ino == inode and Path("leaderboard.csv").is_file()
    fresh = write_leaderboard([runs["r1"]], tmp_path / "fresh").out
    assert _files(board) == _files(fresh) and not list(board.glob(".ciebench-staging-*"))


def test_the_command_line_rewrite_leaves_only_the_tables_it_lists(runs, tmp_path: Path):
    """The review's reproduction: `leaderboard r1 x1 -o board`, then `leaderboard r1 -o board`."""
    board = tmp_path / "board"
    for given in ([runs["r1"], runs["x1"]], [runs["r1"]]):
        result = runner.invoke(app, ["leaderboard", *map(str, given), "-o", str(board), "--no-gallery"])
        assert result.exit_code == 0, result.output
    index = pd.read_csv(board / "tables.csv")
    assert list(index["table"]) == ["cielr__mini"]
    listed = set(index["leaderboard_csv"]) | set(index["by_edit_type_csv"]) | set(index["significance_csv"])
    per_table = {p.name for p in board.glob("*__*.csv")}
    assert per_table == listed
    assert [p.name for p in (board / "plots").iterdir()] == ["cielr__mini"]
    assert not any("exact" in name for name in _files(board))


def _benchmark_run(root: Path, folder: str = "bench", value: float = 0.5, judge: str | None = None,
                   prompts: str = "a" * 64, cases: int | None = None, expected: int | None = None) -> Path:
    """A judge-scored RISEBench run, as the leaderboard reads it (its summary only). `judge`: the judge
    model its summary records, with the prompt file's sha256 `prompts` and the data's hub id and (unpinned)
    revision, as `ciebench evaluate` writes them (None: no judge and no data revision, as an older
    ciebench's summary); `cases` / `expected`: its `ours.cases` / `ours.expected_cases`."""
    run = root / folder
    run.mkdir()
    summary = {
        "benchmark": {"name": "risebench"}, "headline": {"name": "Overall Accuracy", "value": value},
        "official": [{"-": "Overall", "Score-Origin": 3.0, "Score-Percentage": 50.0, "Accuracy": value}],
        "ours": {"status_counts": {"ok": 2}}}
    if judge is not None:
        summary["benchmark"].update(hub_id="PhoenixZ/RISEBench", hub_revision=None)
        summary["judge"] = {"prompts": {"name": "risebench/utils.py", "sha256": prompts},
                            "judges": {"main": {"model": judge, "model_id": f"openai:{judge}@http://127.0.0.1:1/v1",
                                                "temperature": 0.0}}}
    if cases is not None:
        summary["ours"].update(cases=cases, expected_cases=expected)
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _benchmark_csvs(board: Path) -> dict[str, pd.DataFrame]:
    """{file name: table} of the benchmark boards' main tables in `board`."""
    return {p.name: pd.read_csv(p) for p in sorted(board.glob("benchmark__*.csv"))
            if not p.name.endswith("__categories.csv")}


def test_full_benchmark_runs_with_one_judge_share_one_table_ranked_by_the_headline(tmp_path: Path):
    runs = [_benchmark_run(tmp_path, name, value, judge="gpt-4.1-2025-04-14", cases=360, expected=360)
            for name, value in (("a", 0.40), ("b", 0.55), ("c", 0.30))]
    result = runner.invoke(app, ["leaderboard", *map(str, runs), "-o", str(tmp_path / "board"), "--no-gallery"])
    assert result.exit_code == 0, result.output
    tables = _benchmark_csvs(tmp_path / "board")
    assert list(tables) == ["benchmark__risebench.csv"]
    table = tables["benchmark__risebench.csv"]
    assert list(table["run"]) == ["predictions (b)", "predictions (a)", "predictions (c)"]  # 0.55 > 0.40 > 0.30
    assert not table["partial"].any() and set(table["judge"]) == {"gpt-4.1-2025-04-14"}


def test_benchmark_runs_of_different_judges_are_never_ranked_in_one_table(tmp_path: Path):
    """Two judge models, and one model with another prompt file: three tables, each ranking only the runs
    its judge scored, the judge named in its heading."""
    same = [_benchmark_run(tmp_path, "a", 0.40, judge="gpt-4.1-2025-04-14"),
            _benchmark_run(tmp_path, "b", 0.55, judge="gpt-4.1-2025-04-14")]
    other_model = _benchmark_run(tmp_path, "c", 0.90, judge="qwen2.5-vl-72b")
    other_prompts = _benchmark_run(tmp_path, "d", 0.70, judge="gpt-4.1-2025-04-14", prompts="b" * 64)
    board = tmp_path / "board"
    result = runner.invoke(app, ["leaderboard", *map(str, [*same, other_model, other_prompts]), "-o", str(board),
                                 "--no-gallery"])
    assert result.exit_code == 0, result.output
    tables = _benchmark_csvs(board).values()
    assert sorted(list(t["run"]) for t in tables) == [
        ["predictions (b)", "predictions (a)"], ["predictions (c)"], ["predictions (d)"]]
    assert all(t["judge"].nunique() == 1 for t in tables)
    doc = (board / "benchmarks.md").read_text()
    assert "## risebench (judge gpt-4.1-2025-04-14)" in doc and "## risebench (judge qwen2.5-vl-72b)" in doc
    assert "prompts sha256 " + "a" * 12 in doc and "prompts sha256 " + "b" * 12 in doc


def test_a_benchmark_run_that_records_no_judge_loads_apart_with_a_warning(tmp_path: Path, caplog):
    old = _benchmark_run(tmp_path, "old", 0.90)
    new = _benchmark_run(tmp_path, "new", 0.40, judge="gpt-4.1-2025-04-14")
    with caplog.at_level(logging.WARNING):
        result = runner.invoke(app, ["leaderboard", str(old), str(new), "-o", str(tmp_path / "board"), "--no-gallery"])
    assert result.exit_code == 0, result.output
    assert sorted(list(t["run"]) for t in _benchmark_csvs(tmp_path / "board").values()) == [
        ["predictions (new)"], ["predictions (old)"]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(old) in w and "no judge" in w for w in warnings), warnings
    assert not any(str(new) in w for w in warnings), warnings


def test_a_limit_run_an_older_ciebench_wrote_is_partial_on_the_benchmark_board(tmp_path: Path):
    """An older ciebench recorded a --limit 3 run as expecting 3 cases, its headline not incomplete:
    RISEBench v1 has 360, so the board marks it partial all the same."""
    limited = _benchmark_run(tmp_path, "limited", 1.0, judge="gpt-4.1-2025-04-14", cases=3, expected=3)
    full = _benchmark_run(tmp_path, "full", 0.25, judge="gpt-4.1-2025-04-14", cases=360, expected=360)
    board = tmp_path / "board"
    result = runner.invoke(app, ["leaderboard", str(limited), str(full), "-o", str(board), "--no-gallery"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(board / "benchmark__risebench.csv").set_index("run")
    assert table.loc["predictions (limited)", "partial"] and not table.loc["predictions (full)", "partial"]
    assert "partial: the run's headline covers fewer cases" in (board / "benchmarks.md").read_text()


def test_benchmark_tables_and_run_tables_each_go_when_no_longer_given(runs, tmp_path: Path):
    bench = _benchmark_run(tmp_path)
    both, only_runs, only_bench = (tmp_path / name for name in ("both", "only-runs", "only-bench"))
    result = runner.invoke(app, ["leaderboard", str(runs["r1"]), str(bench), "-o", str(both), "--no-plots"])
    assert result.exit_code == 0, result.output
    (both / "notes.txt").write_text("mine")
    for board in (only_runs, only_bench):
        shutil.copytree(both, board)
    written = _files(both)
    benchmark_files = {"benchmarks.md", "benchmark__risebench.csv", "benchmark__risebench__categories.csv",
                       "gallery/risebench/index.html"}
    assert benchmark_files <= written

    assert runner.invoke(app, ["leaderboard", str(runs["r1"]), "-o", str(only_runs), "--no-plots"]).exit_code == 0
    assert _files(only_runs) == written - benchmark_files

    assert runner.invoke(app, ["leaderboard", str(bench), "-o", str(only_bench), "--no-plots"]).exit_code == 0
    assert _files(only_bench) == benchmark_files | {"notes.txt"}
