"""`ciebench score`: per-sample statuses for bad predictions, exit codes, IDCS through a real local
HTTP judge, and re-scoring from the verdict cache with zero requests."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from typer.testing import CliRunner

import ciebench
from ciebench.cli import app

from tests.support.fixtures_models import CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1
from tests.support.llm_server import json_reply, reply, serve_llm
from tests.support.predictions import identity_predictions

runner = CliRunner()


def _predictions(tmp_path: Path) -> Path:
    """mini predictions: copies (some as JPEG / WebP / grey / RGBA / resized), one missing, one truncated."""
    pred = tmp_path / "pred"
    pred.mkdir()
    samples = {r["id"]: r["image"].convert("RGB") for r in ciebench.load_dataset("mini")}
    ids = sorted(samples)
    samples[ids[0]].save(pred / f"{ids[0]}.png")
    samples[ids[1]].save(pred / f"{ids[1]}.webp", lossless=True)
    samples[ids[2]].convert("L").save(pred / f"{ids[2]}.png")
    samples[ids[3]].convert("RGBA").save(pred / f"{ids[3]}.png")
    samples[ids[4]].resize((200, 150)).save(pred / f"{ids[4]}.jpg", quality=95)
    full = pred / f"{ids[5]}.png"
    samples[ids[5]].save(full)
    full.write_bytes(full.read_bytes()[:200])  # truncated PNG
    for sample_id in ids[7:]:
        samples[sample_id].save(pred / f"{sample_id}.png")
    return pred  # ids[6] is missing


def test_score_statuses_and_exit_codes(tmp_path: Path):
    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()
    pred = _predictions(tmp_path)
    ids = sorted(r["id"] for r in ciebench.load_dataset("mini"))
    out = tmp_path / "scored"
    result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "2 prediction(s) missing or unusable" in result.output
    frame = pd.read_csv(out / "samples.csv").set_index("sample_id")
    assert frame.loc[ids[6], "status"] == "missing"
    assert frame.loc[ids[5], "status"] == "corrupt" and "unreadable" in frame.loc[ids[5], "error"]
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 7
    # lossless copies, also grey->RGB? no: grey and RGBA are converted, then compared with the source
    assert math.isinf(frame.loc[ids[0], "psnr"]) and math.isinf(frame.loc[ids[1], "psnr"])
    assert math.isinf(frame.loc[ids[3], "psnr"])  # RGBA with opaque alpha: the same pixels
    assert np.isfinite(frame.loc[ids[2], "psnr"])  # grey prediction: colour lost outside the mask
    assert np.isfinite(frame.loc[ids[4], "psnr"]) and frame.loc[ids[4], "psnr"] > 20  # resized back per protocol
    assert ok[["ssim", "lpips", "clip", "mse"]].notna().all().all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["ssim"]["coverage"] == 7 / 9
    assert summary["protocol"]["name"] == "cielr" and summary["models"]
    # the sha256 of every prediction is recorded
    import hashlib

    assert frame.loc[ids[0], "prediction_sha256"] == hashlib.sha256((pred / f"{ids[0]}.png").read_bytes()).hexdigest()

    again = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out", str(out),
                                "--allow-missing", "--metrics", "psnr,mse"])
    assert again.exit_code == 0, again.output


def test_a_runs_images_folder_is_scored_at_every_seed_it_holds(tmp_path: Path, caplog):
    """`score --predictions RUN/images` scores each `<stem>__s<seed>` file, as the run scored itself: seed 1
    (an inverted image here) is not dropped for seed 0 (the source itself), a run of one seed other than 0 is
    found, and a sample lacking a seed's file is missing under that file's name."""
    from ciebench.results import file_stem

    samples = {r["id"]: r["image"].convert("RGB") for r in ciebench.load_dataset("mini")}
    ids = sorted(samples)
    images = tmp_path / "run" / "images"
    images.mkdir(parents=True)
    for sample_id, image in samples.items():
        image.save(images / f"{file_stem(sample_id, 0)}.png")
        Image.fromarray(255 - np.asarray(image)).save(images / f"{file_stem(sample_id, 1)}.png")
    out = tmp_path / "scored"
    result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(images), "--out", str(out),
                                 "--metrics", "mse"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "samples.csv")
    assert sorted(zip(frame["sample_id"], frame["seed"])) == sorted((i, s) for i in ids for s in (0, 1))
    assert (frame.loc[frame["seed"] == 0, "mse"] == 0).all()  # the source itself
    assert (frame.loc[frame["seed"] == 1, "mse"] > 0.01).all()  # inverted: far from it
    assert all(p.endswith(f"__s{s}.png") for p, s in zip(frame["prediction"], frame["seed"]))
    assert json.loads((out / "spec.json").read_text())["seeds"] == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"]["seeds"] == [0, 1] and summary["metrics"]["mse"]["n"] == len(ids)
    assert "seeds 0, 1" in result.output

    # one seed, not 0: found; the sample without its file is missing under the file's name; a plain
    # <id>.png beside seeded files is not taken for seed 3, and a warning counts it
    single = tmp_path / "seed3"
    single.mkdir()
    for sample_id in ids[1:]:
        samples[sample_id].save(single / f"{file_stem(sample_id, 3)}.png")
    samples[ids[0]].save(single / f"{ids[0]}.png")
    with caplog.at_level("WARNING", logger="ciebench.scoring"):
        result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(single),
                                     "--out", str(tmp_path / "scored3"), "--metrics", "mse"])
    assert result.exit_code == 1, result.output  # one missing, without --allow-missing
    frame = pd.read_csv(tmp_path / "scored3" / "samples.csv").set_index("sample_id")
    assert set(frame["seed"]) == {3} and (frame.drop(ids[0])["status"] == "ok").all()
    assert frame.loc[ids[0], "status"] == "missing" and f"{file_stem(ids[0], 3)}.png" in frame.loc[ids[0], "error"]
    assert any("1 file(s) named <id>.<ext> without a seed" in r.getMessage() for r in caplog.records)


def test_unknown_metric_and_idcs_without_judge_are_clear_errors(tmp_path: Path):
    pred = tmp_path / "p"
    pred.mkdir()
    result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out", str(tmp_path / "o"),
                                 "--metrics", "psnrr"])
    assert result.exit_code == 2 and "Did you mean 'psnr'" in result.output
    result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out", str(tmp_path / "o"),
                                 "--metrics", "idcs"])
    assert result.exit_code == 2 and "needs a judge" in result.output


def test_idcs_through_score_uses_the_cache_on_rescoring(tmp_path: Path, monkeypatch):
    pred = tmp_path / "pred"
    dataset = identity_predictions(pred, 4)
    scores = {row["id"]: s for row, s in zip(dataset, (5, 4, 2, 1))}
    with serve_llm() as server:
        server.on(has_images=True, then=reply("The object was removed."))
        for row in dataset:
            server.on(row["instruction"][:40], then=json_reply({"score": scores[row["id"]]}))
        judge = tmp_path / "judge.yaml"
        judge.write_text(yaml.safe_dump({
            "name": "local-test",
            "vlm": {"model": "vlm-test", "base_url": server.base_url, "api_key_env": None, "max_retries": 1},
            "llm": {"model": "llm-test", "base_url": server.base_url, "api_key_env": None, "max_retries": 1},
        }))
        args = ["score", "--dataset", "mini", "--predictions", str(pred), "--out", str(tmp_path / "o"), "--limit", "4",
                "--metrics", "psnr,idcs", "--judge", str(judge)]
        monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
        result = runner.invoke(app, args + ["--allow-missing"])
        assert result.exit_code == 0, result.output
        first = server.count
        assert first == 8  # two calls per sample
        frame = pd.read_csv(tmp_path / "o" / "samples.csv").set_index("sample_id")
        assert frame["idcs"].to_dict() == {k: float(v) for k, v in scores.items()}
        summary = json.loads((tmp_path / "o" / "summary.json").read_text())
        assert summary["metrics"]["idcs"]["mean"] == 3.0 and summary["metrics"]["idcs"]["coverage"] == 1.0
        result = runner.invoke(app, args + ["--allow-missing"])
        assert result.exit_code == 0 and server.count == first  # re-scoring: zero model calls
