"""The editor API, registry and resumable runner, end to end through `ciebench evaluate`."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import ciebench
from ciebench.cli import app
from ciebench.errors import ExitCode
from ciebench.registry import RegistryError, get_editor_class

REPO = Path(__file__).resolve().parents[1]
FAST = ["--metrics", "psnr,mse,ssim"]
runner = CliRunner()


def _evaluate(*args: str):
    result = runner.invoke(app, ["evaluate", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _samples(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "samples.csv", dtype={"sample_id": str})


def test_identity_on_mini_gives_infinite_psnr_and_writes_the_run_layout(tmp_path: Path):
    run = tmp_path / "identity"
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), *FAST)
    spec = json.loads((run / "spec.json").read_text())
    assert spec["editor"]["name"] == "identity" and spec["dataset"]["n"] == 9 and spec["seeds"] == [0]
    frame = _samples(run)
    assert len(frame) == 9 and (frame["status"] == "ok").all()
    assert np.isinf(frame["psnr"]).all() and (frame["mse"] == 0).all() and np.allclose(frame["ssim"], 1.0)
    dataset = {r["id"]: r for r in ciebench.load_dataset("mini")}
    for row in frame.itertuples():
        saved = np.asarray(Image.open(run / row.prediction))
        assert np.array_equal(saved, np.asarray(dataset[row.sample_id]["image"].convert("RGB")))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["psnr"]["mean"] == "inf" and summary["metrics"]["mse"]["coverage"] == 1.0
    assert summary["run"]["editor"]["name"] == "identity" and "torch" in summary["versions"]


def test_faulty_editor_gives_three_clear_statuses_and_scores_the_rest(tmp_path: Path):
    from tests.support.editors_for_tests import FaultyEditor

    run = tmp_path / "faulty"
    _evaluate("--editor", "tests.support.editors_for_tests:FaultyEditor", "--dataset", "mini", "--out", str(run),
              "--batch-size", "4", *FAST)
    frame = _samples(run).set_index("sample_id")
    assert frame.loc[FaultyEditor.RAISE, "status"] == "edit_error"
    assert "simulated CUDA error" in frame.loc[FaultyEditor.RAISE, "error"]
    assert frame.loc[FaultyEditor.WRONG_SIZE, "status"] == "invalid"
    assert "64x48" in frame.loc[FaultyEditor.WRONG_SIZE, "error"]
    assert frame.loc[FaultyEditor.NAN, "status"] == "invalid" and "NaN" in frame.loc[FaultyEditor.NAN, "error"]
    rest = frame[frame["status"] == "ok"]
    assert len(rest) == 6 and np.isinf(rest["psnr"]).all() and (rest["mse"] == 0).all()
    bad = frame[frame["status"] != "ok"]
    assert bad["psnr"].isna().all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["mse"]["coverage"] == pytest.approx(6 / 9)


def test_same_spec_and_seed_give_byte_identical_images_and_seeds_summary(tmp_path: Path):
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        _evaluate("--editor", "tests.support.editors_for_tests:NoisyEditor", "--dataset", "mini", "--out", str(run),
                  "--seeds", "0,1", "--limit", "3", *FAST)
        runs.append(run)
    files = sorted(p.name for p in (runs[0] / "images").iterdir())
    assert len(files) == 6 and all("__s" in f for f in files)
    for f in files:
        assert (runs[0] / "images" / f).read_bytes() == (runs[1] / "images" / f).read_bytes()
    # different run seeds give different images; the derived seed is in the trace
    a0 = (runs[0] / "images" / files[0]).read_bytes()
    a1 = (runs[0] / "images" / files[1]).read_bytes()
    assert a0 != a1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["seeds"]["seeds"] == [0, 1]
    assert set(summary["seeds"]["metrics"]["psnr"]["per_seed_mean"]) == {"0", "1"}
    assert summary["seeds"]["metrics"]["psnr"]["std_across_seeds"] > 0


def test_a_different_spec_in_the_same_folder_is_refused_unless_overwrite(tmp_path: Path):
    run = tmp_path / "run"
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), "--limit", "2", *FAST)
    result = runner.invoke(app, ["evaluate", "--editor", "identity", "--dataset", "mini", "--out", str(run), "--limit", "3", *FAST])
    assert result.exit_code == ExitCode.OUTPUT_CONFLICT and "different spec" in result.output  # exit codes: ciebench.errors
    # the refusal names what the user changed (--limit 2 -> 3, hence 3 samples), not only two hashes
    message = " ".join(result.output.split())
    assert "limit: 2 -> 3" in message and "dataset.n: 2 -> 3" in message, message
    assert "seeds" not in message and "editor" not in message.split("recorded -> now:")[1].split("(")[0]
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), "--limit", "3", "--overwrite", *FAST)
    assert len(_samples(run)) == 3


def test_resume_skips_finished_samples_and_redoes_a_tampered_image(tmp_path: Path):
    run = tmp_path / "run"
    log = tmp_path / "calls.txt"
    args = ["--editor", "tests.support.editors_for_tests:CountingEditor", "--editor-arg", f"log={log}",
            "--dataset", "mini", "--out", str(run), *FAST]
    _evaluate(*args)
    assert len(log.read_text().split()) == 9
    victim = sorted((run / "images").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])  # a partial file is never trusted
    result = _evaluate(*args)
    assert "generated 1, resumed 8" in result.output
    assert len(log.read_text().split()) == 10


def test_a_resume_elsewhere_records_each_invocation_and_says_what_differs(tmp_path: Path, monkeypatch, caplog):
    # The spec decides what a run computes, but a resume may run on another device, batch size or
    # package versions: before, spec.json kept the first invocation's notes and nothing else.
    import ciebench.runner as runner_module

    run = tmp_path / "run"
    args = ["--editor", "identity", "--dataset", "mini", "--out", str(run), "--limit", "3", *FAST]
    _evaluate(*args, "--batch-size", "1")
    first = json.loads((run / "summary.json").read_text())["run"]["provenance"]
    assert [i["batch_size"] for i in first["invocations"]] == [1] and first["differs"] == []
    for record in sorted((run / "records").iterdir())[:2]:
        assert json.loads(record.read_text())["invocation"] == 0
        record.unlink()
    real = runner_module.package_versions
    monkeypatch.setattr(runner_module, "package_versions", lambda: {**real(), "torch": "9.9.9"})
    with caplog.at_level("WARNING", logger="ciebench.runner"):
        result = _evaluate(*args, "--batch-size", "2")
    assert "generated 2, resumed 1" in result.output
    invocations = json.loads((run / "invocations.json").read_text())
    assert [(i["number"], i["batch_size"], i["versions"]["torch"]) for i in invocations] == \
        [(0, 1, real()["torch"]), (1, 2, "9.9.9")]
    assert sorted(json.loads(r.read_text())["invocation"] for r in (run / "records").iterdir()) == [0, 1, 1]
    provenance = json.loads((run / "summary.json").read_text())["run"]["provenance"]
    assert provenance["differs"] == ["batch_size", "versions.torch"] and len(provenance["invocations"]) == 2
    assert "differ in batch_size, versions.torch" in caplog.text


def test_an_unreadable_invocations_file_is_kept_aside_and_numbering_goes_past_every_record(tmp_path: Path):
    run = tmp_path / "run"
    args = ["--editor", "identity", "--dataset", "mini", "--out", str(run), "--limit", "2", *FAST]
    _evaluate(*args)
    _evaluate(*args)  # nothing left to generate: invocation 1
    (run / "invocations.json").write_text("{torn")
    sorted((run / "records").iterdir())[0].unlink()
    _evaluate(*args)
    assert (run / "invocations.json.unreadable").read_text() == "{torn"
    entries = json.loads((run / "invocations.json").read_text())
    assert [e["number"] for e in entries] == [1]  # past invocation 0, the one the kept record names
    assert sorted(json.loads(r.read_text())["invocation"] for r in (run / "records").iterdir()) == [0, 1]
    provenance = json.loads((run / "summary.json").read_text())["run"]["provenance"]
    assert provenance.get("unrecorded") is True and [i["number"] for i in provenance["invocations"]] == [1]
    _evaluate(*args, "--overwrite", "--limit", "1")  # another spec: the run's own files go, the kept file too
    assert not (run / "invocations.json.unreadable").exists()


def test_the_editors_model_commits_are_recorded_and_a_moved_main_is_said(tmp_path: Path):
    # The editors load revision=None (the repository's main, which moves): the spec alone cannot say
    # which snapshot made the images.
    from tests.support.editors_for_tests import HubNoisyEditor
    from tests.support.tinyhub import point_main

    run = tmp_path / "run"
    args = ["--editor", "tests.support.editors_for_tests:HubNoisyEditor", "--dataset", "mini", "--out", str(run),
            "--limit", "2", *FAST]
    key = f"{HubNoisyEditor.HUB_MODEL}@main"
    old, new = "a" * 40, "b" * 40
    point_main(HubNoisyEditor.HUB_MODEL, old)
    _evaluate(*args)
    assert json.loads((run / "invocations.json").read_text())[0]["editor_models"] == {key: old}
    sorted((run / "records").iterdir())[0].unlink()
    point_main(HubNoisyEditor.HUB_MODEL, new)  # the hub's main moved, and the cache followed it
    _evaluate(*args)
    assert [i["editor_models"] for i in json.loads((run / "invocations.json").read_text())] == [{key: old}, {key: new}]
    provenance = json.loads((run / "summary.json").read_text())["run"]["provenance"]
    assert provenance["differs"] == [f"editor_models.{key}"]


def test_model_commits_from_several_machines_are_merged_without_hiding_a_difference():
    from ciebench.runner import merge_editor_models

    a, b = "a" * 40, "b" * 40
    same = [("node1", {"m@main": a, "n@v1": b}), ("node2", {"m@main": a, "n@v1": b})]
    assert merge_editor_models(same) == {"m@main": a, "n@v1": b}
    mixed = [("node1", {"m@main": a}), ("node2", {"m@main": b}), ("node3", {"m@main": a})]
    assert merge_editor_models(mixed) == {"m@main": f"differs between machines: {a} on node1, node3; {b} on node2"}
    # a machine that could not list the editor's models adds nothing; none at all is unknown (None)
    assert merge_editor_models([("node1", None), ("node2", {"m@main": a})]) == {"m@main": a}
    assert merge_editor_models([("node1", None)]) is None


def test_sigkill_part_way_then_rerun_finishes_every_sample_once(tmp_path: Path):
    run = tmp_path / "run"
    log = tmp_path / "calls.txt"
    cmd = [sys.executable, "-m", "ciebench", "evaluate", "--editor", "tests.support.editors_for_tests:CountingEditor",
           "--editor-arg", f"log={log}", "--editor-arg", "delay=0.4", "--dataset", "mini", "--out", str(run), *FAST]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and len(log.read_text().split()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = log.read_text().split()
    assert 4 <= len(first) < 9
    done_before = {p.stem for p in (run / "records").iterdir()}
    assert not (run / "samples.csv").exists()

    result = subprocess.run([*cmd[:-len(FAST)], *FAST], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().split()
    second = calls[len(first):]
    finished_ids = {stem.rsplit("__s", 1)[0] for stem in done_before}
    assert not finished_ids & set(second), "finished samples were regenerated"
    frame = _samples(run)
    assert len(frame) == 9 and (frame["status"] == "ok").all() and frame["sample_id"].is_unique
    for path in (run / "images").iterdir():
        Image.open(path).load()  # no corrupt image
    assert not list(run.rglob("*.tmp"))


def test_registry_entry_point_module_class_and_did_you_mean(tmp_path: Path, monkeypatch):
    # a separate "installed" distribution that declares an editor through the entry-point group
    site = tmp_path / "site"
    pkg = site / "ciebench_plugin_demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import ciebench\n\n"
        "class Flip(ciebench.Editor):\n"
        "    def edit(self, requests):\n"
        "        return [ciebench.EditResult(image=r.image.transpose(0)) for r in requests]\n")
    dist = site / "ciebench_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ciebench-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ciebench.editors]\nflip = ciebench_plugin_demo:Flip\n")
    monkeypatch.syspath_prepend(str(site))
    cls = get_editor_class("flip")
    assert cls.__name__ == "Flip"
    run = tmp_path / "flip"
    _evaluate("--editor", "flip", "--dataset", "mini", "--out", str(run), "--limit", "2", *FAST)
    frame = _samples(run)
    assert (frame["status"] == "ok").all() and np.isfinite(frame["psnr"]).all()
    assert "flip" in runner.invoke(app, ["editors"]).output

    assert get_editor_class("tests.support.editors_for_tests:NoisyEditor").__name__ == "NoisyEditor"
    with pytest.raises(RegistryError, match="Did you mean 'instructpix2pix'"):
        get_editor_class("instructpix2pi")
    result = runner.invoke(app, ["evaluate", "--editor", "identiti", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "Did you mean 'identity'" in result.output


def test_editor_args_are_typed_by_the_config():
    from ciebench.editor_config import EditorConfigError, build_editor

    editor = build_editor("instructpix2pix", ["steps=20", "guidance_scale=5", "revision=none"])
    assert editor.config.steps == 20 and editor.config.guidance_scale == 5.0 and editor.config.revision is None
    with pytest.raises(EditorConfigError, match="Did you mean 'steps'"):
        build_editor("instructpix2pix", ["step=3"])
    with pytest.raises(EditorConfigError, match="cannot read 'many' as int"):
        build_editor("instructpix2pix", ["steps=many"])


def test_readme_custom_editor_example_runs(tmp_path: Path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- custom-editor-example -->")
    block = readme[start:].split("```python", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) < 20
    (tmp_path / "my_editor.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "mine"
    _evaluate("--editor", "my_editor:Grayscale", "--dataset", "mini", "--out", str(run), "--limit", "2", *FAST)
    assert (_samples(run)["status"] == "ok").all()


def test_the_editor_is_closed_before_scoring_starts(tmp_path, monkeypatch):
    """Generation is over before scoring: the editor's models are released first, so the scoring
    models get their memory (and a closed editor loads again if used later)."""
    import ciebench.runner as runner_mod
    from ciebench.datasets import read_dataset
    from ciebench.scoring import ScoreOptions

    from tests.support.editors_for_tests import CountingEditor

    events = []

    class Closing(CountingEditor):
        def close(self) -> None:
            events.append("close")

    real_score = runner_mod.score

    def score(*args, **kwargs):
        events.append("score")
        return real_score(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "score", score)
    options = runner_mod.RunOptions(limit=2, progress=False, score=ScoreOptions(protocol="exact", metrics=("mse",)))
    runner_mod.run(Closing(), read_dataset("mini"), tmp_path / "run", options)
    assert events == ["close", "score"]


def test_a_refused_benchmark_resume_names_what_differs_and_survives_a_corrupt_spec(tmp_path: Path):
    from ciebench.benchmarks.run import prepare_run
    from ciebench.errors import OutputConflict

    recorded = {"benchmark": "kris", "judge": {"model": "gpt-4o", "passes": 1}, "seeds": [0]}
    prepare_run(tmp_path, recorded, overwrite=False)
    prepare_run(tmp_path, dict(recorded), overwrite=False)  # the same spec resumes
    with pytest.raises(OutputConflict) as refused:
        prepare_run(tmp_path, {**recorded, "judge": {"model": "gpt-4.1", "passes": 1}}, overwrite=False)
    assert 'judge.model: "gpt-4o" -> "gpt-4.1"' in str(refused.value) and "passes" not in str(refused.value)
    (tmp_path / "spec.json").write_text("{truncated")
    with pytest.raises(OutputConflict, match="unreadable"):
        prepare_run(tmp_path, recorded, overwrite=False)


def test_the_printed_summary_names_the_protocol_that_decided_the_numbers(tmp_path: Path):
    from ciebench.metrics.protocols import PROTOCOLS

    result = _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(tmp_path / "run"), "--limit", "2",
                       "--protocol", "smartedit", *FAST)
    assert f"protocol smartedit ({PROTOCOLS['smartedit'].hash}) on mini" in result.output and "2 samples" in result.output


def test_settings_that_select_the_same_run_resume_it(tmp_path: Path):
    """The metrics' order, a repeated metric, a --limit at or past the dataset's size and a YAML option
    typed as --editor-arg types it do not change what a run computes: they resume it."""
    import yaml

    run = tmp_path / "run"
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), "--metrics", "mse,psnr")
    header = (run / "samples.csv").read_text().splitlines()[0].split(",")
    assert header.index("psnr") < header.index("mse")  # the catalogue's order, whatever order was asked
    for args in (["--metrics", "psnr,mse"], ["--metrics", "mse,psnr,psnr"], ["--metrics", "psnr,mse", "--limit", "9"],
                 ["--metrics", "psnr,mse", "--limit", "1000"]):
        result = _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), *args)
        assert "generated 0, resumed 9" in result.output, (args, result.output)
    assert (run / "samples.csv").read_text().splitlines()[0].split(",").count("psnr") == 1

    counting = "tests.support.editors_for_tests:CountingEditor"
    (tmp_path / "opts.yaml").write_text(yaml.safe_dump({"delay": 0}))  # an int for the float field
    typed = tmp_path / "typed"
    _evaluate("--editor", counting, "--editor-arg", "delay=0", "--dataset", "mini", "--limit", "2", "--out", str(typed), *FAST)
    result = _evaluate("--editor", counting, "--editor-config", str(tmp_path / "opts.yaml"), "--dataset", "mini",
                       "--limit", "2", "--out", str(typed), *FAST)
    assert "generated 0, resumed 2" in result.output
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"delay": [1]}))
    bad = runner.invoke(app, ["evaluate", "--editor", counting, "--editor-config", str(tmp_path / "bad.yaml"),
                              "--dataset", "mini", "--out", str(tmp_path / "bad"), *FAST])
    assert bad.exit_code == 2 and "delay" in bad.output


def test_a_run_recorded_with_a_limit_past_the_end_and_metrics_as_asked_still_resumes(tmp_path: Path):
    # what an earlier ciebench wrote for `--limit 1000 --metrics mse,psnr` on mini (9 samples)
    from ciebench.io import stable_hash
    from ciebench.spec import decided_fields

    run = tmp_path / "run"
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), "--metrics", "psnr,mse")
    spec = json.loads((run / "spec.json").read_text())
    old = {**spec, "limit": 1000, "metrics": ["mse", "psnr"]}
    old["spec_hash"] = stable_hash(decided_fields(old))
    (run / "spec.json").write_text(json.dumps(old))
    result = _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), "--metrics", "mse,psnr",
                       "--limit", "1000")
    assert "generated 0, resumed 9" in result.output
    assert json.loads((run / "spec.json").read_text())["spec_hash"] == spec["spec_hash"]  # recorded as now


def test_an_editor_that_breaks_the_return_contract_is_told_so_per_sample(tmp_path: Path):
    import ciebench

    class ReturnsImages(ciebench.Editor):
        name = "returns-images"

        def edit(self, requests):
            return [r.image for r in requests]

    class ReturnsNone(ciebench.Editor):
        name = "returns-none"

        def edit(self, requests):
            return None

    for editor, words in ((ReturnsImages(), "item 0 is PIL.Image.Image"), (ReturnsNone(), "it returned builtins.NoneType")):
        result = ciebench.evaluate(editor, "mini", tmp_path / editor.name, limit=2, progress=False, metrics=["psnr"])
        errors = [row["error"] for row in result.rows]
        assert len(errors) == 2 and all("must return" in e and words in e for e in errors), errors


def test_a_run_whose_yaml_option_an_earlier_ciebench_kept_as_an_int_still_resumes(tmp_path: Path):
    # before options from YAML were typed by their field, `delay: 0` for a float field was recorded as 0
    import yaml

    from ciebench.io import stable_hash
    from ciebench.spec import decided_fields, spec_differences

    counting = "tests.support.editors_for_tests:CountingEditor"
    (tmp_path / "opts.yaml").write_text(yaml.safe_dump({"delay": 0}))
    run = tmp_path / "run"
    args = ["--editor", counting, "--editor-config", str(tmp_path / "opts.yaml"), "--dataset", "mini", "--limit", "2",
            "--out", str(run), *FAST]
    _evaluate(*args)
    spec = json.loads((run / "spec.json").read_text())
    assert spec["editor"]["config"]["delay"] == 0.0 and isinstance(spec["editor"]["config"]["delay"], float)
    old = json.loads(json.dumps(spec))
    old["editor"]["config"]["delay"] = 0
    old["spec_hash"] = stable_hash(decided_fields(old))
    assert old["spec_hash"] != spec["spec_hash"]  # 0 and 0.0 hash apart: the old folder needs the allowance
    (run / "spec.json").write_text(json.dumps(old))
    assert "generated 0, resumed 2" in _evaluate(*args).output
    assert json.loads((run / "spec.json").read_text())["spec_hash"] == spec["spec_hash"]
    # a refusal names a value that differs only in its JSON type, never "unreadable"
    assert spec_differences({"config": {"delay": 1}}, {"config": {"delay": 1.0}}) == ["config.delay: 1 -> 1.0"]


def test_a_resumed_run_records_the_config_hash_as_now(tmp_path: Path):
    run = tmp_path / "run"
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), "--limit", "2", *FAST)
    spec = json.loads((run / "spec.json").read_text())
    (run / "spec.json").write_text(json.dumps({**spec, "editor_config_hash": "0123456789abcdef"}))  # an older formula's
    _evaluate("--editor", "identity", "--dataset", "mini", "--out", str(run), "--limit", "2", *FAST)
    assert json.loads((run / "spec.json").read_text())["editor_config_hash"] == spec["editor_config_hash"]
