"""`ciebench export RUN --format hub`: the run as a Hub dataset that plain `datasets` reads, that
`ciebench score --predictions hf:...` re-scores (a local folder stands in for the hub), and whose rows
re-aggregate without calling a judge."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from tests.support.noisy_run import evaluate_noisy
from tests.support.llm_server import json_reply, reply, serve_llm

runner = CliRunner()
SENTENCE = "The left half of the picture became noisy."


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    run = root / "noisy"
    with serve_llm() as server:
        server.on(has_images=True, then=reply(SENTENCE, model="vlm-served-1"))
        server.on(has_images=False, then=json_reply({"score": 4}, model="llm-served-1"))
        side = {"backend": "openai", "base_url": server.base_url, "api_key_env": None, "model": "judge-m"}
        judge = root / "judge.yaml"
        judge.write_text(yaml.safe_dump({"vlm": side, "llm": side}))
        return evaluate_noisy(run, 3, "psnr,ssim,idcs", "--judge", str(judge), env={"CIEBENCH_CACHE": str(root / "cache")})


@pytest.fixture(scope="module")
def exported(judged_run: Path) -> Path:
    out = judged_run.parent / "exported"
    result = runner.invoke(app, ["export", str(judged_run), "--format", "hub", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_plain_datasets_reads_the_export_with_images_verdicts_and_traces(judged_run: Path, exported: Path):
    ds = datasets.load_dataset(str(exported), split="test")
    samples = pd.read_csv(judged_run / "samples.csv", dtype={"sample_id": str})
    assert len(ds) == len(samples) == 3
    for row in ds:
        src = samples[samples["sample_id"] == row["sample_id"]].iloc[0]
        with Image.open(judged_run / src["prediction"]) as original:
            assert np.array_equal(np.asarray(row["image"]), np.asarray(original))
        assert row["psnr"] == pytest.approx(src["psnr"], rel=1e-9) and row["idcs"] == src["idcs"]
        assert row["idcs_sentence"] == SENTENCE and row["idcs_status"] == "ok"
        assert json.loads(row["trace"])["steps"] == ["noise"]
    header = yaml.safe_load((exported / "README.md").read_text().split("---\n", 2)[1])
    assert datasets.Features._from_yaml_list(header["dataset_info"]["features"]) == ds.features
    judge = header["ciebench"]["judge"]
    assert judge["vlm"] == "judge-m" and judge["hash"] and judge["prompts"]
    assert (exported / "run" / "spec.json").read_bytes() == (judged_run / "spec.json").read_bytes()


def test_rows_re_aggregate_without_a_judge(judged_run: Path, exported: Path):
    from ciebench.results import summarize

    frame = datasets.load_dataset(str(exported), split="test").remove_columns(["image", "trace"]).to_pandas()
    fresh = summarize(frame, {"idcs": True, "psnr": True})
    recorded = json.loads((judged_run / "summary.json").read_text())
    assert fresh["metrics"]["idcs"]["mean"] == recorded["metrics"]["idcs"]["mean"]
    assert fresh["metrics"]["psnr"]["mean"] == pytest.approx(recorded["metrics"]["psnr"]["mean"], rel=1e-12)


def test_score_re_scores_an_exported_run(judged_run: Path, exported: Path, tmp_path: Path):
    out = tmp_path / "rescored"
    result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", f"hf:{exported}", "--limit", "3",
                                 "--metrics", "psnr,ssim", "--out", str(out)],
                           env={"CIEBENCH_CACHE": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    again = pd.read_csv(out / "samples.csv", dtype={"sample_id": str}).set_index("sample_id")
    original = pd.read_csv(judged_run / "samples.csv", dtype={"sample_id": str}).set_index("sample_id")
    for sample_id in original.index:
        assert again.loc[sample_id, "psnr"] == pytest.approx(original.loc[sample_id, "psnr"], rel=1e-9)
        assert again.loc[sample_id, "prediction_sha256"] == original.loc[sample_id, "prediction_sha256"]


def test_two_scorings_unpacking_one_export_at_once_leave_the_first_copy_in_place(exported: Path, tmp_path: Path,
                                                                                 monkeypatch):
    """The unpacked export is a shared cache entry: a second process finishing it while a first already
    reads it must not swap the first's folder away (its files would vanish under that score)."""
    from ciebench import export, outdir

    cache = tmp_path / "cache"
    real_staged = outdir.staged
    first: dict = {}

    @contextlib.contextmanager
    def racing(target, **kwargs):  # another process completes the same entry while this one fills its copy
        with real_staged(target, **kwargs) as staging:
            yield staging
            if not first:
                first["started"] = True
                folder = export.materialize_predictions(f"hf:{exported}", cache)[0]
                first.update(folder=folder, inode=folder.stat().st_ino)

    monkeypatch.setattr(outdir, "staged", racing)
    folder, _ = export.materialize_predictions(f"hf:{exported}", cache)
    assert folder == first["folder"] and folder.stat().st_ino == first["inode"]  # the first copy stayed
    assert (folder / ".complete").is_file() and not list(folder.parent.glob(".*staging*"))


def test_score_of_a_hub_export_records_where_the_predictions_came_from(judged_run: Path, exported: Path,
                                                                      tmp_path: Path, monkeypatch):
    """spec.json names the `hf:` export and the commit it resolved to, not only the cache folder the images
    were unpacked into; the cache folder stays `predictions` (the gallery reads it) and no spec hash moves."""
    import shutil

    from tests.support.tinyhub import publish

    snapshot = publish("ciebench-tests/exported-run", lambda d: shutil.copytree(exported, d, dirs_exist_ok=True),
                       repo_type="dataset")
    real = datasets.load_dataset

    def from_the_hub_cache(name, revision=None, split=None):
        # datasets reads a hub repo from the snapshot hf_hub_download put into the hub cache; it cannot
        # load one offline without an earlier online load, so the test reads that snapshot directly
        assert (name, revision) == ("ciebench-tests/exported-run", "main")
        return real(str(snapshot), split=split)

    monkeypatch.setattr(datasets, "load_dataset", from_the_hub_cache)
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rescored"
    result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", "hf:ciebench-tests/exported-run@main",
                                 "--limit", "3", "--metrics", "psnr", "--out", str(out)])
    assert result.exit_code == 0, result.output
    spec = json.loads((out / "spec.json").read_text())
    source = spec["predictions_source"]
    assert source["spec"] == "hf:ciebench-tests/exported-run@main" and source["commit"] == snapshot.name
    assert source["fingerprint"]
    assert Path(spec["predictions"]).is_relative_to(tmp_path / "cache")
    assert len(list(Path(spec["predictions"]).glob("*.png"))) == 3
    # the same export from a local folder: no hub commit to name
    monkeypatch.setattr(datasets, "load_dataset", real)
    local = tmp_path / "local"
    assert runner.invoke(app, ["score", "--dataset", "mini", "--predictions", f"hf:{exported}", "--limit", "3",
                               "--metrics", "psnr", "--out", str(local)]).exit_code == 0
    assert json.loads((local / "spec.json").read_text())["predictions_source"]["commit"] is None
    # recorded, not hashed: a run's spec hash does not change with the new field
    from ciebench.spec import RunSpec

    run_spec = json.loads((judged_run / "spec.json").read_text())
    names = set(RunSpec.__dataclass_fields__)
    rebuilt = RunSpec(**{k: (tuple(v) if k in ("seeds", "metrics") else v) for k, v in run_spec.items() if k in names})
    assert "predictions_source" not in run_spec or run_spec["predictions_source"] is None
    assert rebuilt.spec_hash == run_spec["spec_hash"]


def test_export_refuses_a_tampered_run_and_a_used_folder(judged_run: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(judged_run, copy)
    image = sorted((copy / "images").glob("*.png"))[0]
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 0xFF
    Image.fromarray(pixels).save(image)
    result = runner.invoke(app, ["export", str(copy), "--out", str(tmp_path / "out")])
    assert result.exit_code == 6 and image.name in result.output and not (tmp_path / "out").exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("mine")
    assert runner.invoke(app, ["export", str(judged_run), "--out", str(used)]).exit_code == 5


def test_export_push_uploads_the_run_files_too(judged_run: Path, tmp_path: Path, monkeypatch):
    import huggingface_hub

    uploads = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: repo_id)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: uploads.append(kw) or "commit-url")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_export_token_0123456789")
    result = runner.invoke(app, ["export", str(judged_run), "--out", str(tmp_path / "e"), "--push", "me/run"])
    assert result.exit_code == 0, result.output
    assert uploads[0]["repo_id"] == "me/run" and "run/*" in uploads[0]["allow_patterns"]
    assert all(b"hf_secret_export_token" not in p.read_bytes() for p in (tmp_path / "e").rglob("*") if p.is_file())
