"""Issue 11 (sections 1, 2, 3 predictions/gallery, 5, 6 editor outputs, 8, 10, 11) and issue 17 §4:
ciebench under odd and hostile input. Every bad input is generated here (tests/support/fixtures_reliability.py)."""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench import outdir
from ciebench.cli import app
from ciebench.errors import CiebenchError, EnvironmentProblem, ExitCode, OutputConflict
from ciebench.results import file_stem, id_stem, read_samples, summarize, write_samples
from ciebench.scoring import find_predictions
from ciebench.status import Status

from tests.support.fixtures_reliability import OLDER_OUTPUTS, ODD_IDS, hold_lock, jsonl_dataset, write_image

runner = CliRunner()
FAST = ["--metrics", "psnr,mse"]
HERE = "tests.support.fixtures_reliability"


def _cli(*args: str):
    return runner.invoke(app, list(args))


def _evaluate(*args: str, code: int = 0):
    result = _cli("evaluate", *args)
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


# --- §1 never delete what ciebench did not write ------------------------------------------------------

def test_prepare_into_a_folder_with_user_files_is_refused_and_the_files_survive(tmp_path, monkeypatch):
    mine = tmp_path / "notes.txt"
    mine.write_text("precious")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "ch1.tex").write_text("chapter")
    monkeypatch.chdir(tmp_path)
    result = _cli("data", "prepare", "mini", "--out", ".")
    assert result.exit_code == ExitCode.OUTPUT_CONFLICT, result.output
    assert "did not write" in result.output and "notes.txt" in result.output
    assert mine.read_text() == "precious" and (tmp_path / "thesis" / "ch1.tex").read_text() == "chapter"
    # a new folder works, and preparing again into it replaces only ciebench's own dataset
    assert _cli("data", "prepare", "mini", "--out", "ds").exit_code == 0
    assert (tmp_path / "ds" / outdir.MARKER).is_file()
    again = _cli("data", "prepare", "mini", "--out", "ds")
    assert again.exit_code == 0, again.output
    (tmp_path / "ds" / "mine.txt").write_text("x")  # a user file inside: the whole-folder replace is refused
    assert _cli("data", "prepare", "mini", "--out", "ds").exit_code == ExitCode.OUTPUT_CONFLICT
    assert (tmp_path / "ds" / "mine.txt").read_text() == "x"


def test_evaluate_score_and_leaderboard_refuse_foreign_folders_even_with_overwrite(tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "photo.jpg").write_bytes(b"not ours")
    r = _cli("evaluate", "--editor", "identity", "--dataset", "mini", "--out", str(foreign), "--limit", "1",
             "--overwrite", *FAST)
    assert r.exit_code == ExitCode.OUTPUT_CONFLICT and "photo.jpg" in r.output, r.output
    preds = tmp_path / "preds"
    preds.mkdir()
    r = _cli("score", "--dataset", "mini", "--predictions", str(preds), "--out", str(foreign), *FAST)
    assert r.exit_code == ExitCode.OUTPUT_CONFLICT, r.output
    run = tmp_path / "run"
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), "--limit", "2", *FAST)
    r = _cli("leaderboard", str(run), "--out", str(foreign), "--no-plots", "--no-gallery")
    assert r.exit_code == ExitCode.OUTPUT_CONFLICT, r.output
    assert sorted(p.name for p in foreign.iterdir()) == ["photo.jpg"] and (foreign / "photo.jpg").read_bytes() == b"not ours"
    # one kind of output is never reused as another
    r = _cli("leaderboard", str(run), "--out", str(run), "--no-plots", "--no-gallery")
    assert r.exit_code == ExitCode.OUTPUT_CONFLICT and "evaluate run" in r.output, r.output
    # --overwrite of a different spec deletes the run's own files only
    (run / "my-notes.md").write_text("keep me")
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), "--limit", "3", "--overwrite", *FAST)
    assert (run / "my-notes.md").read_text() == "keep me"
    assert len(list((run / "records").iterdir())) == 3


def test_prepared_and_exported_folders_get_the_umask_mode_not_mkdtemp_0700(tmp_path, monkeypatch):
    """They are built in a mkdtemp folder (0700) and renamed into place; under umask 022 they must be
    0755 like any folder `mkdir` makes, or other users (a web server, a shared cluster) cannot read them."""
    import stat

    import ciebench.io

    previous = os.umask(0o022)
    try:
        monkeypatch.setattr(ciebench.io, "_UMASK", 0o022)  # the umask io reads once, at import
        ds = jsonl_dataset(tmp_path / "ds", ["a", "b"])
        _evaluate("--editor", "identity", "--dataset", str(ds), "--out", str(tmp_path / "run"), *FAST)
        assert _cli("data", "prepare", str(ds), "--out", str(tmp_path / "prepared")).exit_code == 0
        assert _cli("export", str(tmp_path / "run"), "--format", "hub", "--out", str(tmp_path / "exp")).exit_code == 0
        for folder in (tmp_path / "prepared", tmp_path / "exp"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
        assert stat.S_IMODE(ciebench.io.staging_dir(tmp_path, ".x-").stat().st_mode) == 0o755  # also the release cache's
    finally:
        os.umask(previous)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a folder): what must not change."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("kind, build, evidence", OLDER_OUTPUTS, ids=[b.__name__.lstrip("_") for _, b, _ in OLDER_OUTPUTS])
def test_claim_adopts_unmarked_output_of_an_older_ciebench_but_not_its_names_alone(tmp_path, kind, build, evidence):
    old = tmp_path / "old"
    old.mkdir()
    build(old)  # as a ciebench without output markers left it
    outdir.claim(old, kind)
    assert outdir.marker_kind(old) == kind
    (old / "README.txt").write_text("mine")
    outdir.clear(old, kind)
    assert sorted(p.name for p in old.iterdir()) == sorted([outdir.MARKER, "README.txt"])
    # The same names without the file that version always wrote, or with the user's own file of that name:
    # nothing shows ciebench wrote them (a user's images/, summary.json, README.md + data/), so the folder is
    # refused with every entry named, and nothing in it changes (no marker either).
    for own in (None, '{"my": "own notes"}\n'):
        mine = tmp_path / ("without" if own is None else "own") / kind
        mine.mkdir(parents=True)
        build(mine)
        (mine / evidence).unlink()
        if own is not None:
            (mine / evidence).write_text(own)
        before = _tree(mine)
        with pytest.raises(OutputConflict) as refused:
            outdir.claim(mine, kind)
        message = str(refused.value)
        assert "did not write" in message and outdir.MARKER in message and evidence in message
        assert all(entry.name in message for entry in mine.iterdir()), message
        assert _tree(mine) == before
    with pytest.raises(OutputConflict):
        outdir.claim(old / "README.txt", "run")  # a file, not a folder


def test_a_users_folder_with_only_layout_names_is_refused_and_left_as_it_was(tmp_path):
    """Audit repro: `evaluate --overwrite` deleted a user's images/my_edit_1.png, `score` replaced a user's
    summary.json, because their names fit the layout of an earlier run."""
    edits = tmp_path / "edits"
    write_image(edits / "images" / "my_edit_1.png", 3)
    before = _tree(edits)
    for extra in ((), ("--overwrite",)):
        r = _cli("evaluate", "--editor", "identity", "--dataset", "mini", "--out", str(edits), "--limit", "1",
                 *extra, *FAST)
        assert r.exit_code == ExitCode.OUTPUT_CONFLICT and "did not write (images)" in r.output, r.output
    assert _tree(edits) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "summary.json").write_text('{"my": "own notes"}')
    preds = tmp_path / "preds"
    preds.mkdir()
    r = _cli("score", "--dataset", "mini", "--predictions", str(preds), "--out", str(notes), *FAST)
    assert r.exit_code == ExitCode.OUTPUT_CONFLICT and "summary.json" in r.output, r.output
    assert _tree(notes) == {"summary.json": b'{"my": "own notes"}'}
    repo = tmp_path / "my-dataset-repo"  # a Hub dataset repository of the user's: data prepare replaces whole folders
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.csv").write_text("id\n1\n")
    (repo / "README.md").write_text("# my data")
    before = _tree(repo)
    r = _cli("data", "prepare", "mini", "--out", str(repo))
    assert r.exit_code == ExitCode.OUTPUT_CONFLICT and "README.md" in r.output, r.output
    assert _tree(repo) == before
    fifo = tmp_path / "fifo"  # evidence is read from regular files only: a FIFO named spec.json never blocks
    fifo.mkdir()
    os.mkfifo(fifo / "spec.json")
    with pytest.raises(OutputConflict):
        outdir.claim(fifo, "run")
    # an older ciebench's run (no marker) is still adopted: --overwrite replaces its files, as it did before
    old = tmp_path / "old-run"
    old.mkdir()
    OLDER_OUTPUTS[0][1](old)
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(old), "--limit", "1", "--overwrite", *FAST)
    assert outdir.marker_kind(old) == "run" and not (old / "records" / "a__s0.json").exists()
    assert len(list((old / "records").iterdir())) == 1


# --- §2 ids are opaque strings ------------------------------------------------------------------------

def test_file_stem_rule_is_bounded_safe_and_collision_free():
    ids = ODD_IDS + ["..", ".", "con", "CON", "a b", "a_b", "a%2Fb", "-x", "ä", "A" * 64, "a" * 64, "a" * 65]
    stems = [id_stem(i) for i in ids]
    assert len({s.casefold() for s in stems}) == len(ids)  # distinct even on case-insensitive file systems
    for sample_id, stem in zip(ids, stems):
        assert 1 <= len(stem.encode()) <= 64 and re.fullmatch(r"[A-Za-z0-9_.-]+", stem), (sample_id, stem)
        assert not stem.startswith((".", "-"))
        assert len(file_stem(sample_id, 123456).encode()) <= 80
    assert id_stem("7") == "7" and id_stem("007") == "007" and id_stem("a") == "a" and id_stem("A") != "A"


def test_odd_ids_round_trip_through_run_csv_jsonl_summary_leaderboard_and_gallery(tmp_path, monkeypatch):
    ds = jsonl_dataset(tmp_path / "ds", ODD_IDS)
    check = _cli("data", "validate", str(ds))
    assert check.exit_code == 0, check.output
    run = tmp_path / "run"
    _evaluate("--editor", "identity", "--dataset", str(ds), "--out", str(run), *FAST)
    expected = set(ODD_IDS)
    frame = read_samples(run)
    assert set(frame["sample_id"]) == expected and len(frame) == len(ODD_IDS)
    assert (frame["status"] == Status.OK).all()
    assert dict(zip(frame["sample_id"], frame["file_stem"])) == {i: file_stem(i, 0) for i in ODD_IDS}
    # an independent reader that does not know the rule: every id is a string, none missing
    raw = pd.read_csv(run / "samples.csv", dtype=str, keep_default_na=False)
    assert set(raw["sample_id"]) == expected
    jsonl = [json.loads(line) for line in (run / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["sample_id"] for r in jsonl} == expected
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_samples"] == len(ODD_IDS) and summary["metrics"]["mse"]["n"] == len(ODD_IDS)
    assert summary["metrics"]["mse"]["coverage"] == 1.0
    records = [json.loads(p.read_text()) for p in (run / "records").iterdir()]
    assert {r["sample_id"] for r in records} == expected
    assert all(len(p.name.encode()) <= 255 for p in run.rglob("*"))
    # a second run resumes every sample (names are stable)
    again = _evaluate("--editor", "identity", "--dataset", str(ds), "--out", str(run), *FAST)
    assert f"resumed {len(ODD_IDS)}" in again.output
    board = tmp_path / "board"
    result = _cli("leaderboard", str(run), "--out", str(board), "--no-plots")
    assert result.exit_code == 0, result.output
    page = (board / "gallery" / "index.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>', page, re.S).group(1))
    assert {s["id"] for s in data["samples"]} == expected
    assert all(s["outputs"] and s["outputs"][0]["rows"][0]["img"] for s in data["samples"])
    lb = pd.read_csv(board / "leaderboard.csv")
    assert int(lb.loc[0, "n"]) == len(ODD_IDS) and float(lb.loc[0, "coverage"]) == 1.0


def test_coverage_and_n_count_against_the_dataset_not_what_parsed(tmp_path):
    rows = [{"sample_id": i, "seed": 0, "edit_type": "x", "status": "ok", "mse": 0.5} for i in ("NA", "007", "7")]
    write_samples(tmp_path, rows, ["mse"])
    frame = read_samples(tmp_path)
    assert list(frame["sample_id"]) == ["007", "7", "NA"] or set(frame["sample_id"]) == {"NA", "007", "7"}
    lost = summarize(frame[frame["sample_id"] != "7"], {"mse": False}, sample_ids=["NA", "007", "7", "null"])
    assert lost["n_samples"] == 4 and lost["metrics"]["mse"]["n"] == 2 and lost["metrics"]["mse"]["coverage"] == 0.5


def test_text_cells_that_look_missing_are_text_and_only_empty_cells_are_missing(tmp_path):
    # pandas would read "N/A" and "None" as NaN: the edit types would merge and a judge's sentence vanish
    texts = ["N/A", "None", "null", "remove"]
    rows = [{"sample_id": f"s{i}", "seed": 0, "edit_type": t, "status": "ok", "error": None, "mse": 0.1 * (i + 1),
             "idcs": 3.0, "idcs_sentence": t, "idcs_status": "ok"} for i, t in enumerate(texts)]
    write_samples(tmp_path, rows, ["mse", "idcs"])
    frame = read_samples(tmp_path)
    jsonl = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert list(frame["edit_type"]) == texts == [r["edit_type"] for r in jsonl]
    assert list(frame["idcs_sentence"]) == texts and frame["error"].isna().all()  # an empty cell stays missing
    by_type = summarize(frame, {"mse": False}, sample_ids=[f"s{i}" for i in range(4)])["by_edit_type"]
    assert set(by_type) == set(texts) and by_type["N/A"]["metrics"]["mse"]["mean"] == pytest.approx(0.1)


def test_the_std_across_seeds_is_undefined_when_a_seeds_mean_is_infinite(tmp_path):
    # one seed reproduced a sample exactly (PSNR +inf): a std of the other seeds is not "across seeds"
    values = {("A", 0): math.inf, ("A", 1): 30.0, ("A", 2): 32.0, ("B", 0): 20.0, ("B", 1): 20.0, ("B", 2): 20.0}
    rows = [{"sample_id": sid, "seed": seed, "edit_type": "x", "status": "ok", "psnr": v} for (sid, seed), v in values.items()]
    write_samples(tmp_path, rows, ["psnr"])
    seeds = summarize(read_samples(tmp_path), {"psnr": True}, sample_ids=["A", "B"])["seeds"]["metrics"]["psnr"]
    assert seeds["per_seed_mean"] == {"0": "inf", "1": 25.0, "2": 26.0} and seeds["std_across_seeds"] == "nan"
    finite = {k: v for k, v in values.items() if k[0] == "B"}
    write_samples(tmp_path, [{"sample_id": sid, "seed": seed, "edit_type": "x", "status": "ok", "psnr": v + seed}
                             for (sid, seed), v in finite.items()], ["psnr"])
    seeds = summarize(read_samples(tmp_path), {"psnr": True}, sample_ids=["B"])["seeds"]["metrics"]["psnr"]
    assert seeds["std_across_seeds"] == pytest.approx(float(np.std([20.0, 21.0, 22.0], ddof=1)))


def test_with_several_seeds_coverage_counts_predictions(tmp_path):
    # Sample A has a value on 1 of its 3 seeds (the judge failed on two), B on all 3: A's mean rests on
    # one seed, so coverage is 4 of 6 predictions, not 2 of 2 samples; n (the CI's unit) stays 2.
    values = {("A", 0): 5.0, ("A", 1): math.nan, ("A", 2): math.nan, ("B", 0): 1.0, ("B", 1): 1.0, ("B", 2): 1.0}
    rows = [{"sample_id": sid, "seed": seed, "edit_type": "x", "status": "ok", "idcs": v} for (sid, seed), v in values.items()]
    write_samples(tmp_path, rows, ["idcs"])
    block = summarize(read_samples(tmp_path), {"idcs": True}, sample_ids=["A", "B"])["metrics"]["idcs"]
    assert block["n"] == 2 and block["mean"] == 3.0 and block["coverage"] == pytest.approx(4 / 6)
    one_seed = summarize(read_samples(tmp_path).query("seed == 0"), {"idcs": True}, sample_ids=["A", "B"])
    assert one_seed["metrics"]["idcs"]["coverage"] == 1.0


# --- §3 predictions and gallery stay inside their folders --------------------------------------------

def test_predictions_resolve_strictly_inside_the_folder(tmp_path, caplog):
    preds, outside = tmp_path / "preds", tmp_path / "outside"
    write_image(outside / "secret.png", 1)
    write_image(preds / "UPPER.PNG", 2)
    write_image(preds / "two.png", 3)
    write_image(preds / "two.JPG", 4)
    write_image(preds / "cat" / "1.png", 5)
    os.symlink(outside / "secret.png", preds / "link.png")
    ids = ["../outside/secret", str(outside / "secret"), "UPPER", "two", "cat/1", "link", "cat/../../outside/secret"]
    with caplog.at_level(logging.WARNING, logger="ciebench.scoring"):
        found = {p.sample_id: p for p in find_predictions(preds, ids)}
    for sample_id in ("../outside/secret", str(outside / "secret"), "link", "cat/../../outside/secret"):
        assert found[sample_id].path is None and found[sample_id].status == Status.MISSING, sample_id
    assert found["UPPER"].path.name == "UPPER.PNG"
    assert found["two"].path.name == "two.png"
    assert "using two.png, ignoring two.JPG" in caplog.text
    assert found["cat/1"].path == preds.resolve() / "cat" / "1.png"


def test_gallery_copies_nothing_from_outside_the_run(tmp_path, caplog):
    from ciebench.leaderboard import write_gallery

    from tests.support.leaderboard_runs import build_run

    run = build_run(tmp_path, "identity", "identity")
    write_image(tmp_path / "private" / "holiday.png", 9, size=(64, 48))
    frame = read_samples(run)
    frame.loc[0, "prediction"] = "../private/holiday.png"
    frame.loc[1, "prediction"] = str((tmp_path / "private" / "holiday.png").resolve())
    frame.to_csv(run / "samples.csv", index=False)
    with caplog.at_level(logging.WARNING):
        page = write_gallery([run], tmp_path / "gallery", full_images=True)
    assert caplog.text.count("outside the run's folders") == 2
    copied = [Image.open(p).size for p in (page.parent / "full").rglob("*.png")]
    assert (64, 48) not in copied


# --- §5 / §11 exit codes and one-line errors ---------------------------------------------------------

def test_exit_codes_tell_the_truth(tmp_path):
    ds = jsonl_dataset(tmp_path / "ds", ["NA", "b", "c", "d"])
    r = _evaluate("--editor", f"{HERE}:AlwaysFails", "--dataset", str(ds), "--out", str(tmp_path / "r1"), *FAST,
                  code=ExitCode.INCOMPLETE)
    assert "no sample succeeded (0 of 4)" in r.output
    r = _evaluate("--editor", f"{HERE}:FailsFirstId", "--dataset", str(ds), "--out", str(tmp_path / "r2"), *FAST)
    r = _evaluate("--editor", f"{HERE}:FailsFirstId", "--dataset", str(ds), "--out", str(tmp_path / "r2"), *FAST,
                  "--min-coverage", "0.9", code=ExitCode.INCOMPLETE)
    assert "covers 75.0% of samples, below --min-coverage 90.0%" in r.output
    _evaluate("--editor", f"{HERE}:FailsFirstId", "--dataset", str(ds), "--out", str(tmp_path / "r2"), *FAST,
              "--min-coverage", "0.75")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("")
    r = _evaluate("--editor", "identity", "--dataset", str(empty), "--out", str(tmp_path / "r3"), *FAST,
                  code=ExitCode.DATA)
    assert "no usable samples" in r.output
    # data validate agrees with evaluate: a dataset with nothing to evaluate is not valid (it exited 0)
    r = _cli("data", "validate", str(empty))
    assert r.exit_code == ExitCode.DATA and "error: dataset" in r.output and "no usable samples" in r.output
    unusable = jsonl_dataset(tmp_path / "unusable", ["a"])
    (unusable / "img0.png").unlink()  # its one sample is an error: still exit 3, not 1
    r = _cli("data", "validate", str(unusable))
    assert r.exit_code == ExitCode.DATA and "0 usable samples, 1 error(s)" in r.output
    preds = tmp_path / "nothing"
    preds.mkdir()
    r = _cli("score", "--dataset", str(ds), "--predictions", str(preds), "--out", str(tmp_path / "s"), *FAST,
             "--allow-missing")
    assert r.exit_code == ExitCode.INCOMPLETE and "no sample succeeded" in r.output, r.output
    assert _cli("evaluate", "--editor", "identity", "--out", str(tmp_path / "r4"), "--limit", "-1").exit_code == ExitCode.USAGE
    assert _cli("score", "--dataset", "mini", "--predictions", str(preds), "--out", str(tmp_path / "s2"),
                "--min-coverage", "2").exit_code == ExitCode.USAGE


def test_result_problems_only_demand_values_of_metrics_asked_for():
    from ciebench.results import result_problems

    summary = {"n_samples": 4, "status_counts": {"ok": 4},
               "metrics": {"psnr": {"n": 4, "coverage": 1.0}, "idcs": {"n": 0, "coverage": 0.0},
                           "locality_f1": {"n": 0, "coverage": 0.0}}}
    assert result_problems(summary, []) == []  # default metrics may be undefined everywhere (identity editor)
    assert result_problems(summary, ["idcs"]) == ["metric 'idcs' has no value for any sample"]
    summary["metrics"]["psnr"].update(n=3, coverage=0.75)
    assert result_problems(summary, [], min_coverage=0.8) == [
        "metric 'psnr' covers 75.0% of samples, below --min-coverage 80.0%"]
    assert result_problems({"n_samples": 0, "metrics": {}}, []) == ["the dataset has no samples to evaluate"]


def test_user_error_classes_map_to_documented_exit_codes():
    from ciebench.datasets import DatasetError
    from ciebench.datasets.release import ChecksumError
    from ciebench.distributed import DistributedError
    from ciebench.editor_config import EditorConfigError
    from ciebench.leaderboard import RunError as LeaderboardRunError
    from ciebench.metrics.protocols import UnknownProtocolError
    from ciebench.registry import RegistryError
    from ciebench.scoring import MetricNameError

    expected = {RegistryError: ExitCode.USAGE, EditorConfigError: ExitCode.USAGE, UnknownProtocolError: ExitCode.USAGE,
                MetricNameError: ExitCode.USAGE, LeaderboardRunError: ExitCode.USAGE, DatasetError: ExitCode.DATA,
                ChecksumError: ExitCode.INTEGRITY, DistributedError: ExitCode.ENVIRONMENT, OutputConflict: ExitCode.OUTPUT_CONFLICT}
    for cls, code in expected.items():
        assert issubclass(cls, CiebenchError) and cls.exit_code == code, cls
    # the old bases stay, so `except ValueError` / `except LookupError` elsewhere keep working
    assert issubclass(RegistryError, LookupError) and issubclass(UnknownProtocolError, ValueError)
    assert issubclass(DistributedError, RuntimeError) and issubclass(EnvironmentProblem, CiebenchError)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Guarantees"):]
    for code in ExitCode:
        assert re.search(rf"^\| `?{int(code)}`? \|", table, re.M), f"exit code {int(code)} not documented"


def test_one_line_errors_and_traceback_only_with_verbose(tmp_path, monkeypatch):
    import ciebench.runner

    r = _cli("evaluate", "--editor", "identity", "--out", str(tmp_path / "a"), "--metrics", "psnrr")
    assert r.exit_code == ExitCode.USAGE and "unknown metric 'psnrr'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "a").exists()  # refused before any work
    r = _cli("evaluate", "--editor", "identity", "--out", str(tmp_path / "b"), "--editor-config",
             str(tmp_path / "missing.yaml"), *FAST)
    assert r.exit_code == ExitCode.USAGE and "missing.yaml: no such file" in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.startswith("error:")]) == 1

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ciebench.runner, "atomic_write_bytes", full_disk)
    args = ["evaluate", "--editor", "identity", "--out", str(tmp_path / "c"), "--limit", "2", *FAST]
    r = _cli(*args)
    assert r.exit_code == ExitCode.ENVIRONMENT and "no space left on the device" in r.output, r.output
    assert "Traceback" not in r.output
    verbose = runner.invoke(app, ["-v", *args])
    assert verbose.exit_code == ExitCode.ENVIRONMENT and "Traceback" in verbose.output


def test_an_option_value_the_editor_config_rejects_is_a_one_line_usage_error(tmp_path):
    """A value the editor's Config validation refuses (its __post_init__ raising ValueError) is a bad
    command line, exit 2 naming the editor, for user and built-in editors alike; a ValueError from
    the editor's own constructor is a bug and keeps its traceback."""
    for editor, arg, says in [(f"{HERE}:Validated", "steps=0", "steps must be >= 1, not 0"),
                              ("cielr", "segmenter=foo", "segmenter must be one of"),
                              ("openai-images", "base_url=ftp://x", "base_url must start with http"),
                              ("instructpix2pix", "resolution_policy=x", "resolution_policy must be one of")]:
        r = _cli("evaluate", "--editor", editor, "--dataset", "mini", "--out", str(tmp_path / "r"), "--limit", "1",
                 "--editor-arg", arg, *FAST)
        assert r.exit_code == ExitCode.USAGE, (editor, r.output, r.exception)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert lines == [lines[0]] and lines[0].startswith(f"error: editor '{editor}': {says}"), r.output
        assert not (tmp_path / "r").exists()  # refused before any work
    assert _evaluate("--editor", f"{HERE}:Validated", "--dataset", "mini", "--out", str(tmp_path / "ok"), "--limit", "1",
                     "--editor-arg", "steps=3", *FAST)
    r = _cli("evaluate", "--editor", f"{HERE}:BrokenInit", "--dataset", "mini", "--out", str(tmp_path / "b"),
             "--limit", "1", *FAST)
    assert r.exit_code == 1 and isinstance(r.exception, ValueError) and "constructor" in str(r.exception)


def test_a_path_the_machine_refuses_is_one_line_and_exit_4_naming_it(tmp_path, monkeypatch):
    """--out under a regular file (unreachable for everyone, root included), and a write refused with
    EACCES: one line naming the path, exit 4, in every command that writes; a download or archive that
    cannot be read is a dataset error (exit 3) naming the source, as for the `ciebench` release."""
    import ciebench.verify

    ds = jsonl_dataset(tmp_path / "ds", ["a", "b"])
    run = tmp_path / "run"
    _evaluate("--editor", "identity", "--dataset", str(ds), "--out", str(run), *FAST)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for args in [("data", "prepare", str(ds), "--out", str(blocker / "ds")),
                 ("leaderboard", str(run), "--out", str(blocker / "board"), "--no-plots"),
                 ("export", str(run), "--format", "hub", "--out", str(blocker / "exp")),
                 ("evaluate", "--editor", "identity", "--dataset", str(ds), "--out", str(blocker / "run"), *FAST)]:
        r = _cli(*args)
        assert r.exit_code == ExitCode.ENVIRONMENT, (args, r.output, r.exception)
        assert "Traceback" not in r.output and str(blocker) in r.output and "not a directory" in r.output, r.output
        assert [line for line in r.output.splitlines() if line.strip()][0].startswith("error: "), r.output
        assert "finished samples are kept" not in r.output  # nothing was created to keep

    def refused(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(ciebench.verify, "atomic_write_json", refused)
    r = _cli("verify", str(run))
    assert r.exit_code == ExitCode.ENVIRONMENT and "Traceback" not in r.output, r.output
    assert f"{run}" in r.output and "permission denied" in r.output
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    for source in (f"file://{tmp_path}/missing.zip", str(corrupt)):
        r = _cli("data", "prepare", source, "--out", str(tmp_path / "prepared"))
        assert r.exit_code == ExitCode.DATA and "Traceback" not in r.output, r.output
        assert f"error: {source}: cannot download or unpack it" in r.output
        assert not (tmp_path / "prepared").exists()


def test_evaluate_points_at_kept_samples_only_when_the_run_folder_exists(tmp_path, monkeypatch):
    import ciebench.api

    def model_fails(*args, **kwargs):
        raise RuntimeError("the model cannot be loaded")

    monkeypatch.setattr(ciebench.api, "evaluate", model_fails)
    args = ("evaluate", "--editor", "identity", "--dataset", "mini", *FAST)
    r = _cli(*args, "--out", str(tmp_path / "never-made"))
    assert r.exit_code == ExitCode.ENVIRONMENT and "the model cannot be loaded" in r.output
    assert "kept" not in r.output and not (tmp_path / "never-made").exists()
    (tmp_path / "made").mkdir()
    r = _cli(*args, "--out", str(tmp_path / "made"))
    assert r.exit_code == ExitCode.ENVIRONMENT and f"finished samples are kept in {tmp_path / 'made'}" in r.output


# --- §6 editor outputs outside the valid range --------------------------------------------------------

def test_out_of_range_editor_outputs_get_a_status_not_clipping(tmp_path):
    from ciebench.images import check_image

    size = (4, 3)
    ok = np.full((3, 4, 3), 0.5)
    assert check_image(ok, size)[1] is None
    for bad in (ok + 0.6, ok - 0.6, np.full((3, 4, 3), -1, dtype=np.int16), np.full((3, 4, 3), 256, dtype=np.int32)):
        image, status, problem = check_image(bad, size)
        assert image is None and status == Status.OUT_OF_RANGE and "nothing was" in problem
    ids = ["float-high", "int-negative", "int-high", "clean"]
    ds = jsonl_dataset(tmp_path / "ds", ids)
    run = tmp_path / "run"
    _evaluate("--editor", f"{HERE}:BadOutputs", "--dataset", str(ds), "--out", str(run), *FAST)
    status = read_samples(run).set_index("sample_id")["status"].to_dict()
    assert status == {"float-high": "out_of_range", "int-negative": "out_of_range", "int-high": "out_of_range",
                      "clean": "ok"}



def test_pil_outputs_deeper_than_8_bits_get_the_array_rule_not_pillows_clipping(tmp_path):
    """Pillow's convert("RGB") clips I;16 / I values to 255 and truncates F values in [0, 1] to 0 or 1:
    a PIL output of those modes must get exactly what the same pixels get as an HxWx3 array."""
    from ciebench.images import check_image

    size = (4, 3)
    grey = np.array([[0, 1, 2, 3], [50, 100, 128, 200], [253, 254, 255, 7]], dtype=np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)  # a one-band image means this grey in every channel
    in_range = [  # (PIL image, the same pixels as an array)
        (Image.fromarray(grey.astype(np.float32) / 255), rgb.astype(np.float32) / 255),  # F in [0, 1]
        (Image.fromarray(grey.astype(np.uint16)), rgb.astype(np.uint16)),  # I;16 holding 8-bit levels
        (Image.fromarray(grey.astype(">u2")), rgb.astype(">u2")),  # I;16B
        (Image.fromarray(grey.astype(np.int32)), rgb.astype(np.int32)),  # I
    ]
    for pil, array in in_range:
        assert pil.mode in ("F", "I;16", "I;16B", "I")
        pil_image, pil_status, _ = check_image(pil, size)
        array_image, array_status, _ = check_image(array, size)
        assert pil_status is None and array_status is None, pil.mode
        # the levels themselves (a float grey image is not black, v / 255 * 255 = v), as the array path stores them
        assert np.array_equal(np.asarray(pil_image), rgb), pil.mode
        assert np.array_equal(np.asarray(array_image), rgb), pil.mode
    out_of_range = [
        (Image.fromarray(grey.astype(np.uint16) * 257), rgb.astype(np.uint16) * 257, "I;16"),  # 16-bit levels
        (Image.fromarray(grey.astype(np.float32)), rgb.astype(np.float32), "F"),  # floats as 0..255 levels
        (Image.fromarray(grey.astype(np.int32) - 40), rgb.astype(np.int32) - 40, "I"),  # negative
    ]
    for pil, array, mode in out_of_range:
        pil_image, pil_status, pil_problem = check_image(pil, size)
        array_image, array_status, array_problem = check_image(array, size)
        assert pil_image is None and array_image is None and pil_status == array_status == Status.OUT_OF_RANGE, mode
        assert f"mode {mode}" in pil_problem and pil_problem.replace(f" (a PIL image of mode {mode})", "") == array_problem
    nan = grey.astype(np.float32) / 255
    nan[0, 0] = np.nan
    assert check_image(Image.fromarray(nan), size)[1] == check_image(np.stack([nan] * 3, -1), size)[1] == Status.INVALID
    # 8-bit modes keep Pillow's exact conversion
    assert np.array_equal(np.asarray(check_image(Image.fromarray(grey), size)[0]), rgb)

    # through a run: the float grey is scored as that grey, the 16-bit one is out_of_range, not white
    ds = jsonl_dataset(tmp_path / "ds", ["pil-float-grey", "pil-16bit-grey"])
    run = tmp_path / "run"
    _evaluate("--editor", f"{HERE}:BadOutputs", "--dataset", str(ds), "--out", str(run), *FAST)
    frame = read_samples(run).set_index("sample_id")
    assert frame.loc["pil-float-grey", "status"] == "ok"
    assert frame.loc["pil-16bit-grey", "status"] == "out_of_range" and "mode I;16" in frame.loc["pil-16bit-grey", "error"]
    source_grey = np.asarray(Image.open(ds / "img0.png").convert("L"))
    stored = np.asarray(Image.open(run / "images" / f"{file_stem('pil-float-grey', 0)}.png"))
    assert np.array_equal(stored, np.stack([source_grey] * 3, axis=-1))
    assert not (run / "images" / f"{file_stem('pil-16bit-grey', 0)}.png").exists()

# --- §8 runs never get stuck -------------------------------------------------------------------------

def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_a_bad_trace_fails_its_sample_only_and_traces_are_standard_json(tmp_path):
    ds = jsonl_dataset(tmp_path / "ds", ["object-trace", "nan-trace", "clean"])
    run = tmp_path / "run"
    _evaluate("--editor", f"{HERE}:BadOutputs", "--dataset", str(ds), "--out", str(run), *FAST)
    frame = read_samples(run).set_index("sample_id")
    assert frame.loc["object-trace", "status"] == Status.RECORD_ERROR and "trace" in frame.loc["object-trace", "error"]
    assert frame.loc["nan-trace", "status"] == Status.OK and frame.loc["clean", "status"] == Status.OK
    kept = _strict_json((run / "traces" / f"{file_stem('object-trace', 0)}.json").read_text())
    assert "object object at" in kept["unrecorded_trace"]
    nan_trace = _strict_json((run / "traces" / f"{file_stem('nan-trace', 0)}.json").read_text())
    assert nan_trace == {"score": "nan", "gain": [1.0, "inf"]}
    for path in run.rglob("*.json"):
        _strict_json(path.read_text())
    # the rerun does not crash on the same sample: it resumes it as a recorded failure
    again = _evaluate("--editor", f"{HERE}:BadOutputs", "--dataset", str(ds), "--out", str(run), *FAST)
    assert "resumed 3" in again.output


def test_second_writer_refused_and_sigkilled_holder_does_not_block(tmp_path):
    out = tmp_path / "run"
    _evaluate("--editor", "identity", "--out", str(out), "--limit", "1", *FAST)
    holder = hold_lock(out)
    try:
        r = _cli("evaluate", "--editor", "identity", "--out", str(out), "--limit", "1", *FAST)
        assert r.exit_code == ExitCode.OUTPUT_CONFLICT and f"pid {holder.pid}" in r.output, r.output
        r = _cli("leaderboard", str(out), "--out", str(out))
        assert r.exit_code == ExitCode.OUTPUT_CONFLICT
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with outdir.lock(out):  # the kernel released the dead holder's lock
        pass
    _evaluate("--editor", "identity", "--out", str(out), "--limit", "1", *FAST)


def test_resume_ignores_the_spelling_of_the_dataset_path_and_cleans_temp_files(tmp_path, monkeypatch):
    jsonl_dataset(tmp_path / "ds", ["a", "b"])
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    first = _evaluate("--editor", "identity", "--dataset", "ds", "--out", str(run), *FAST)
    assert "generated 2" in first.output
    stale = run / "images" / ".a__s0.png.k3j4.tmp"
    stale.write_bytes(b"half")
    for spelling in ("./ds", str(tmp_path / "ds") + "/"):
        again = _evaluate("--editor", "identity", "--dataset", spelling, "--out", str(run), *FAST)
        assert "generated 0, resumed 2" in again.output, (spelling, again.output)
    assert not stale.exists()


# --- §10 leaderboard --------------------------------------------------------------------------------

def _synthetic_run(root: Path, name: str, editor: str, psnr: dict[str, float]) -> Path:
    run = root / name
    rows = [{"sample_id": i, "seed": 0, "edit_type": "change", "status": "ok" if v == v else "edit_error", "psnr": v}
            for i, v in psnr.items()]
    write_samples(run, rows, ["psnr"])
    (run / "spec.json").write_text(json.dumps({"editor": {"name": editor, "class": "x:Y", "version": "0", "config": {}},
                                               "dataset": {"spec": "synthetic", "revision": "r1", "n": len(psnr)},
                                               "protocol": {"name": "cielr", "hash": "h"}}))
    return run


def test_leaderboard_escapes_names_neutralises_formulas_and_ranks_on_shared_samples(tmp_path):
    nan = float("nan")
    complete = _synthetic_run(tmp_path, "complete", "<img src=x onerror=alert(1)>", {"e1": 30, "e2": 30, "e3": 30, "hard": 5})
    partial = _synthetic_run(tmp_path, "partial", "=HYPERLINK(\"http://x\")", {"e1": 28, "e2": 28, "e3": 28, "hard": nan})
    board = tmp_path / "board"
    r = _cli("leaderboard", str(complete), str(partial), "--out", str(board), "--no-plots", "--no-gallery")
    assert r.exit_code == 0, r.output
    md = (board / "leaderboard.md").read_text(encoding="utf-8")
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    for name in ("leaderboard.csv", "significance.csv", "leaderboard__cielr__synthetic.csv"):
        text = (board / name).read_text(encoding="utf-8")
        assert not re.search(r'(^|,)"?[=+@]', text, re.M), name
        assert "'=HYPERLINK" in text, name
    lb = pd.read_csv(board / "leaderboard.csv", keep_default_na=False)
    # own means: partial 28 > complete 23.75; on the 3 shared samples complete (30) beats partial (28)
    assert list(lb["editor"]) == ["<img src=x onerror=alert(1)>", "'=HYPERLINK(\"http://x\")"]
    assert list(lb["rank"]) == [1, 2] and list(lb["partial"]) == [False, True]
    assert list(lb["rank_value"]) == [30.0, 28.0] and list(lb["rank_n_shared"]) == [3, 3]
    assert "† partial" in md and "the 3 sample(s) all runs have a value for" in md
    row = [line for line in md.splitlines() if "HYPERLINK" in line][0]
    assert "75% †" in row


# --- issue 17 §4: one status vocabulary ---------------------------------------------------------------

def test_row_statuses_are_one_enum_with_the_same_strings():
    assert {s.value for s in Status} >= {"ok", "missing", "corrupt", "edit_error", "invalid", "metric_error",
                                          "unknown_sample", "out_of_range", "record_error"}
    assert Status.OK == "ok" and f"{Status.MISSING}" == "missing" and json.dumps(Status.CORRUPT) == '"corrupt"'
    assert set(Status.describe()) == {s.value for s in Status}
