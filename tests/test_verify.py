"""`ciebench verify`: an untouched run verifies; each kind of tampering is detected and named."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from tests.support.noisy_run import copy_of, evaluate_noisy

runner = CliRunner()
METRICS = "psnr,mse,ssim,locality"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return evaluate_noisy(tmp_path_factory.mktemp("verify") / "noisy", 4, METRICS)


@pytest.fixture
def run_copy(pristine: Path, tmp_path: Path) -> Path:
    return copy_of(pristine, tmp_path)


def _verify(run: Path, *args: str):
    return runner.invoke(app, ["verify", str(run), "--all", *args])


def _verdicts(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("PASS", "FAIL", "SKIP"):
            out[parts[1]] = parts[0]
    return out


def test_untouched_run_verifies_and_records_it(run_copy: Path):
    result = _verify(run_copy)
    assert result.exit_code == 0, result.output
    verdicts = _verdicts(result.output)
    assert verdicts == {"images": "PASS", "traces": "PASS", "samples": "PASS", "spec": "PASS", "protocol": "PASS",
                        "dataset": "PASS", "rescore": "PASS", "summary": "PASS"}, result.output
    assert "verified with ciebench" in result.output
    record = json.loads((run_copy / "verify.json").read_text())
    assert record["verified"] is True and record["ciebench_version"]
    # every trace was hashed into its record when it was written
    for rec_path in (run_copy / "records").glob("*.json"):
        assert list(json.loads(rec_path.read_text())["trace_files"]) == [f"traces/{rec_path.stem}.json"]


def test_tampered_image_is_named(run_copy: Path):
    target = sorted((run_copy / "images").glob("*.png"))[1]
    pixels = np.asarray(Image.open(target)).copy()
    pixels[0, 0] ^= 0xFF
    Image.fromarray(pixels).save(target)
    result = _verify(run_copy)
    assert result.exit_code == 1
    assert _verdicts(result.output)["images"] == "FAIL"
    assert f"images/{target.name}" in result.output and "NOT verified" in result.output
    assert not json.loads((run_copy / "verify.json").read_text())["verified"]


def test_edited_trace_is_named(run_copy: Path):
    trace = sorted((run_copy / "traces").glob("*.json"))[0]
    data = json.loads(trace.read_text())
    data["steps"] = ["something else"]
    trace.write_text(json.dumps(data))
    result = _verify(run_copy, "--no-rescore")
    assert result.exit_code == 1 and _verdicts(result.output)["traces"] == "FAIL"
    assert f"traces/{trace.name}" in result.output


def _edit_metric(run: Path, sample_pos: int, metric: str, factor: float) -> tuple[str, float]:
    """Change one metric value consistently in samples.csv and samples.jsonl (a careful forger)."""
    frame = pd.read_csv(run / "samples.csv", dtype={"sample_id": str})
    sample_id = frame.loc[sample_pos, "sample_id"]
    frame.loc[sample_pos, metric] = frame.loc[sample_pos, metric] * factor
    frame.to_csv(run / "samples.csv", index=False, float_format="%.10g")
    lines = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    for rec in lines:
        if rec["sample_id"] == sample_id:
            rec[metric] = rec[metric] * factor
    (run / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return sample_id, frame.loc[sample_pos, metric]


def test_changed_metric_value_is_named_by_rescore_and_summary(run_copy: Path):
    sample_id, _ = _edit_metric(run_copy, 2, "psnr", 1.01)
    result = _verify(run_copy)
    assert result.exit_code == 1
    verdicts = _verdicts(result.output)
    assert verdicts["rescore"] == "FAIL" and verdicts["summary"] == "FAIL" and verdicts["images"] == "PASS"
    assert f"sample {sample_id} seed 0: psnr re-scores to" in result.output
    assert "summary.json metrics.psnr.mean" in result.output


def test_changed_metric_in_csv_only_disagrees_with_jsonl(run_copy: Path):
    frame = pd.read_csv(run_copy / "samples.csv", dtype={"sample_id": str})
    frame.loc[0, "ssim"] = 0.5
    frame.to_csv(run_copy / "samples.csv", index=False, float_format="%.10g")
    result = _verify(run_copy, "--no-rescore")
    assert result.exit_code == 1 and _verdicts(result.output)["samples"] == "FAIL"
    assert f"sample {frame.loc[0, 'sample_id']} seed 0: ssim is 0.5 in samples.csv" in result.output


def test_edited_summary_is_named(run_copy: Path):
    summary = json.loads((run_copy / "summary.json").read_text())
    summary["metrics"]["ssim"]["mean"] = 0.99
    (run_copy / "summary.json").write_text(json.dumps(summary))
    result = _verify(run_copy, "--no-rescore")
    assert result.exit_code == 1 and _verdicts(result.output)["summary"] == "FAIL"
    assert "summary.json metrics.ssim.mean: recorded 0.99" in result.output


def test_changed_spec_is_named(run_copy: Path):
    spec = json.loads((run_copy / "spec.json").read_text())
    spec["seeds"] = [0, 1]
    (run_copy / "spec.json").write_text(json.dumps(spec))
    result = _verify(run_copy, "--no-rescore")
    assert result.exit_code == 1 and _verdicts(result.output)["spec"] == "FAIL"
    assert "recorded spec_hash is " + spec["spec_hash"] in result.output


def test_spec_rehashed_by_a_forger_still_disagrees_with_the_summary(run_copy: Path):
    from ciebench.spec import RunSpec

    spec = json.loads((run_copy / "spec.json").read_text())
    spec["protocol"]["size"] = 256
    fields = {k: (tuple(v) if k in ("seeds", "metrics") else v) for k, v in spec.items()
              if k not in ("spec_hash", "editor_config_hash")}
    spec["spec_hash"] = RunSpec(**fields).spec_hash
    (run_copy / "spec.json").write_text(json.dumps(spec))
    result = _verify(run_copy, "--no-rescore")
    verdicts = _verdicts(result.output)
    assert result.exit_code == 1 and verdicts["spec"] == "FAIL" and verdicts["protocol"] == "FAIL"
    assert "summary.json was produced by spec" in result.output
    assert "protocol fields hash to" in result.output


def test_rescore_needs_the_runs_dataset(run_copy: Path, tmp_path: Path):
    result = _verify(run_copy, "--dataset", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and _verdicts(result.output)["rescore"] == "FAIL"
    assert "cannot load dataset" in result.output


def test_leaderboard_shows_verification_and_notices_later_edits(run_copy: Path, tmp_path: Path):
    from ciebench.leaderboard import leaderboard

    assert _verify(run_copy).exit_code == 0
    frame = leaderboard([run_copy])
    assert frame.loc[0, "verified"].startswith("verified (ciebench ")
    summary = json.loads((run_copy / "summary.json").read_text())
    summary["note"] = "edited after verification"
    (run_copy / "summary.json").write_text(json.dumps(summary))
    assert leaderboard([run_copy]).loc[0, "verified"] == "stale (files changed since verification)"
    other = tmp_path / "unverified"
    shutil.copytree(run_copy, other)
    (other / "verify.json").unlink()
    assert leaderboard([other]).loc[0, "verified"] == "no"


def test_a_score_output_verifies_with_the_spec_check_skipped(pristine: Path, tmp_path: Path):
    out = tmp_path / "scored"
    scored = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pristine / "images"), "--limit", "4",
                                 "--metrics", "psnr,ssim", "--out", str(out)])
    assert scored.exit_code == 0, scored.output
    result = _verify(out)
    assert result.exit_code == 0, result.output
    verdicts = _verdicts(result.output)
    assert verdicts["spec"] == "SKIP" and verdicts["rescore"] == "PASS" and verdicts["images"] == "PASS"


def test_numbers_are_rescored_under_the_protocol_they_were_scored_under(pristine: Path, tmp_path: Path):
    """A score under exact, killed after summary.json and before spec.json (written last), leaves the
    earlier cielr score's spec.json beside exact's numbers. verify fails the protocol check, naming
    both, and re-scores under exact, the protocol of the numbers (and of the leaderboard's label),
    where they agree; under cielr every changed row would read as tampered."""
    args = ["score", "--dataset", "mini", "--predictions", str(pristine / "images"), "--limit", "4",
            "--metrics", "psnr,ssim"]
    earlier, out = tmp_path / "cielr", tmp_path / "scored"
    for folder, protocol in ((earlier, "cielr"), (out, "exact")):
        scored = runner.invoke(app, args + ["--protocol", protocol, "--out", str(folder)])
        assert scored.exit_code == 0, scored.output
    assert not pd.read_csv(out / "samples.csv")["psnr"].equals(pd.read_csv(earlier / "samples.csv")["psnr"])
    shutil.copy(earlier / "spec.json", out / "spec.json")

    result = _verify(out)
    verdicts = _verdicts(result.output)
    assert result.exit_code != 0 and verdicts["protocol"] == "FAIL", result.output
    assert "spec.json names protocol cielr" in result.output and "scored under protocol exact" in result.output
    assert verdicts["rescore"] == "PASS" and "under protocol 'exact' agree" in result.output, result.output


def test_numbers_are_rescored_on_the_dataset_they_were_scored_on(pristine: Path, tmp_path: Path):
    out = tmp_path / "scored"
    scored = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pristine / "images"), "--limit", "4",
                                 "--metrics", "psnr,ssim", "--out", str(out)])
    assert scored.exit_code == 0, scored.output
    spec = json.loads((out / "spec.json").read_text())
    spec["dataset"]["spec"] = str(tmp_path / "another-dataset")  # what spec.json of an earlier score could name
    (out / "spec.json").write_text(json.dumps(spec))

    result = _verify(out)
    verdicts = _verdicts(result.output)
    assert verdicts["dataset"] == "FAIL" and "another-dataset" in result.output, result.output
    assert verdicts["rescore"] == "PASS", result.output


def test_a_dropped_row_is_named_even_with_a_regenerated_summary(run_copy: Path):
    from ciebench.io import sha256_file
    from ciebench.results import SAMPLE_TABLES, summarize

    frame = pd.read_csv(run_copy / "samples.csv", dtype={"sample_id": str})
    dropped = frame.loc[1, "sample_id"]
    frame = frame.drop(index=1)
    frame.to_csv(run_copy / "samples.csv", index=False, float_format="%.10g")
    lines = [l for l in (run_copy / "samples.jsonl").read_text().splitlines() if json.loads(l)["sample_id"] != dropped]
    (run_copy / "samples.jsonl").write_text("\n".join(lines) + "\n")
    summary = json.loads((run_copy / "summary.json").read_text())
    summary.update(summarize(pd.read_csv(run_copy / "samples.csv", dtype={"sample_id": str}),
                             {m: b["higher_is_better"] for m, b in summary["metrics"].items()}))
    summary["tables"] = {name: sha256_file(run_copy / name) for name in SAMPLE_TABLES}  # regenerated with them
    (run_copy / "summary.json").write_text(json.dumps(summary))
    result = _verify(run_copy, "--no-rescore")
    verdicts = _verdicts(result.output)
    assert result.exit_code == 1 and verdicts["samples"] == "FAIL" and verdicts["summary"] == "PASS"
    assert f"(sample {dropped} seed 0) has no row in samples.csv" in result.output
    assert "samples.csv has 3 rows; the spec asks for 4 sample(s) x 1 seed(s)" in result.output


def _forge(run: Path, position: int, **changes) -> str:
    """Fabricated values (and other changes) in one row, written consistently into samples.csv,
    samples.jsonl and summary.json with ciebench's own writers: what a careful forger would do."""
    from ciebench.io import atomic_write_json
    from ciebench.results import BASE_COLUMNS, read_samples, summarize, write_samples

    frame = read_samples(run)
    for column, value in {"psnr": 60.0, "ssim": 0.999, "mse": 1e-6, **changes}.items():
        frame.loc[position, column] = value
    tables = write_samples(run, frame.to_dict("records"), [c for c in frame.columns if c not in BASE_COLUMNS])
    summary = json.loads((run / "summary.json").read_text())
    summary["tables"] = tables
    fresh = summarize(read_samples(run), {m: b["higher_is_better"] for m, b in summary["metrics"].items()},
                      sample_ids=list(frame["sample_id"]))
    summary.update(fresh)
    atomic_write_json(run / "summary.json", summary)
    return str(frame.loc[position, "sample_id"])


@pytest.mark.parametrize("how", ["prediction cleared", "status changed"])
def test_made_up_values_in_a_row_that_is_not_ok_or_has_no_image_are_named(run_copy: Path, how: str):
    # Before: the re-score looked only at rows with status ok and a prediction, so these rows' numbers
    # entered the means unchecked and the run "verified" (mean PSNR 26.7 -> 35.1).
    changes = {"prediction": None, "prediction_sha256": None} if how == "prediction cleared" else {"status": "metric_error"}
    sample_id = _forge(run_copy, 0, **changes)
    result = _verify(run_copy)
    verdicts = _verdicts(result.output)
    assert result.exit_code == 1 and verdicts["rescore"] == "FAIL" and verdicts["summary"] == "PASS", result.output
    if how == "prediction cleared":
        assert f"sample {sample_id} seed 0: psnr, mse, ssim," in result.output
        assert "recorded without a prediction image (status ok)" in result.output
    else:
        assert f"sample {sample_id} seed 0: psnr re-scores to" in result.output
